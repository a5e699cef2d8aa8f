"""Tracing (issue 33): OpenTelemetry spans from the caller's request to the provider's answer.

Every node here is ``python server.py`` in its own process, exporting to a real OTLP/HTTP receiver the test
starts (:class:`tests.otlp_receiver.OtlpReceiver`: protobuf decoded with ``opentelemetry-proto``), its
providers at the mock upstream, which records the ``traceparent`` each call carried.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import config
from tests.conftest import ROOT, SECRETS
from tests.mock_upstream import Behavior, MockUpstream
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

CHAT = "/v1/chat/completions"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
PROMPT = "What colour is the PURPLE-ELEPHANT-PROMPT?"
ANSWER = "The answer is GREEN-GIRAFFE-COMPLETION"
TOOL_ARGUMENTS = '{"city": "SECRET-CITY-ARGUMENT"}'


@pytest.fixture
def receiver() -> Any:
    server = OtlpReceiver().start()
    yield server
    server.stop()


def traced(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    """A node's environment that exports to ``receiver`` (batches every 20 ms: the tests wait less)."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base_url, "OTEL_BSP_SCHEDULE_DELAY": "20", **extra}


def call(
    node: Any, body: Any, path: str = CHAT, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """POST JSON to the node: status, headers (lower-case names), body."""
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=timeout)
    try:
        connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def fetch(node: Any, path: str) -> int:
    """GET ``path`` of the node: the status."""
    connection = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def chat(model: str = "openai/mock-model", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}


Spans = list[ReceivedSpan]


def spans_of(receiver: OtlpReceiver, clients: int, servers: int = 1, timeout: float = 10.0) -> tuple[Spans, Spans]:
    """The SERVER and CLIENT spans exported, once at least that many of each have come."""

    def enough(r: OtlpReceiver) -> bool:
        kinds = [span.kind for span in r.received]
        return kinds.count("server") >= servers and kinds.count("client") >= clients

    assert receiver.wait_for(enough, timeout), f"spans received: {[(s.kind, s.name) for s in receiver.spans]}"
    spans = receiver.spans
    return [s for s in spans if s.kind == "server"], sorted((s for s in spans if s.kind == "client"), key=lambda s: s.start)


def carried(sent: str, span: ReceivedSpan) -> bool:
    """Whether a ``traceparent`` the provider got is ``span``'s context, sampled (W3C: bit 0 of the flags)."""
    version, trace_id, span_id, flags = sent.split("-")
    return (version, trace_id, span_id) == ("00", span.trace_id, span.span_id) and int(flags, 16) & 1 == 1


def sent_traceparents(upstream: MockUpstream) -> list[str]:
    return [{k.lower(): v for k, v in r.headers.items()}.get("traceparent", "") for r in upstream.requests]


# -- off: nothing loaded, nothing paid ----------------------------------------------------------------------------


