"""The node's OpenTelemetry spans: imported by :mod:`utils.tracing` only when tracing is on.

One SERVER span per ``/v1`` request (:meth:`Tracing.request`, from ``ApiHandler.prepare`` to ``on_finish``),
its parent the caller's W3C ``traceparent``/``tracestate`` when sent. One CLIENT span per upstream attempt
(:meth:`RequestTrace.attempt`, from ``UpstreamClient._across``: each retry, key switch and fallback its own),
a child of it, with OpenTelemetry's GenAI attributes and the node's ``mira.*`` ones; the call carries that
span's ``traceparent``. What an answer says of itself (its id, model and finish reasons) is read from its bytes
as they pass (:class:`Peek`), never by parsing it whole, and only values of a narrow alphabet are kept: no
prompt, completion, tool argument or key reaches a span (a value that holds a secret's fragment is masked).

Spans leave in batches from the SDK's own thread (OTLP/HTTP, protobuf), never from the event loop. A collector
that is down or slow costs spans, never a request: the queue (OTEL_BSP_MAX_QUEUE_SIZE) drops the oldest when
full, a failed batch is dropped, and :class:`Exporter` logs one warning a minute at most.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from config import Settings, masked_url
from models.chat import ProxyRequest
from models.errors import ApiError
from utils.redact import Redactor
from utils.upstream.failures import (
    Cancelled,
    ConnectFailed,
    ConnectionLost,
    Forbidden,
    InvalidStatus,
    QueueTimeout,
    TimedOut,
    TlsFailed,
    TransportError,
    UpstreamStatus,
)
from utils.upstream.providers import Attempt
from utils.upstream.providers.base import AnswerReader, StreamWatcher
from utils.upstream.relay import StreamResult
from utils.upstream.usage import Usage

log = logging.getLogger("mira.tracing")
T = TypeVar("T")

SERVICE_NAME = "mira-node"  # service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one
WARN_EVERY = 60.0  # seconds between two warnings about spans that could not be exported
# gen_ai.operation.name by the handler's route_name (verify, eval, chat, responses, messages: chat)
OPERATIONS = {"embeddings": "embeddings", "completions": "text_completion"}
# The request's sampling parameters, by attribute: the body fields that give it, the first one set wins.
PARAMETERS = (
    ("gen_ai.request.max_tokens", ("max_tokens", "max_completion_tokens", "max_output_tokens")),
    ("gen_ai.request.temperature", ("temperature",)),
    ("gen_ai.request.top_p", ("top_p",)),
)
ERROR_TYPES: dict[type, str] = {
    ConnectFailed: "connect_failed",
    ConnectionLost: "connection_lost",
    TimedOut: "timeout",
    TlsFailed: "tls_failed",
    QueueTimeout: "queue_timeout",
    Forbidden: "forbidden_address",
    TransportError: "transport_error",
    Cancelled: "cancelled",
}
MAX_TEXT = 200  # characters of an outside value (a model name) kept in an attribute


def resource(version: str) -> Resource:
    """The node's resource: the SDK's reading of OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, ``mira-node``
    when they name no service, and ``service.version`` (VERSION) unless they give one."""
    detected = Resource.create({})
    merged = Resource({"service.version": version}).merge(detected)
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        merged = merged.merge(Resource({"service.name": SERVICE_NAME}))
    return merged


# TraceFlags by value: bit 0 sampled, bit 1 the trace id is random (W3C trace context level 2)
FLAGS = tuple(TraceFlags(value) for value in range(4))
UNSET, ERROR = Status(StatusCode.UNSET), Status(StatusCode.ERROR)


class LeanSpan:
    """One of the node's spans: while it runs, and once ended what the batch processor queues and :func:`encode`
    writes. It reads as the SDK's ``ReadableSpan`` does (the same names) but is plain slots (see :class:`Tracing`)."""

    __slots__ = (
        "name", "kind", "context", "parent", "start_time", "end_time", "attributes", "status", "resource",
        "instrumentation_scope",
    )
    events: tuple[()] = ()
    links: tuple[()] = ()

    def __init__(
        self, name: str, kind: SpanKind, context: SpanContext, parent: SpanContext | None, start_time: int,
        attributes: dict[str, Any],
    ) -> None:
        self.name = name
        self.kind = kind
        self.context = context
        self.parent = parent
        self.start_time = start_time  # ns since the epoch
        self.end_time = 0
        self.attributes = attributes
        self.status = UNSET
        self.resource: Resource | None = None  # set when it ends
        self.instrumentation_scope: InstrumentationScope | None = None

    def readable(self) -> ReadableSpan:
        """The SDK's span of it (for the exporter's own encoder)."""
        return ReadableSpan(
            name=self.name, context=self.context, parent=self.parent, resource=self.resource, attributes=self.attributes,
            kind=self.kind, status=self.status, start_time=self.start_time, end_time=self.end_time,
            instrumentation_scope=self.instrumentation_scope,
        )


class Tracing:
    """This process's tracer provider, exporter and the spans of its requests.

    The SDK decides what it always decides: the sampler (OTEL_TRACES_SAMPLER, honouring the caller's sampled
    flag by default), the ids, the resource, the batch processor and the OTLP exporter. What a span is while it
    runs, and what the processor queues when it ends, is the node's own :class:`LeanSpan`: the SDK's live span
    (its attribute checks and copies, its lock, its processor calls at start and end, a ``ReadableSpan`` copy at
    the end) costs about 15 µs a span more, and the node's spans are made of known, bounded attributes that need
    none of it. They are written to protobuf by :func:`encode`, not by the exporter's encoder.
    """

    def __init__(self, settings: Settings, redactor: Redactor) -> None:
        self.redactor = redactor
        self.exporter = Exporter(OTLPSpanExporter(endpoint=settings.traces_url), masked_url(settings.traces_url))
        quiet_sdk_logs(self.exporter)
        self.processor = BatchSpanProcessor(self.exporter)  # OTEL_BSP_* read by the SDK; its own thread exports
        # the sampler: OTEL_TRACES_SAMPLER and its argument, read by the SDK (default: parent-based, always on)
        self.provider = TracerProvider(resource=resource(settings.version), shutdown_on_exit=False)
        self.provider.add_span_processor(self.processor)
        self.sampler = self.provider.sampler
        # The SDK's own samplers (every one OTEL_TRACES_SAMPLER names but a plugin's) decide a child of the node's
        # SERVER span as they decided that span: a parent-based one follows it, a ratio reads the same trace id, a
        # static one is constant. Its CLIENT spans then take its decision without asking (a few µs each).
        self.children_follow = type(self.sampler) in (
            sampling.StaticSampler, sampling.TraceIdRatioBased, sampling.ParentBased, sampling.ParentBasedTraceIdRatio
        )
        self.ids = self.provider.id_generator
        self.scope = InstrumentationScope("mira.node", settings.version)
        self.resource = self.provider.resource
        self.propagator = TraceContextTextMapPropagator()  # W3C trace context only: no baggage in, none out
        self._addresses: dict[str, tuple[str, int]] = {}
        self._models: dict[tuple[str, bool, str], str] = {}  # (model id, custom?, its key) -> gen_ai.request.model
        self._models_made_with = -1  # the redactor's generation they were masked with
        log.info("tracing: spans go to %s", masked_url(settings.traces_url))

    def open(
        self, name: str, kind: SpanKind, parent_context: Context | None, parent: SpanContext | None,
        attributes: dict[str, Any], start: int,
    ) -> LeanSpan:
        """A span as the SDK's tracer would begin it: the trace's id (a new one for a root), the sampler's
        decision and trace state, a new span id."""
        ids = self.ids
        if parent is None:
            trace_id, random_id = ids.generate_trace_id(), ids.is_trace_id_random()
        else:
            trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
        sampler = self.sampler
        if parent is not None and not parent.is_remote and self.children_follow:
            # a child of the node's own span decides as its parent did (see children_follow)
            return LeanSpan(name, kind, SpanContext(trace_id, ids.generate_span_id(), False, parent.trace_flags,
                                                    parent.trace_state), parent, start, attributes)
        if sampler is sampling.DEFAULT_ON or sampler is sampling.DEFAULT_OFF:
            # what the SDK's samplers without an argument decide, without the call (a few µs a span): the parent-based
            # ones follow a parent's flag and sample a root or not; always_on and always_off; all keep the parent's
            # trace state
            sampled = parent.trace_flags.sampled if parent is not None else sampler is sampling.DEFAULT_ON
            state = parent.trace_state if parent is not None else None
        elif sampler is sampling.ALWAYS_ON or sampler is sampling.ALWAYS_OFF:
            sampled = sampler is sampling.ALWAYS_ON
            state = parent.trace_state if parent is not None else None
        else:
            if parent_context is None and parent is not None:  # a CLIENT span: its parent as the sampler sees one
                parent_context = trace.set_span_in_context(NonRecordingSpan(parent))
            decision = sampler.should_sample(parent_context, trace_id, name, kind, attributes)
            sampled, state = decision.decision.is_sampled(), decision.trace_state
        flags = FLAGS[(1 if sampled else 0) | (2 if random_id else 0)]
        context = SpanContext(trace_id, ids.generate_span_id(), False, flags, state)
        return LeanSpan(name, kind, context, parent, start, attributes)

    def close(self, span: LeanSpan, end: int = 0) -> None:
        """End ``span``: a sampled one goes to the batch processor (which only queues it)."""
        if span.context.trace_flags & 1:
            span.end_time = end or time.time_ns()
            span.resource = self.resource
            span.instrumentation_scope = self.scope
            self.processor.on_end(cast(ReadableSpan, span))  # it reads only the context's sampled flag

    def request(self, handler: Any) -> RequestTrace | None:
        """The SERVER span of a ``/v1`` request, begun when its headers came (``ApiHandler.prepare``); None for
        another route (``/status.json``)."""
        request = handler.request
        path = request.path  # a /v1 route matches its path exactly: the route itself, no outside text
        if not path.startswith("/v1/"):
            return None
        headers = request.headers
        parent_context = parent = None
        traceparent = headers.get("traceparent")
        if traceparent:
            carrier = {"traceparent": traceparent}
            tracestate = headers.get("tracestate")
            if tracestate and not self.redactor.found_in(tracestate):  # it is exported: never a secret in it
                carrier["tracestate"] = tracestate
            parent_context = self.propagator.extract(carrier)
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                parent_context = parent = None
        attributes = {
            "http.request.method": request.method,
            "url.path": path,
            "http.route": path,
            "url.scheme": request.protocol,
            "mira.request_id": handler.request_id,
        }
        span = self.open(
            f"{request.method} {path}", SpanKind.SERVER, parent_context, parent, attributes, int(request._start_time * 1e9)
        )
        return RequestTrace(self, span, OPERATIONS.get(handler.route_name, "chat"))

    def model(self, model_id: str, custom: bool, custom_key: str) -> str:
        """``gen_ai.request.model``: the model as sent upstream (a configured provider's id less its ``PROVIDER/``,
        a custom provider's as given), cut and masked; remembered while the redactor learns no secret."""
        redactor = self.redactor
        if self._models_made_with != redactor.generation:
            self._models.clear()
            self._models_made_with = redactor.generation
        known = self._models.get((model_id, custom, custom_key))
        if known is None:
            model = model_id if custom else model_id.partition("/")[2]
            known = redactor(model[:MAX_TEXT], custom_key)
            if len(self._models) >= 1024:
                self._models.clear()
            self._models[(model_id, custom, custom_key)] = known
        return known

    def address(self, url: str) -> tuple[str, int]:
        """``server.address`` and ``server.port`` of a target's URL (remembered: a few distinct URLs)."""
        known = self._addresses.get(url)
        if known is None:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            known = (parts.hostname or "", port)
            if len(self._addresses) < 256:
                self._addresses[url] = known
        return known

    def shutdown(self, wait: float) -> None:
        """Export what is queued, for at most ``wait`` seconds (a stalled collector loses it), then stop."""
        closer = threading.Thread(target=self.provider.shutdown, name="mira-tracing-shutdown", daemon=True)
        closer.start()
        closer.join(wait)
        if closer.is_alive():
            log.warning("tracing: the collector did not take the last spans within %gs; they are dropped", wait)