def test_tracing_unset_imports_no_opentelemetry_module() -> None:
    """The node's modules, imported in a fresh interpreter, load no OpenTelemetry package."""
    code = (
        "import sys, server, utils.context, utils.tracing, handlers.base, handlers.proxy, utils.upstream.client;"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'));"
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_node_without_tracing_never_imports_opentelemetry(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    """``-X importtime`` lists every module a process imports, when it imports it: serving a JSON call and a stream
    with tracing unset imports no OpenTelemetry module; the same node with an endpoint does (the test can tell)."""
    plain = spawn_node({"PYTHONPROFILEIMPORTTIME": "1"})
    assert call(plain, chat())[0] == 200
    assert call(plain, chat(stream=True))[0] == 200
    plain.stop()
    assert "| tornado.web" in plain.output  # the import list is there
    assert "opentelemetry" not in plain.output
    assert not receiver.posts

    disabled = spawn_node({"PYTHONPROFILEIMPORTTIME": "1", "OTEL_SDK_DISABLED": "true", **traced(receiver)})
    assert call(disabled, chat())[0] == 200
    disabled.stop()
    assert "opentelemetry" not in disabled.output

    on = spawn_node({"PYTHONPROFILEIMPORTTIME": "1", **traced(receiver)})
    assert call(on, chat())[0] == 200
    on.stop()
    assert re.search(r"\|\s+opentelemetry\.sdk\.trace$", on.output, re.MULTILINE)
    assert receiver.wait_for(lambda r: len(r.received) == 2)


def test_a_bad_endpoint_stops_start_up(spawn_node: Any) -> None:
    node = spawn_node({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, ready=False)
    assert node.wait(15) == 2
    assert "OTEL_EXPORTER_OTLP_ENDPOINT='collector:4318': must be an http(s) URL" in node.output


# -- the span tree ---------------------------------------------------------------------------------------------------


def test_a_json_call_is_a_server_span_and_a_client_span_under_the_callers_trace(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    node = spawn_node(traced(receiver))
    status, headers, body = call(
        node, chat(max_tokens=64, temperature=0.25, top_p=0.5),
        headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=abc"},
    )
    assert status == 200
    answer = json.loads(body)
    (server,), (client,) = spans_of(receiver, clients=1)

    # the caller's trace goes on: its span is the SERVER span's parent
    assert (server.trace_id, server.parent_span_id) == (CALLER_TRACE, CALLER_SPAN)
    assert server.trace_state == "vendor=abc"
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes == {
        "http.request.method": "POST",
        "url.path": CHAT,
        "http.route": CHAT,
        "url.scheme": "http",
        "mira.request_id": headers["x-request-id"],
        "http.response.status_code": 200,
        "client.address": "127.0.0.1",
    }
    assert server.resource["service.name"] == "mira-node"
    assert server.resource["service.version"] == "9.9.9-test"

    # one CLIENT span, its child, with the GenAI attributes and the node's own
    assert (client.trace_id, client.parent_span_id) == (CALLER_TRACE, server.span_id)
    assert client.name == "chat mock-model"
    assert client.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "mock-model",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.25,
        "gen_ai.request.top_p": 0.5,
        "gen_ai.response.id": answer["id"],
        "gen_ai.response.model": answer["model"],
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": answer["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": answer["usage"]["completion_tokens"],
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
        "http.response.status_code": 200,
        "mira.attempt": 0,
        "mira.fallback": False,
    }
    assert client.status == 0  # unset: no error
    assert server.start <= client.start <= client.end <= server.end

    # the provider got the CLIENT span's context (and the caller's tracestate)
    (sent,) = upstream.requests
    sent_headers = {k.lower(): v for k, v in sent.headers.items()}
    assert carried(sent_headers["traceparent"], client)
    assert sent_headers["tracestate"] == "vendor=abc"


def test_a_stream_reports_its_first_chunk_and_its_finish(spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver) -> None:
    upstream.default = Behavior(chunks=4, chunk_delay=0.05)
    node = spawn_node(traced(receiver))
    status, _, body = call(node, chat(stream=True))
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    first = json.loads(body.split(b"\n\n")[0][len(b"data: "):])
    (server,), (client,) = spans_of(receiver, clients=1)

    assert server.parent_span_id == ""  # no caller trace: the node's request is the root
    assert client.parent_span_id == server.span_id and client.trace_id == server.trace_id
    attributes = client.attributes
    assert attributes["gen_ai.response.id"] == first["id"]
    assert attributes["gen_ai.response.model"] == "mock-model"
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert 0 < attributes["gen_ai.response.time_to_first_chunk"] < client.duration
    assert attributes["gen_ai.usage.input_tokens"] > 0 and attributes["gen_ai.usage.output_tokens"] > 0
    assert client.duration >= 0.15  # the span lasts until the stream's end, not its first chunk
    (sent,) = sent_traceparents(upstream)
    assert carried(sent, client)


def test_a_messages_call_reads_anthropics_stop_reason(spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver) -> None:
    node = spawn_node(traced(receiver))
    body = {"model": "anthropic/claude-mock", "max_tokens": 100, "messages": [{"role": "user", "content": PROMPT}]}
    status, _, answer = call(node, body, path="/v1/messages")
    assert status == 200
    (server,), (client,) = spans_of(receiver, clients=1)
    assert server.name == "POST /v1/messages"
    assert client.attributes["gen_ai.provider.name"] == "anthropic"
    assert client.attributes["gen_ai.request.max_tokens"] == 100
    assert client.attributes["gen_ai.response.id"] == json.loads(answer)["id"]
    assert client.attributes["gen_ai.response.finish_reasons"] == ("end_turn",)


def test_each_retry_is_its_own_client_span(spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver) -> None:
    node = spawn_node(traced(receiver, UPSTREAM_RETRIES="2"))
    upstream.push(Behavior(status=503, error_message="busy"))
    upstream.push(Behavior(status=502, error_message="bad gateway"))
    assert call(node, chat())[0] == 200
    (server,), clients = spans_of(receiver, clients=3)

    assert [c.attributes["mira.attempt"] for c in clients] == [0, 1, 2]
    assert [c.attributes.get("error.type") for c in clients] == ["503", "502", None]
    assert [c.attributes["http.response.status_code"] for c in clients] == [503, 502, 200]
    assert [c.status for c in clients] == [2, 2, 0]
    assert all(c.parent_span_id == server.span_id and not c.attributes["mira.fallback"] for c in clients)
    assert len({c.span_id for c in clients}) == 3
    # each call carried its own attempt's context
    assert [tp.split("-")[2] for tp in sent_traceparents(upstream)] == [c.span_id for c in clients]


def test_a_key_switch_is_its_own_client_span(spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver) -> None:
    pool = "sk-openai-SECRET-AAAA1111,sk-openai-SECRET-BBBB2222"
    node = spawn_node(traced(receiver, OPENAI_API_KEY=pool, UPSTREAM_RETRIES="0"))
    upstream.set_key_behavior("AAAA1111", Behavior(status=429, error_message="slow down"))
    assert call(node, chat())[0] == 200
    (server,), clients = spans_of(receiver, clients=2)

    assert [c.attributes["mira.key"] for c in clients] == [1, 2]
    assert [c.attributes["mira.attempt"] for c in clients] == [0, 0]  # a key switch is not a retry
    assert [c.attributes.get("error.type") for c in clients] == ["429", None]
    assert [tp.split("-")[2] for tp in sent_traceparents(upstream)] == [c.span_id for c in clients]
    assert not any(b"SECRET" in raw for raw in receiver.bodies)


def test_a_fallback_is_its_own_client_span(spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver) -> None:
    node = spawn_node(traced(receiver, UPSTREAM_RETRIES="0"))
    upstream.set_behavior("broken", Behavior(status=500, error_message="primary failed"))
    status, headers, _ = call(node, chat("openai/broken", fallbacks=["groq/llama"]))
    assert status == 200 and headers["x-mira-model"] == "groq/llama"
    (server,), clients = spans_of(receiver, clients=2)

    primary, fallback = clients
    assert (primary.name, fallback.name) == ("chat broken", "chat llama")
    assert primary.attributes["gen_ai.provider.name"] == "openai" and primary.attributes["mira.fallback"] is False
    assert primary.attributes["error.type"] == "500"
    assert fallback.attributes["gen_ai.provider.name"] == "groq" and fallback.attributes["mira.fallback"] is True
    assert fallback.attributes["mira.attempt"] == 0 and "error.type" not in fallback.attributes
    assert all(c.parent_span_id == server.span_id for c in clients)
    assert [tp.split("-")[2] for tp in sent_traceparents(upstream)] == [c.span_id for c in clients]


def test_an_error_answer_ends_the_server_span_in_error(spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver) -> None:
    node = spawn_node(traced(receiver, UPSTREAM_RETRIES="0"))
    upstream.default = Behavior(status=503, error_message="down")
    assert call(node, chat())[0] == 503
    assert fetch(node, "/status.json") == 200  # not a /v1 route: no span
    assert fetch(node, "/v1/models") == 200
    (server, models), (client,) = spans_of(receiver, clients=1, servers=2)
    time.sleep(0.2)
    assert [s.name for s in receiver.spans if s.kind == "server"] == ["POST /v1/chat/completions", "GET /v1/models"]
    assert models.attributes["http.response.status_code"] == 200 and models.status == 0
    assert server.attributes["http.response.status_code"] == 503
    assert server.attributes["error.type"] == "503" and server.status == 2
    assert client.attributes["error.type"] == "503"


def test_a_caller_that_does_not_sample_gets_no_spans_but_its_trace_goes_on(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    node = spawn_node(traced(receiver))
    assert call(node, chat(), headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"})[0] == 200
    assert call(node, chat())[0] == 200  # a sampled one after it: the batch has come when it has
    spans_of(receiver, clients=1)
    assert CALLER_TRACE not in {span.trace_id for span in receiver.spans}
    unsampled = sent_traceparents(upstream)[0].split("-")
    assert unsampled[1] == CALLER_TRACE and unsampled[3] == "00"


def test_each_worker_exports_its_own_spans(spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver) -> None:
    """WORKERS=2: each worker sets tracing up after its fork; both export, and a SIGTERM stops them all."""
    node = spawn_node(traced(receiver, WORKERS="2"))
    pids = {int(node.wait_for_line(rf"worker {i} serving \(pid (\d+)").group(1)) for i in (0, 1)}
    for _ in range(30):  # each call a connection of its own: the kernel spreads them over the workers' sockets
        assert call(node, chat())[0] == 200
    servers, _ = spans_of(receiver, clients=30, servers=30)
    assert len({span.trace_id for span in servers}) == 30
    assert len({span.resource["service.instance.id"] for span in servers}) == 2  # both workers exported
    assert node.stop() == 0
    assert {int(pid) for pid in re.findall(r"mira\.tracing\[(\d+)\]: tracing: spans go to", node.output)} == pids


def test_the_sdks_variables_choose_the_sampler_and_the_resource(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    """OTEL_TRACES_SAMPLER=parentbased_traceidratio at 0: the node's own traces are never sampled, a sampled caller's
    always are (every span of it); OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES name the resource."""
    node = spawn_node(traced(
        receiver, OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0",
        OTEL_SERVICE_NAME="gateway-a", OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
    ))
    assert call(node, chat())[0] == 200
    assert call(node, chat(), headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})[0] == 200
    (server,), (client,) = spans_of(receiver, clients=1)
    time.sleep(0.3)  # a batch of the unsampled one would have come by now
    assert len(receiver.spans) == 2 and {server.trace_id, client.trace_id} == {CALLER_TRACE}
    assert server.resource["service.name"] == "gateway-a"
    assert server.resource["deployment.environment"] == "test"
    unsampled, sampled = sent_traceparents(upstream)
    assert int(unsampled.split("-")[3], 16) & 1 == 0 and carried(sampled, client)


def test_a_ratio_sampler_is_decided_as_the_sdk_decides_it(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    """The node decides the SDK's samplers inline (utils.spans.inline_sampling): OTEL_TRACES_SAMPLER=traceidratio at
    0.5 samples exactly the requests whose trace id the SDK's own sampler samples, each with both its spans."""
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    from opentelemetry.trace import SpanKind

    node = spawn_node(traced(receiver, OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0.5"))
    for _ in range(24):
        assert call(node, chat())[0] == 200
    sdk = TraceIdRatioBased(0.5)
    decided = {}
    for sent in sent_traceparents(upstream):
        _, trace_id, _, flags = sent.split("-")
        decided[trace_id] = int(flags, 16) & 1 == 1
        assert sdk.should_sample(None, int(trace_id, 16), "chat", SpanKind.SERVER).decision.is_sampled() == decided[trace_id]
    assert 0 < sum(decided.values()) < 24  # both kinds of decision were made (one chance in 2**23 that it fails)
    spans_of(receiver, clients=sum(decided.values()), servers=sum(decided.values()))
    time.sleep(0.2)
    assert {span.trace_id for span in receiver.spans} == {trace_id for trace_id, sampled in decided.items() if sampled}


def test_the_sdks_samplers_are_decided_inline_as_they_decide() -> None:
    """Every sampler OTEL_TRACES_SAMPLER names, for roots and for sampled and unsampled remote parents."""
    import random

    from opentelemetry.sdk.trace import sampling
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context

    from utils.spans import TRACE_ID_LOW, inline_sampling

    samplers = [
        sampling.ALWAYS_ON, sampling.ALWAYS_OFF, sampling.DEFAULT_ON, sampling.DEFAULT_OFF,
        sampling.TraceIdRatioBased(0.25), sampling.ParentBasedTraceIdRatio(0.25), sampling.TraceIdRatioBased(0),
    ]
    rng = random.Random(33)
    for sampler in samplers:
        bound, parent_based = inline_sampling(sampler)
        assert bound >= 0, sampler
        for _ in range(200):
            trace_id = rng.getrandbits(128)
            for parent in (None, True, False):
                context = None
                if parent is not None:
                    remote = SpanContext(trace_id, 7, True, TraceFlags(1 if parent else 0))
                    context = set_span_in_context(NonRecordingSpan(remote))
                theirs = sampler.should_sample(context, trace_id, "s", SpanKind.SERVER).decision.is_sampled()
                ours = parent if parent is not None and parent_based else trace_id & TRACE_ID_LOW < bound
                assert ours == theirs, (sampler.get_description(), parent)

    class Plugin(sampling.Sampler):  # not one of the SDK's: asked, span by span
        def should_sample(self, *args: Any, **kwargs: Any) -> sampling.SamplingResult:
            return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE)

        def get_description(self) -> str:
            return "plugin"

    assert inline_sampling(Plugin()) == (-1, False)


def test_the_batch_processors_variables_are_honoured(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    """OTEL_BSP_MAX_EXPORT_BATCH_SIZE: a full batch leaves at once (the schedule delay, a minute, is not waited for),
    and no batch is larger; a batch larger than the queue stops start-up."""
    node = spawn_node(traced(receiver, OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="3"))
    for _ in range(3):
        assert call(node, chat())[0] == 200
    assert receiver.wait_for(lambda r: len(r.received) >= 6, 10), receiver.posts
    assert [len(ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans)
            for body in receiver.bodies] == [3, 3]

    bad = spawn_node(traced(receiver, OTEL_BSP_MAX_QUEUE_SIZE="5", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10"), ready=False)
    assert bad.wait(15) == 2
    assert "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=10" in bad.output and "no larger than the queue" in bad.output


def test_a_full_queue_drops_the_oldest_spans() -> None:
    """The export queue (OTEL_BSP_MAX_QUEUE_SIZE) keeps the newest spans when the collector falls behind, and the
    dropped ones are counted into the exporter's warning."""
    from utils.spans import Batches

    class Stuck:
        def __init__(self) -> None:
            self.dropped_count = 0
            self.sent: list[list[Any]] = []

        def export(self, records: list[Any]) -> bool:
            self.sent.append(records)
            return True

        def dropped(self, count: int) -> None:
            self.dropped_count += count

        def shutdown(self) -> None:
            pass

    class Owner:  # what Tracing.finished reads
        def __init__(self, batches: Batches, exporter: Stuck) -> None:
            self.batches, self.exporter = batches, exporter

    from utils.spans import Tracing

    exporter = Stuck()
    batches = Batches(exporter, 3600.0, 4, 4)  # type: ignore[arg-type]
    owner = Owner(batches, exporter)
    batches.wake = lambda: None  # type: ignore[method-assign]  # (nothing leaves until the stop)
    for n in range(3):
        Tracing.finished(owner, [("a", n), ("b", n)])  # type: ignore[arg-type]
    assert exporter.dropped_count == 2
    batches.stop(5)
    assert exporter.sent == [[("a", 1), ("b", 1), ("a", 2), ("b", 2)]]


def test_the_nodes_encoding_of_a_batch_is_the_exporters() -> None:
    """utils.spans.Encoder writes what the OTLP exporter's encoder writes for the same spans as the SDK's
    (utils.spans.readable), for every field and attribute a record can have, its values of every size."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from models.usage import Usage
    from utils.spans import CLIENT, SERVER, Encoder, Route, readable

    resources = [
        Resource({"service.name": "a", "n": 3, "t": True, "f": 0.5}, "https://opentelemetry.io/schemas/1.21.0"),
        Resource({"service.name": "b" * 300}),
    ]
    scopes = [InstrumentationScope("mira.node", "1.2.3"), InstrumentationScope("mira.node")]
    routes = [
        Route("chat", "gpt-4o-mini", "", "openai", "api.openai.com", 443),
        Route("text_completion", "modèle-日本" + "x" * 200, "sk-custom", "custom", "10.0.0.1", 8080),
    ]
    start = 1_700_000_000_000_000_000
    parameters = [
        (), (64, None, None, 0.25, 0.5), (None, 2**40, 7, 1, 1.0), (True, 3.5, None, float("nan"), -0.0),
        (-(2**63), None, None, 0.0, 2**63), ("9", [1], float("inf"), -1e300, None),
    ]
    usages = [None, Usage(10, 20), Usage(2**31, 0, 5), Usage(0, 1, 0, 3)]
    records: list[object] = []
    for n in range(24):
        trace_id = (2**127 + n * 2**70 + n) if n % 3 else 1 + n
        state = ("", "k=v", "vendor=abc,other=" + "z" * 200)[n % 3]
        records.append((
            SERVER, trace_id, 2**63 + n, (0, 0xDEF, 2**64 - 1)[n % 3], state, start + n, start + 10**9 + n,
            ("POST", "GET")[n % 2], ("/v1/chat/completions", "/v1/models", "/v1/" + "p" * 300)[n % 3],
            ("http", "https")[n % 2], f"req-{n:08x}" * (1 + 20 * (n % 5 == 4)), (200, 404, 499, 500, 503)[n % 5],
            ("127.0.0.1", "", "2001:db8::1")[n % 3],
        ))
        records.append([
            CLIENT, trace_id, n + 1, 2**63 + n, state, start + n + 5, start + n + 500, routes[n % 2],
            parameters[n % len(parameters)], n % 3, n % 2 == 1, n % 4, (0, 200, 429, 503)[n % 4],
            ("", "chatcmpl-" + str(n), "id" * 100)[n % 3], ("", "gpt-4o-mini-2024-07-18", "m" * 150)[n % 3],
            ((), ("stop",), ["stop", "length"], ("end_turn",) * 40)[n % 4], (None, 0.125, 0.0)[n % 3],
            usages[n % 4], ("", "503", "connect_failed", "e" * 130)[n % 4], (None, 0.000123, 0.0, 7)[n % 4],
        ])
    for resource in resources:
        for scope in scopes:
            ours = ExportTraceServiceRequest.FromString(Encoder(resource, scope).encode(records))
            spans = readable(records, resource, scope)
            theirs = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializePartialToString())
            assert ours == theirs
            assert len(ours.resource_spans[0].scope_spans[0].spans) == len(records)


def test_a_streams_id_model_and_finish_reasons_are_read_wherever_its_chunks_are_cut() -> None:
    from utils.redact import Redactor
    from utils.spans import Masks, Peek, Route
    from utils.upstream.usage import StreamUsage

    class Reader:
        def json(self, body: bytes) -> tuple[bytes, None]:
            return body, None

        def stream(self) -> StreamUsage:
            return StreamUsage(False)

    events = [
        b'data: {"id": "chatcmpl-7", "model": "gpt-x", "choices": [{"index": 0, "delta": {"content": "Hi"},'
        b' "finish_reason": null}]}\n\n',
        b'data: {"id": "chatcmpl-7", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n',
        b'data: {"id":"chatcmpl-7","choices":[{"index":1,"delta":{},"finish_reason":"length"}]}\n\ndata: [DONE]\n\n',
    ]
    stream = b"".join(events)
    masks, route = Masks(Redactor()), Route("chat", "gpt-x", "", "openai", "127.0.0.1", 80)
    for cut in range(1, len(stream)):
        peek = Peek(Reader(), masks, route).stream()
        assert peek.feed(stream[:cut]) + peek.feed(stream[cut:]) == stream
        assert (peek.id, peek.model, peek.reasons) == ("chatcmpl-7", "gpt-x", ["stop", "length"]), cut


@pytest.mark.skipif("PRICES_FILE" not in config.ENV_VARIABLES, reason="no PRICES_FILE (issue 32) in this tree")
def test_a_priced_answer_carries_its_cost(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"openai/mock-model": {"input": 1000, "output": 2000}}))
    node = spawn_node(traced(receiver, PRICES_FILE=str(prices)))
    status, _, body = call(node, chat())
    assert status == 200
    usage = json.loads(body)["usage"]
    (_,), (client,) = spans_of(receiver, clients=1)
    expected = (usage["prompt_tokens"] * 1000 + usage["completion_tokens"] * 2000) / 1e6
    assert client.attributes["mira.cost_usd"] == pytest.approx(expected)


# -- never recorded --------------------------------------------------------------------------------------------------


def test_no_prompt_completion_tool_argument_or_key_is_exported(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    service_key = "svc-SECRET-SERVICE-KEY-0007"
    node = spawn_node(traced(receiver, SERVICE_API_KEY=service_key, CUSTOM_PROVIDER_ALLOW_PRIVATE="true"))
    auth = {"Authorization": f"Bearer {service_key}"}
    tool = {"name": "weather", "arguments": TOOL_ARGUMENTS}
    upstream.default = Behavior(content=ANSWER, tool_call=tool)
    system = {"role": "system", "content": "SYSTEM-PROMPT-ORCHID"}
    body = chat(messages=[system, {"role": "user", "content": PROMPT}], user="session-SESSION-TEXT")
    assert call(node, body, headers=auth)[0] == 200
    assert call(node, {**body, "stream": True}, headers=auth)[0] == 200
    messages = {"model": "anthropic/claude-mock", "max_tokens": 50, "system": "SYSTEM-PROMPT-ORCHID",
                "messages": [{"role": "user", "content": PROMPT}]}
    assert call(node, messages, path="/v1/messages", headers=auth)[0] == 200
    custom = chat("my-model", model_provider={"name": "mine", "base_url": upstream.base_url, "api_key": "sk-custom-SECRET-9999"})
    assert call(node, custom, headers=auth)[0] == 200
    # a caller's tracestate that holds a key is neither exported nor passed on
    leaky = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": f"k={SECRETS['OPENAI_API_KEY']}", **auth}
    assert call(node, chat(), headers=leaky)[0] == 200
    assert call(node, chat(), headers={"Authorization": "Bearer wrong-SECRET-KEY-1234"})[0] == 401
    spans_of(receiver, clients=5, servers=6)

    export = b"".join(receiver.bodies)
    for text in (PROMPT, ANSWER, "SECRET-CITY-ARGUMENT", "SYSTEM-PROMPT-ORCHID", "SESSION-TEXT", "SECRET", "Bearer"):
        assert text.encode() not in export, text
    assert "tracestate" not in {k.lower() for r in upstream.requests[-1:] for k in r.headers}
    custom_span = next(s for s in receiver.spans if s.kind == "client" and s.attributes["gen_ai.provider.name"] == "custom")
    assert custom_span.attributes["gen_ai.request.model"] == "my-model"


# -- a collector that is down or slow ----------------------------------------------------------------------------


def timed_calls(node: Any, count: int) -> list[float]:
    """``count`` chat calls one after another, each checked for 200: their durations."""
    durations = []
    for _ in range(count):
        started = time.monotonic()
        status, _, _ = call(node, chat(), timeout=3)  # a call held by the export fails here at once
        durations.append(time.monotonic() - started)
        assert status == 200
    return durations


def test_a_stopped_collector_costs_spans_and_one_warning_not_requests(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    receiver.stop()  # nothing listens on its port any more
    node = spawn_node(traced(receiver, OTEL_EXPORTER_OTLP_TIMEOUT="1"))
    durations = timed_calls(node, 60)
    assert max(durations) < 1.0, durations
    assert node.wait_for_line("could not be exported", 10) is not None
    timed_calls(node, 20)  # more failed batches within the minute
    time.sleep(1.5)
    node.stop()
    assert node.output.count("could not be exported") == 1, node.output
    assert "Failed to export" not in node.output and "Traceback" not in node.output


def test_a_stalled_collector_delays_no_request_and_no_stop(
    spawn_node: Any, upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    receiver.mode = "stall"  # takes the connection, reads the batch, never answers
    node = spawn_node(traced(receiver, OTEL_BSP_MAX_QUEUE_SIZE="16", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="8"))
    durations = timed_calls(node, 80)  # the queue fills while the export hangs: spans are dropped, calls are not
    assert receiver.posts >= 1
    assert max(durations) < 1.0, durations
    stopping = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - stopping < 6.0  # the last spans get at most 2 s
    assert node.output.count("could not be exported") == 1, node.output  # the dropped spans, said once


def test_the_node_reads_whether_tracing_is_on_and_the_sdk_the_rest() -> None:
    """The settings the node reads itself; the SDK reads the other OTEL_* (their names are never typos)."""
    assert {"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"} <= set(config.ENV_VARIABLES)
    assert config.is_setting("OTEL_SERVICE_NAME") and config.is_setting("OTEL_BSP_SCHEDULE_DELAY")
    base = dataclasses.replace(config.load_settings("/dev/null"), otel_endpoint="http://collector:4318")
    assert base.traces_url == "http://collector:4318/v1/traces"
    assert dataclasses.replace(base, otel_traces_endpoint="http://other:9/traces").traces_url == "http://other:9/traces"
    assert dataclasses.replace(base, otel_sdk_disabled=True).traces_url == ""