class RequestTrace:
    """One request's SERVER span, and the CLIENT spans of its upstream attempts (``cancel.trace``).

    A failed attempt's span ends at once. One that answered ends when the request finishes, stamped with the
    time its answer was complete: by then the upstream client has priced the answer (``cost``), which the span
    carries as ``mira.cost_usd``.
    """

    __slots__ = ("tracing", "span", "operation", "parameters", "answered")

    def __init__(self, tracing: Tracing, span: LeanSpan, operation: str) -> None:
        self.tracing = tracing
        self.span: LeanSpan | None = span
        self.operation = operation
        self.parameters: dict[str, int | float] = {}
        self.answered: list[tuple[LeanSpan, Any, int]] = []  # an answering attempt's span, its answer, its end time

    def note(self, request: ProxyRequest) -> None:
        """The request's sampling parameters (max tokens, temperature, top_p) for its attempts' spans."""
        body = request.body
        for attribute, names in PARAMETERS:
            for name in names:
                value = body.get(name)
                if type(value) is int and -(2**63) <= value < 2**63 or type(value) is float and math.isfinite(value):
                    self.parameters[attribute] = value  # an int64 or a finite double, as OTLP has them
                    break

    def finish(self, handler: Any, status: int = 0) -> None:
        """End the SERVER span with the answer's status (``status``: one it never sent), once."""
        span, self.span = self.span, None
        if span is None:
            return
        tracing = self.tracing
        for attempt_span, answer, ended in self.answered:
            cost = getattr(answer, "cost", None)
            if cost is not None:
                attempt_span.attributes["mira.cost_usd"] = cost
            tracing.close(attempt_span, ended)
        self.answered.clear()
        status = status or handler.get_status()
        attributes = span.attributes
        attributes["http.response.status_code"] = status
        attributes["client.address"] = handler.request.remote_ip or ""
        if status >= 500:
            attributes["error.type"] = str(status)
            span.status = ERROR
        tracing.close(span)

    def attempt(
        self, try_once: Callable[[Attempt, Any], Awaitable[T]], attempt: Attempt, cancel: Any, tried: int,
        fallback: bool, key: int,
    ) -> Awaitable[T]:
        """``try_once(attempt, cancel)`` inside its CLIENT span, the call carrying the span's ``traceparent``.

        ``tried`` is the retry number (0 first), ``fallback`` whether the attempt's target is a fallback,
        ``key`` the key's position in the provider's pool (0: no pool). A request that is not sampled records
        nothing: its call only carries the trace context on.
        """
        tracing = self.tracing
        server = self.span
        if server is None:  # the request has finished (an eval's cells being cut): no span to hang it on
            return try_once(attempt, cancel)
        parent = server.context
        if not parent.trace_flags & 1 and tracing.children_follow:
            context = SpanContext(parent.trace_id, tracing.ids.generate_span_id(), False, parent.trace_flags,
                                  parent.trace_state)
            return try_once(attempt._replace(headers=attempt.headers + trace_headers(context)), cancel)
        return self._traced(try_once, attempt, cancel, tried, fallback, key)

    async def _traced(
        self, try_once: Callable[[Attempt, Any], Awaitable[T]], attempt: Attempt, cancel: Any, tried: int,
        fallback: bool, key: int,
    ) -> T:
        tracing = self.tracing
        server = self.span
        assert server is not None
        target = attempt.target
        custom = target.label == "custom"
        custom_key = target.api_key if custom else ""  # a key the redactor does not know
        model = tracing.model(attempt.model_id, custom, custom_key)
        host, port = tracing.address(target.url)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": target.label,
            "gen_ai.request.model": model,
            **self.parameters,
            "server.address": host,
            "server.port": port,
            "mira.attempt": tried,
            "mira.fallback": fallback,
        }
        if key:
            attributes["mira.key"] = key
        span = tracing.open(f"{self.operation} {model}", SpanKind.CLIENT, None, server.context, attributes, time.time_ns())
        headers = attempt.headers + trace_headers(span.context)
        if not span.context.trace_flags & 1:  # not sampled: the provider gets the trace context, nothing is recorded
            return await try_once(attempt._replace(headers=headers), cancel)
        peek = Peek(attempt.reader, tracing.redactor, custom_key, model)
        sent = attempt._replace(headers=headers, reader=peek)
        try:
            value = await try_once(sent, cancel)
        except BaseException as exc:
            failed(span, exc)
            tracing.close(span)
            raise
        if answered(span, value, peek):
            self.answered.append((span, value, time.time_ns()))  # ended by finish, with its cost
        else:
            tracing.close(span)
        return value


def trace_headers(context: SpanContext) -> tuple[bytes, ...]:
    """The ``traceparent`` (and ``tracestate``) header lines of a call made inside the span of ``context``."""
    traceparent = f"traceparent: 00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}".encode()
    if context.trace_state:
        return traceparent, f"tracestate: {context.trace_state.to_header()}".encode()
    return (traceparent,)


def error_type(exc: BaseException) -> str:
    """``error.type`` of an attempt that raised: the upstream's status, or what kind of failure it was."""
    if isinstance(exc, (UpstreamStatus, InvalidStatus)):
        return str(exc.status)
    if isinstance(exc, ApiError):
        return exc.code or str(exc.status)
    return ERROR_TYPES.get(type(exc)) or type(exc).__name__


def failed(span: LeanSpan, exc: BaseException) -> None:
    attributes = span.attributes
    attributes["error.type"] = error_type(exc)
    if isinstance(exc, (UpstreamStatus, InvalidStatus)):
        attributes["http.response.status_code"] = exc.status
    span.status = ERROR


def answered(span: LeanSpan, value: Any, peek: Peek) -> bool:
    """What an attempt's answer said, on its span: status, id, model, finish reasons, usage; whether it had usage
    (and so perhaps a cost to come)."""
    attributes = span.attributes
    attributes["http.response.status_code"] = value.status
    if peek.id:
        attributes["gen_ai.response.id"] = peek.id
    if peek.model:
        attributes["gen_ai.response.model"] = peek.model
    if peek.reasons:
        attributes["gen_ai.response.finish_reasons"] = tuple(peek.reasons)
    if isinstance(value, StreamResult):
        if value.ttfb is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = value.ttfb
        if value.outcome == "upstream_failed":
            attributes["error.type"] = value.error.code if value.error is not None and value.error.code else "stream_failed"
            span.status = ERROR
        elif value.outcome == "client_aborted":
            attributes["error.type"] = "cancelled"
            span.status = ERROR
    usage: Usage | None = value.usage
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt
        attributes["gen_ai.usage.output_tokens"] = usage.completion
        if usage.cache_read:
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read
    return usage is not None


# -- what an answer says of itself, read as it passes -------------------------------------------------------------

# The first "id" and "model" keys of an answer (or of a stream's first events): the answer's own, as every
# dialect writes them first. A JSON string cannot hold an unescaped quote, so a match is a real key; the value
# must be a plain identifier, or it is not kept.
_ID_VALUE = re.compile(rb'\s*:\s*"([\w.:\-]{1,128})"')
_MODEL_VALUE = re.compile(rb'\s*:\s*"([\w.:/@+\-]{1,200})"')
_REASON = re.compile(rb'"(?:finish_reason|stop_reason)"\s*:\s*"(\w{1,40})"')  # chat, completions; Messages
LOOK_FOR_IDS = 64 * 1024  # bytes of a stream searched for its id and model
OVERLAP = 100  # bytes of a stream's previous chunk searched again for a finish reason cut in two
MAX_REASONS = 64


class Peek:
    """An attempt's answer reader that passes everything through and notes the answer's id, model and finish
    reasons for its span (a stream's watcher too)."""

    __slots__ = (
        "reader", "watcher", "usage", "redactor", "api_key", "asked", "id", "model", "reasons", "_looking", "_head",
        "_tail",
    )

    def __init__(self, reader: AnswerReader, redactor: Redactor, api_key: str, asked: str) -> None:
        self.reader = reader
        self.watcher: StreamWatcher | None = None
        self.usage: Usage | None = None  # the stream's usage so far (its watcher's)
        self.redactor = redactor
        self.api_key = api_key  # a custom provider's own key: not one the redactor knows
        self.asked = asked  # the model asked for (masked already): an answer naming it needs no masking
        self.id = ""
        self.model = ""
        self.reasons: list[str] = []
        self._looking = True
        self._head = b""  # a stream's bytes so far, while its id and model are looked for
        self._tail = b""

    # AnswerReader
    def json(self, body: bytes) -> tuple[bytes, Usage | None]:
        answer = self.reader.json(body)
        self._look(body)
        self.reasons = [reason.decode() for reason in _REASON.findall(body)[:MAX_REASONS]]
        return answer

    def stream(self) -> Peek:
        self.watcher = self.reader.stream()
        return self

    # StreamWatcher
    def feed(self, chunk: bytes) -> bytes:
        watcher = self.watcher
        assert watcher is not None
        out = watcher.feed(chunk)
        self.usage = watcher.usage
        if self._looking:  # the stream's first bytes, until its id and model are read
            head = self._head = self._head + chunk
            self._look(head)
            if (self.id and self.model) or len(head) >= LOOK_FOR_IDS:
                self._looking, self._head = False, b""
        if self._tail or b'_reason":"' in chunk or b'_reason": "' in chunk:  # (a null one is not a reason)
            self._reasons(chunk)
        if not chunk.endswith(b"\n"):  # an event goes on in the next chunk: its end here is looked at again then
            self._tail = chunk[-OVERLAP:]
        return out

    def finish(self) -> bytes:
        watcher = self.watcher
        assert watcher is not None
        held = watcher.finish()
        self.usage = watcher.usage
        return held

    def _look(self, data: bytes) -> None:
        if not self.id:
            self.id = self._value(data, b'"id"', _ID_VALUE)
        if not self.model:
            self.model = self._value(data, b'"model"', _MODEL_VALUE)

    def _value(self, data: bytes, key: bytes, pattern: re.Pattern[bytes]) -> str:
        at = data.find(key)
        if at < 0:
            return ""
        match = pattern.match(data, at + len(key))
        if match is None:
            return ""
        value = match.group(1).decode("ascii")
        return value if value == self.asked else self.redactor(value, self.api_key)

    def _reasons(self, chunk: bytes) -> None:
        tail, self._tail = self._tail, b""
        if len(self.reasons) >= MAX_REASONS:
            return
        if tail:  # a finish reason cut by the chunk boundary
            window = tail + chunk[:OVERLAP]
            for match in _REASON.finditer(window):
                if match.start() < len(tail) < match.end():
                    self.reasons.append(match.group(1).decode())
        self.reasons += [reason.decode() for reason in _REASON.findall(chunk)]


# -- the OTLP protobuf of a batch, written directly ------------------------------------------------------------
#
# The exporter's own encoder builds a protobuf object per span, per attribute and per value: about 40 µs a span of
# the node's, most of what tracing would cost a request. The same message is written here from the known shapes,
# and an attribute seen before (a provider, a model, a status: most of them) is copied as it was written. A batch
# with events or links (never the node's) is left to the exporter's encoder. The tests decode every export with
# opentelemetry-proto, and compare this encoding with the exporter's. Field numbers: opentelemetry/proto/trace/v1.

Span = LeanSpan | ReadableSpan
_SMALL = [bytes((n,)) for n in range(128)]
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_KINDS = {kind: b"\x30" + _SMALL[kind.value + 1] for kind in SpanKind}  # the proto's SpanKind counts from UNSPECIFIED
_ENCODED: dict[tuple[bytes, str, type, Any], bytes] = {}  # (field tag, key, type, value) -> that KeyValue field
MAX_ENCODED = 4096  # then forgotten, and made again as they come
REMOTE_PARENT = 0x100 | 0x200  # Span.flags: whether the parent is remote is known (0x100), and it is (0x200)


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """An ``AnyValue`` (the SDK's attribute types: str, bool, int, float, bytes, a sequence of them)."""
    kind = type(value)
    if kind is str:
        return _field(b"\x0a", value.encode("utf-8", "replace"))
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement, as protobuf writes it
    if kind is float:
        return b"\x21" + _F64.pack(value)
    if kind is bytes:
        return _field(b"\x3a", value)
    if isinstance(value, (tuple, list)):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    return _field(b"\x0a", str(value).encode("utf-8", "replace"))


def _attributes(tag: bytes, attributes: Any) -> bytes:
    """Repeated ``KeyValue`` in field ``tag``."""
    parts = []
    encoded = _ENCODED
    for key, value in attributes.items():
        kind = type(value)
        known = encoded.get((tag, key, kind, value)) if kind is not list else None
        if known is None:
            value_field = _any_value(value)
            key_bytes = key.encode()
            pair = b"\x0a" + _varint(len(key_bytes)) + key_bytes + b"\x12" + _varint(len(value_field)) + value_field
            known = tag + _varint(len(pair)) + pair
            if kind is not list:
                if len(encoded) >= MAX_ENCODED:
                    encoded.clear()
                encoded[(tag, key, kind, value)] = known
        parts.append(known)
    return b"".join(parts)


def _span(span: Span) -> bytes:
    context = span.context
    assert context is not None
    parent = span.parent
    status = span.status
    if status is UNSET or status.status_code is StatusCode.UNSET:
        status_field = b"\x7a\x00"  # an empty Status, as the exporter's encoder writes it
    else:
        message = _field(b"\x12", status.description.encode()) if status.description else b""
        status_field = _field(b"\x7a", message + b"\x18" + _SMALL[status.status_code.value])
    return b"".join((
        b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big"),
        _field(b"\x1a", context.trace_state.to_header().encode()) if context.trace_state else b"",
        b"\x22\x08" + parent.span_id.to_bytes(8, "big") if parent is not None else b"",
        _field(b"\x2a", span.name.encode("utf-8", "replace")),
        _KINDS[span.kind],
        b"\x39", _U64.pack(span.start_time or 0), b"\x41", _U64.pack(span.end_time or 0),
        _attributes(b"\x4a", span.attributes),
        status_field,
        b"\x85\x01", _U32.pack(REMOTE_PARENT if parent is not None and parent.is_remote else 0x100),
    ))


def _group_head(span: Span) -> tuple[bytes, bytes, bytes]:
    """The encoded ``Resource`` (ResourceSpans field 1), ``InstrumentationScope`` (ScopeSpans field 1) and the
    resource's schema URL (ResourceSpans field 3) of a span."""
    resource, scope = span.resource, span.instrumentation_scope
    assert resource is not None
    head = _field(b"\x0a", _attributes(b"\x0a", resource.attributes))
    scope_field = b""
    if scope is not None:
        named = _field(b"\x0a", scope.name.encode()) + (_field(b"\x12", scope.version.encode()) if scope.version else b"")
        scope_field = _field(b"\x0a", named) + (_field(b"\x1a", scope.schema_url.encode()) if scope.schema_url else b"")
    schema = _field(b"\x1a", resource.schema_url.encode()) if resource.schema_url else b""
    return head, scope_field, schema


def readable(spans: Sequence[Span]) -> list[ReadableSpan]:
    return [span.readable() if isinstance(span, LeanSpan) else span for span in spans]


def encode(spans: Sequence[Span]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``spans``, serialized, grouped by resource and scope as OTLP wants."""
    if any(span.events or span.links for span in spans):
        return encode_spans(readable(spans)).SerializePartialToString()
    groups: dict[tuple[int, int], tuple[Span, list[bytes]]] = {}
    for span in spans:
        key = (id(span.resource), id(span.instrumentation_scope))
        group = groups.get(key)
        if group is None:
            group = groups[key] = (span, [])
        group[1].append(_field(b"\x12", _span(span)))
    by_resource: dict[int, tuple[bytes, bytes, list[bytes]]] = {}
    for (resource_id, _), (first, encoded) in groups.items():
        head, scope_field, schema = _group_head(first)
        scope_spans = _field(b"\x12", scope_field + b"".join(encoded))
        if resource_id in by_resource:
            by_resource[resource_id][2].append(scope_spans)
        else:
            by_resource[resource_id] = (head, schema, [scope_spans])
    return b"".join(
        _field(b"\x0a", head + b"".join(scope_spans) + schema) for head, schema, scope_spans in by_resource.values()
    )


# -- export: off the event loop, its failures said once a minute ------------------------------------------------


class Exporter(SpanExporter):
    """The OTLP/HTTP exporter (run by the batch processor's thread); spans it cannot deliver are dropped and
    counted, and a warning says so at most once every :data:`WARN_EVERY` seconds."""

    def __init__(self, otlp: SpanExporter, where: str) -> None:
        self.otlp = otlp
        self.where = where
        self._lock = threading.Lock()
        self._dropped = 0
        self._last_warning = -math.inf

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            client = getattr(self.otlp, "_client", None)  # the exporter's HTTP client: retries, headers, TLS, gzip
            if client is None:
                result = self.otlp.export(readable(spans))
            else:
                result = SpanExportResult.SUCCESS if client.export(encode(spans)).success else SpanExportResult.FAILURE
        except Exception:  # the exporter's own failure must not end the export thread
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.dropped(len(spans))
        return result

    def dropped(self, count: int) -> None:
        """``count`` spans are lost (a failed batch, or a full queue): warn, unless a warning went out lately."""
        with self._lock:
            self._dropped += count
            now = time.monotonic()
            if now - self._last_warning < WARN_EVERY:
                return
            count, self._dropped, self._last_warning = self._dropped, 0, now
        log.warning(
            "tracing: %d spans could not be exported to %s (the collector is down, slow or refusing them) and were"
            " dropped; requests are not affected (next warning in %gs at the earliest)", count, self.where, WARN_EVERY,
        )

    def shutdown(self) -> None:
        self.otlp.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.otlp.force_flush(timeout_millis)


class _QueueFull(logging.Filter):
    """The batch processor says "Queue full" for every span it drops: counted into the exporter's warning instead."""

    def __init__(self, exporter: Exporter) -> None:
        super().__init__()
        self.exporter = exporter

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Queue full"):
            self.exporter.dropped(1)
        return False


def quiet_sdk_logs(exporter: Exporter) -> None:
    """The SDK's own log lines (a line per failed batch, per dropped span) give way to :class:`Exporter`'s warning."""
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    batch = logging.getLogger("opentelemetry.sdk._shared_internal")
    batch.setLevel(logging.WARNING)
    batch.addFilter(_QueueFull(exporter))
