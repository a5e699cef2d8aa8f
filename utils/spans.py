"""The node's OpenTelemetry spans: imported by :mod:`utils.tracing` only when tracing is on.

One SERVER span per ``/v1`` request (:meth:`Tracing.request`, from ``ApiHandler.prepare`` to ``on_finish``),
its parent the caller's W3C ``traceparent``/``tracestate`` when sent. One CLIENT span per upstream attempt
(:meth:`RequestTrace.attempt`, from ``UpstreamClient._across``: each retry, key switch and fallback its own),
a child of it, with OpenTelemetry's GenAI attributes and the node's ``mira.*`` ones; the call carries that
span's ``traceparent``. What an answer says of itself (its id, model and finish reasons) is read from its bytes
as they pass (:class:`Peek`), never by parsing it whole, and only values of a narrow alphabet are kept: no
prompt, completion, tool argument or key reaches a span (a value that holds a secret's fragment is masked).

The SDK decides what it always decides: the sampler (OTEL_TRACES_SAMPLER), the ids (its random generator's
rule), the resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) and the OTLP/HTTP transport
(OTEL_EXPORTER_OTLP_*: headers, TLS, compression, timeout, retries). What a span is, is the node's own: the event
loop only notes a finished span's raw values in a flat record (ids and times as ints, the
attribute values as they are) and queues it; the export thread writes the protobuf (:class:`Encoder`), from
bytes made once for everything that repeats. The SDK's live span (attribute checks and copies, a lock,
processor calls, a ``ReadableSpan`` copy), its ``Context`` objects and its encoder (a protobuf object per span,
attribute and value) cost a span several times what this does (bench/PERFORMANCE.md, issue 33).

Spans leave in batches from the export thread (:class:`Batches`: OTEL_BSP_SCHEDULE_DELAY,
OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, as the SDK's batch processor reads them), never from
the event loop. A collector that is down or slow costs spans, never a request: the queue drops the oldest when
full, a failed batch is dropped, and :class:`Exporter` logs one warning a minute at most.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from random import getrandbits
from typing import Any, TypeVar
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, set_value
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk import environment_variables as sdk_env
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider, sampling
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from config import ConfigError, Settings, masked_url
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
from utils.upstream.providers.base import AnswerReader, StreamWatcher, Target
from utils.upstream.relay import StreamResult
from utils.upstream.usage import Usage

log = logging.getLogger("mira.tracing")
T = TypeVar("T")

SERVICE_NAME = "mira-node"  # service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one
SCOPE_NAME = "mira.node"
WARN_EVERY = 60.0  # seconds between two warnings about spans that could not be exported
# gen_ai.operation.name by the handler's route_name (verify, eval, chat, responses, messages: chat)
OPERATIONS = {"embeddings": "embeddings", "completions": "text_completion"}
# The request's sampling parameters: the body fields noted (RequestTrace.note), and each attribute with the
# positions of the fields that give it, the first one that is an int64 or a finite double winning.
PARAMETER_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "temperature", "top_p")
PARAMETERS = (
    ("gen_ai.request.max_tokens", (0, 1, 2)),
    ("gen_ai.request.temperature", (3,)),
    ("gen_ai.request.top_p", (4,)),
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
MAX_REMEMBERED = 1024  # masked names, routes and encoded values kept (then forgotten, and made again as they come)
# The batch processor's settings, read as the SDK's BatchSpanProcessor reads them, and its defaults (the spec's).
# OTEL_BSP_EXPORT_TIMEOUT is not used, as by the SDK: OTEL_EXPORTER_OTLP_TIMEOUT bounds each POST.
BSP_DEFAULTS = (
    (sdk_env.OTEL_BSP_SCHEDULE_DELAY, 5000),
    (sdk_env.OTEL_BSP_MAX_QUEUE_SIZE, 2048),
    (sdk_env.OTEL_BSP_MAX_EXPORT_BATCH_SIZE, 512),
)
TRACE_ID_LOW = (1 << 64) - 1  # the bits of a trace id a ratio sampler compares with its bound (the SDK's rule)
SAMPLED, RANDOM = 1, 2  # trace flags: bit 0 sampled, bit 1 the trace id is random (W3C trace context level 2)
SERVER, CLIENT = 0, 1  # a record's first item


def resource(version: str) -> Resource:
    """The node's resource: the SDK's reading of OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, ``mira-node``
    when they name no service, and ``service.version`` (VERSION) unless they give one."""
    detected = Resource.create({})
    merged = Resource({"service.version": version}).merge(detected)
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        merged = merged.merge(Resource({"service.name": SERVICE_NAME}))
    return merged


def batch_settings() -> tuple[float, int, int]:
    """OTEL_BSP_SCHEDULE_DELAY (seconds), OTEL_BSP_MAX_QUEUE_SIZE and OTEL_BSP_MAX_EXPORT_BATCH_SIZE (spans): a
    value that is not an integer gives way to the default with a warning, a contradiction stops start-up."""
    values = []
    for name, default in BSP_DEFAULTS:
        raw = os.environ.get(name, "")
        try:
            values.append(int(raw) if raw.strip() else default)
        except ValueError:
            log.warning("tracing: %s=%r is not an integer; using %d", name, raw, default)
            values.append(default)
    delay, queue, batch = values
    if delay <= 0 or queue <= 0 or batch <= 0 or batch > queue:
        raise ConfigError(
            f"OTEL_BSP_SCHEDULE_DELAY={delay}, OTEL_BSP_MAX_QUEUE_SIZE={queue}, OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch}:"
            " each must be positive, and a batch no larger than the queue"
        )
    return delay / 1000, queue, batch


class Tracing:
    """This process's sampler, ids, export queue and thread, and the spans of its requests.

    Sampling is decided inline for every sampler OTEL_TRACES_SAMPLER names (the SDK's rule: a root is sampled
    when the low 64 bits of its trace id are under the sampler's bound, which is 2**64 for ``always_on`` and 0
    for ``always_off``; a parent-based one follows a parent's sampled flag); another sampler is asked, span by
    span. The node's CLIENT spans take their SERVER span's decision whenever the sampler would decide the same.
    """

    def __init__(self, settings: Settings, redactor: Redactor) -> None:
        self.masks = Masks(redactor)
        self.redactor = redactor
        # the sampler, id generator and resource as the SDK reads them (its tracer is never used)
        provider = TracerProvider(resource=resource(settings.version), shutdown_on_exit=False)
        self.resource = provider.resource
        self.scope = InstrumentationScope(SCOPE_NAME, settings.version)
        self.sampler = provider.sampler
        self.bound, self.parent_based = inline_sampling(self.sampler)
        self.children_follow = self.bound >= 0
        self.ids = provider.id_generator
        self.random_ids = type(self.ids) is RandomIdGenerator  # ids from getrandbits here, as it would make them
        self.root_flags = RANDOM if self.ids.is_trace_id_random() else 0
        self.propagator = TraceContextTextMapPropagator()  # W3C trace context only: no baggage in, none out
        otlp = OTLPSpanExporter(endpoint=settings.traces_url)
        self.exporter = Exporter(otlp, masked_url(settings.traces_url), Encoder(self.resource, self.scope))
        quiet_sdk_logs()
        self.batches = Batches(self.exporter, *batch_settings())
        log.info("tracing: spans go to %s", masked_url(settings.traces_url))

    # ids and sampling

    def trace_id(self) -> int:
        if self.random_ids:
            trace_id = getrandbits(128)
            if trace_id:
                return trace_id
        return self.ids.generate_trace_id()

    def span_id(self) -> int:
        if self.random_ids:
            span_id = getrandbits(64)
            if span_id:
                return span_id
        return self.ids.generate_span_id()

    def ask(
        self, kind: SpanKind, name: str, trace_id: int, parent: SpanContext | None, attributes: dict[str, Any]
    ) -> tuple[bool, str]:
        """The configured sampler's decision and trace state (header form) for a span it cannot be decided for
        inline (a sampler other than the SDK's own): as the SDK's tracer would ask it."""
        context = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
        decision = self.sampler.should_sample(context, trace_id, name, kind, attributes)
        state = decision.trace_state
        return decision.decision.is_sampled(), state.to_header() if state else ""

    # the spans of a request

    def request(self, handler: Any) -> RequestTrace | None:
        """The SERVER span of a ``/v1`` request, begun when its headers came (``ApiHandler.prepare``); None for
        another route (``/status.json``)."""
        request = handler.request
        path = request.path  # a /v1 route matches its path exactly: the route itself, no outside text
        if not path.startswith("/v1/"):
            return None
        start = int(request._start_time * 1e9)
        operation = OPERATIONS.get(handler.route_name, "chat")
        headers = request.headers
        if "traceparent" in headers:  # (cheaper than a get, for the many requests without one)
            continued = self.continued(handler, headers["traceparent"], start, operation)
            if continued is not None:
                return continued
        trace_id = getrandbits(128) if self.random_ids else 0
        span_id = getrandbits(64) if self.random_ids else 0
        if not trace_id or not span_id:  # another id generator (or, once in 2**64 times, an invalid id)
            trace_id, span_id = self.trace_id(), self.span_id()
        if self.bound >= 0:
            sampled = trace_id & TRACE_ID_LOW < self.bound
            state = ""
        else:
            sampled, state = self.ask(SpanKind.SERVER, f"{request.method} {path}", trace_id, None, server_attributes(handler))
        flags = self.root_flags | SAMPLED if sampled else self.root_flags
        return RequestTrace(self, trace_id, span_id, 0, flags, state, start, operation)

    def continued(self, handler: Any, traceparent: str, start: int, operation: str) -> RequestTrace | None:
        """The SERVER span of a request whose caller sent a valid ``traceparent``: its child (None: not valid)."""
        carrier = {"traceparent": traceparent}
        tracestate = handler.request.headers.get("tracestate")
        if tracestate and not self.redactor.found_in(tracestate):  # it is exported: never a secret in it
            carrier["tracestate"] = tracestate
        parent = trace.get_current_span(self.propagator.extract(carrier)).get_span_context()
        if not parent.is_valid:
            return None
        trace_id = parent.trace_id
        if self.bound >= 0:
            sampled = parent.trace_flags.sampled if self.parent_based else trace_id & TRACE_ID_LOW < self.bound
            state = parent.trace_state.to_header() if parent.trace_state else ""
        else:
            request = handler.request
            name = f"{request.method} {request.path}"
            sampled, state = self.ask(SpanKind.SERVER, name, trace_id, parent, server_attributes(handler))
        flags = (SAMPLED if sampled else 0) | (RANDOM if parent.trace_flags & RANDOM else 0)
        return RequestTrace(self, trace_id, self.span_id(), parent.span_id, flags, state, start, operation)

    def finished(self, records: list[Any]) -> None:
        """Queue a request's finished spans for the export thread."""
        batches = self.batches
        queue = batches.queue
        if len(queue) + len(records) > batches.limit:
            self.exporter.dropped(len(queue) + len(records) - batches.limit)  # the oldest go
        queue.extend(records)
        if len(queue) >= batches.size:
            batches.wake()

    def shutdown(self, wait: float) -> None:
        """Export what is queued, for at most ``wait`` seconds (a stalled collector loses it), then stop."""
        self.batches.stop(wait)


def inline_sampling(sampler: sampling.Sampler) -> tuple[int, bool]:
    """The bound a root's trace id is compared with, and whether a parent's flag decides instead, for the SDK's
    own samplers (every one OTEL_TRACES_SAMPLER names); (-1, False) for another, which is asked."""
    if sampler is sampling.ALWAYS_ON or sampler is sampling.DEFAULT_ON:
        return 1 << 64, sampler is sampling.DEFAULT_ON
    if sampler is sampling.ALWAYS_OFF or sampler is sampling.DEFAULT_OFF:
        return 0, sampler is sampling.DEFAULT_OFF
    if type(sampler) is sampling.TraceIdRatioBased:
        return sampler.bound, False
    root = getattr(sampler, "_root", None)  # ParentBasedTraceIdRatio: the ratio decides a root, the flag the rest
    if type(sampler) is sampling.ParentBasedTraceIdRatio and type(root) is sampling.TraceIdRatioBased:
        return root.bound, True
    return -1, False


def server_attributes(handler: Any) -> dict[str, Any]:
    """A SERVER span's attributes at its start (what a sampler that is asked sees)."""
    request = handler.request
    return {
        "http.request.method": request.method, "url.path": request.path, "http.route": request.path,
        "url.scheme": request.protocol, "mira.request_id": handler.request_id,
    }


class Route:
    """What the CLIENT spans of one model at one target share: the model as sent (masked), the span's name, and
    its constant attributes, encoded (:meth:`Masks.route`)."""

    __slots__ = ("model", "custom_key", "name", "values", "static")

    def __init__(self, operation: str, model: str, custom_key: str, provider: str, host: str, port: int) -> None:
        self.model = model
        self.custom_key = custom_key  # a custom provider's own key: not one the redactor knows
        self.name = f"{operation} {model}"
        self.values: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": provider, "gen_ai.request.model": model,
            "server.address": host, "server.port": port,
        }
        self.static = _text_field(b"\x2a", self.name) + b"".join(  # Span.name (5), and these attributes
            _attribute(_key(name), _any(value)) for name, value in self.values.items()
        )


class Masks:
    """Outside text as spans carry it, masked by the redactor: the routes (:class:`Route`) and the models that
    answers name, remembered while the redactor learns no new secret."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.generation = redactor.generation
        self.routes: dict[tuple[str, str, str, str, str], Route] = {}
        self.models: dict[tuple[str, str], str] = {}

    def _fresh(self) -> None:
        if self.generation != self.redactor.generation:  # a secret learnt since: masked anew
            self.routes.clear()
            self.models.clear()
            self.generation = self.redactor.generation

    def route(self, operation: str, model_id: str, target: Target) -> Route:
        """The route of an attempt: ``gen_ai.request.model`` is the model as sent upstream (a configured
        provider's id less its ``PROVIDER/``, a custom provider's as given), cut and masked."""
        custom = target.label == "custom"
        custom_key = target.api_key if custom else ""
        key = (operation, model_id, target.url, target.label, custom_key)
        if self.generation != self.redactor.generation:
            self._fresh()
        known = self.routes.get(key)
        if known is None:
            model = model_id if custom else model_id.partition("/")[2]
            parts = urlsplit(target.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            known = Route(operation, self.redactor(model[:MAX_TEXT], custom_key), custom_key, target.label,
                          parts.hostname or "", port)
            if len(self.routes) >= MAX_REMEMBERED:
                self.routes.clear()
            self.routes[key] = known
        return known

    def model(self, model: str, custom_key: str) -> str:
        """A model an answer names, masked."""
        if self.generation != self.redactor.generation:
            self._fresh()
        key = (model, custom_key)
        known = self.models.get(key)
        if known is None:
            known = self.redactor(model, custom_key)
            if len(self.models) >= MAX_REMEMBERED:
                self.models.clear()
            self.models[key] = known
        return known


# A CLIENT span's record: a list (its cost comes last), at these positions.
C_TRACE, C_SPAN, C_PARENT, C_STATE, C_START, C_END, C_ROUTE, C_PARAMETERS = 1, 2, 3, 4, 5, 6, 7, 8
C_ATTEMPT, C_FALLBACK, C_KEY, C_STATUS, C_ID, C_MODEL, C_REASONS, C_TTFB, C_USAGE, C_ERROR, C_COST = range(9, 20)
_READER = Attempt._fields.index("reader")
_HEADERS = Attempt._fields.index("headers")


class RequestTrace:
    """One request's SERVER span, and the CLIENT spans of its upstream attempts (``cancel.trace``).

    While the request runs this holds the SERVER span's ids, flags, trace state and start; each attempt's CLIENT
    span is a record once it has ended. When the request finishes its records go to the export queue (a sampled
    request's; an unsampled one only carried its trace context on). An answering attempt's span ends at the time
    its answer was complete, and takes its cost (``mira.cost_usd``: the upstream client prices the answer after
    the attempt) when the request finishes.

    A SERVER span's record is the tuple ``(SERVER, trace id, span id, parent span id or 0, trace state, start,
    end, method, path, scheme, request id, status, client address)``; a CLIENT span's is a list, its positions
    the ``C_*`` constants.
    """

    __slots__ = (
        "tracing", "trace_id", "span_id", "parent_id", "flags", "state", "start", "operation", "parameters", "records",
        "open",
    )

    def __init__(
        self, tracing: Tracing, trace_id: int, span_id: int, parent_id: int, flags: int, state: str, start: int,
        operation: str,
    ) -> None:
        self.tracing = tracing
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id  # the caller's span, 0 for a root
        self.flags = flags
        self.state = state  # the trace state, as its header is written ("": none)
        self.start = start  # ns since the epoch
        self.operation = operation
        self.parameters: tuple[Any, ...] = ()  # the body's PARAMETER_FIELDS, as sent
        self.records: list[Any] = []  # the CLIENT spans that ended (an answering one's cost: its answer, until finish)
        self.open = True

    def note(self, request: ProxyRequest) -> None:
        """The request's sampling parameters (max tokens, temperature, top_p) for its attempts' spans."""
        if self.flags & SAMPLED:
            get = request.body.get
            self.parameters = (get("max_tokens"), get("max_completion_tokens"), get("max_output_tokens"),
                               get("temperature"), get("top_p"))

    def finish(self, handler: Any, status: int = 0) -> None:
        """End the SERVER span with the answer's status (``status``: one it never sent), once."""
        if not self.open:
            return
        self.open = False
        records = self.records
        for record in records:
            answer = record[C_COST]
            if answer is not None:  # priced by now
                record[C_COST] = getattr(answer, "cost", None)
        if self.flags & SAMPLED:
            request = handler.request
            records.append((
                SERVER, self.trace_id, self.span_id, self.parent_id, self.state, self.start, time.time_ns(),
                request.method, request.path, request.protocol, handler.request_id, status or handler.get_status(),
                request.remote_ip or "",
            ))
        if records:  # (a sampler that is asked may sample an attempt of a request it did not sample)
            self.tracing.finished(records)

    def headers(self, span_id: int, flags: int, state: str) -> tuple[bytes, ...]:
        """The ``traceparent`` (and ``tracestate``) header lines of a call made inside span ``span_id``."""
        traceparent = b"traceparent: 00-%032x-%016x-%02x" % (self.trace_id, span_id, flags)
        if state:
            return traceparent, f"tracestate: {state}".encode()
        return (traceparent,)

    def attempt(
        self, try_once: Callable[[Attempt, Any], Awaitable[T]], attempt: Attempt, cancel: Any, tried: int,
        fallback: bool, key: int,
    ) -> Awaitable[T]:
        """``try_once(attempt, cancel)`` inside its CLIENT span, the call carrying the span's ``traceparent``.

        ``tried`` is the retry number (0 first), ``fallback`` whether the attempt's target is a fallback,
        ``key`` the key's position in the provider's pool (0: no pool). A request that is not sampled records
        nothing: its call only carries the trace context on.
        """
        if not self.open:  # the request has finished (an eval's cells being cut): no span to hang it on
            return try_once(attempt, cancel)
        tracing = self.tracing
        if tracing.children_follow and not self.flags & SAMPLED:
            headers = attempt.headers + self.headers(tracing.span_id(), self.flags, self.state)
            return try_once(attempt._replace(headers=headers), cancel)
        return self._traced(try_once, attempt, cancel, tried, fallback, key)

    async def _traced(
        self, try_once: Callable[[Attempt, Any], Awaitable[T]], attempt: Attempt, cancel: Any, tried: int,
        fallback: bool, key: int,
    ) -> T:
        tracing = self.tracing
        route = tracing.masks.route(self.operation, attempt.model_id, attempt.target)
        span_id = (getrandbits(64) if tracing.random_ids else 0) or tracing.span_id()
        flags, state = self.flags, self.state
        if not tracing.children_follow:  # a sampler that is asked, span by span
            parent = SpanContext(self.trace_id, self.span_id, False, TraceFlags(flags),
                                 TraceState.from_header([state]) if state else None)
            sampled, state = tracing.ask(SpanKind.CLIENT, route.name, self.trace_id, parent, {})
            flags = flags | SAMPLED if sampled else flags & ~SAMPLED
        fields = list(attempt)
        traceparent = b"traceparent: 00-%032x-%016x-%02x" % (self.trace_id, span_id, flags)  # (as self.headers)
        fields[_HEADERS] = attempt.headers + ((traceparent, f"tracestate: {state}".encode()) if state else (traceparent,))
        if not flags & SAMPLED:  # not sampled: the provider gets the trace context, nothing is recorded
            return await try_once(Attempt._make(fields), cancel)
        peek = fields[_READER] = Peek(attempt.reader, tracing.masks, route)
        start = time.time_ns()
        try:
            value = await try_once(Attempt._make(fields), cancel)
        except BaseException as exc:
            end = time.time_ns()
            self.ended([
                CLIENT, self.trace_id, span_id, self.span_id, state, start, end, route, self.parameters, tried,
                fallback, key, exc.status if isinstance(exc, (UpstreamStatus, InvalidStatus)) else 0, "", "", (), None,
                None, error_type(exc), None,
            ])
            raise
        end = time.time_ns()
        error = ""
        ttfb = None
        if isinstance(value, StreamResult):
            ttfb = value.ttfb
            if value.outcome == "upstream_failed":
                error = value.error.code if value.error is not None and value.error.code else "stream_failed"
            elif value.outcome == "client_aborted":
                error = "cancelled"
        usage: Usage | None = value.usage  # type: ignore[attr-defined]
        record = [
            CLIENT, self.trace_id, span_id, self.span_id, state, start, end, route, self.parameters, tried, fallback, key,
            value.status, peek.id, peek.model, peek.reasons, ttfb, usage, error,  # type: ignore[attr-defined]
            value if usage is not None and self.open else None,  # an answer with usage: its cost is read at finish
        ]
        if self.open:  # (as self.ended)
            self.records.append(record)
        else:
            tracing.finished([record])
        return value

    def ended(self, record: list[Any]) -> None:
        """A CLIENT span that has ended: kept until the request finishes (or queued, once it has)."""
        if self.open:
            self.records.append(record)
        else:
            self.tracing.finished([record])


def error_type(exc: BaseException) -> str:
    """``error.type`` of an attempt that raised: the upstream's status, or what kind of failure it was."""
    if isinstance(exc, (UpstreamStatus, InvalidStatus)):
        return str(exc.status)
    if isinstance(exc, ApiError):
        return exc.code or str(exc.status)
    return ERROR_TYPES.get(type(exc)) or type(exc).__name__


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

    __slots__ = ("reader", "masks", "route", "id", "model", "reasons", "watcher", "usage", "_looking", "_head", "_tail")

    def __init__(self, reader: AnswerReader, masks: Masks, route: Route) -> None:
        self.reader = reader
        self.masks = masks
        self.route = route  # the model asked for (masked already: an answer naming it needs no masking), the key
        self.id = ""
        self.model = ""
        self.reasons: Sequence[str] = ()

    # AnswerReader
    def json(self, body: bytes) -> tuple[bytes, Usage | None]:
        answer = self.reader.json(body)
        route = self.route
        at = body.find(b'"id"')  # (as _look, for a whole answer)
        match = _ID_VALUE.match(body, at + 4) if at >= 0 else None
        if match is not None:
            value = match.group(1).decode("ascii")
            self.id = self.masks.redactor(value, route.custom_key) if route.custom_key else self.masks.redactor(value)
        at = body.find(b'"model"')
        match = _MODEL_VALUE.match(body, at + 7) if at >= 0 else None
        if match is not None:
            model = match.group(1).decode("ascii")
            self.model = model if model == route.model else self.masks.model(model, route.custom_key)
        self.reasons = tuple([reason.decode() for reason in _REASON.findall(body)[:MAX_REASONS]])
        return answer

    def stream(self) -> Peek:
        self.watcher: StreamWatcher | None = self.reader.stream()
        self.usage: Usage | None = None  # the stream's usage so far (its watcher's)
        self.reasons = []
        self._looking = True
        self._head = b""  # a stream's bytes so far, while its id and model are looked for
        self._tail = b""
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
            self._stream_reasons(chunk)
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
            value = self._value(data, b'"id"', _ID_VALUE)
            if value:  # (each answer its own: not remembered)
                key = self.route.custom_key
                self.id = self.masks.redactor(value, key) if key else self.masks.redactor(value)
        if not self.model:
            value = self._value(data, b'"model"', _MODEL_VALUE)
            if value:
                route = self.route
                self.model = value if value == route.model else self.masks.model(value, route.custom_key)

    @staticmethod
    def _value(data: bytes, key: bytes, pattern: re.Pattern[bytes]) -> str:
        at = data.find(key)
        if at < 0:
            return ""
        match = pattern.match(data, at + len(key))
        return match.group(1).decode("ascii") if match is not None else ""

    def _stream_reasons(self, chunk: bytes) -> None:
        tail, self._tail = self._tail, b""
        reasons = self.reasons
        assert isinstance(reasons, list)
        if len(reasons) >= MAX_REASONS:
            return
        if tail:  # a finish reason cut by the chunk boundary
            for match in _REASON.finditer(tail + chunk[:OVERLAP]):
                if match.start() < len(tail) < match.end():
                    reasons.append(match.group(1).decode())
        reasons += [reason.decode() for reason in _REASON.findall(chunk)]


# -- the OTLP protobuf of a batch, written in the export thread ---------------------------------------------------
#
# A batch is one ExportTraceServiceRequest: one ResourceSpans (the resource, written once) with one ScopeSpans
# (the scope, written once) of the batch's spans. A span is a few struct packs of its ids and times and the
# encoded fields of its attributes: every key is encoded once, and a value that repeats (a status, a provider,
# a model, a token count) is encoded once and copied. The tests decode every export with opentelemetry-proto,
# and compare this encoding with the exporter's own (of the same spans as the SDK's ReadableSpan, readable()).
# Field numbers: opentelemetry/proto/trace/v1/trace.proto, common/v1/common.proto.


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 127:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS = [_varint(n) for n in range(2048)]  # the lengths of most fields, written
_F64 = struct.Struct("<d")
_IDS = struct.Struct(">HQQHQ")  # Span.trace_id (1) and span_id (2), each its tag and length then the id
_IDS_PARENT = struct.Struct(">HQQHQHQ")  # and parent_span_id (4)
_KIND_TIMES = struct.Struct("<BBBQBQ")  # Span.kind (6), start_time_unix_nano (7), end_time_unix_nano (8)
_KIND_SERVER, _KIND_CLIENT = SpanKind.SERVER.value + 1, SpanKind.CLIENT.value + 1  # the proto's count from UNSPECIFIED
_UNSET = b"\x7a\x00"  # Span.status (15): an empty Status, as the exporter's encoder writes it
_ERROR = b"\x7a\x02\x18\x02"  # Status.code (3): ERROR
# Span.flags (16): whether the parent is remote is known (0x100), and that it is (0x200); with the status before it
_LOCAL_PARENT, _REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", 0x100), b"\x85\x01" + struct.pack("<I", 0x300)
_TAILS = {(error, remote): (_ERROR if error else _UNSET) + (_REMOTE_PARENT if remote else _LOCAL_PARENT)
          for error in (False, True) for remote in (False, True)}
INT64 = 1 << 63


def _len(n: int) -> bytes:
    return _VARINTS[n] if n < 2048 else _varint(n)


def _text_field(tag: bytes, text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    return tag + _len(len(raw)) + raw


def _key(name: str) -> bytes:
    """A ``KeyValue``'s key (1) and its value's tag (2): what every attribute of that key begins with."""
    return _text_field(b"\x0a", name) + b"\x12"


def _text_attribute(key: bytes, text: str) -> bytes:
    """A Span's attribute of ``key`` whose value is ``text`` (one that is not worth remembering)."""
    raw = text.encode("utf-8", "replace")
    size = len(key) + len(raw) + 3
    if size < 128:  # every length a byte
        return b"\x4a%c%s%c\x0a%c%s" % (size, key, len(raw) + 2, len(raw), raw)
    return _attribute(key, _text_field(b"\x0a", text))


def _attribute(key: bytes, value: bytes) -> bytes:
    """A Span's attribute (9): a ``KeyValue`` of ``key`` (:func:`_key`) and an encoded ``AnyValue``."""
    pair = key + _len(len(value)) + value
    return b"\x4a" + _len(len(pair)) + pair


def _any(value: Any) -> bytes:
    """An ``AnyValue``: str, bool, int (int64), float, or a sequence of str."""
    kind = type(value)
    if kind is str:
        return _text_field(b"\x0a", value)
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement, as protobuf writes it
    if kind is float:
        return b"\x21" + _F64.pack(value)
    if isinstance(value, (tuple, list)):  # ArrayValue (5): each an AnyValue (1)
        array = b"".join(b"\x0a" + _len(len(item)) + item for item in map(_any, value))
        return b"\x2a" + _len(len(array)) + array
    return _text_field(b"\x0a", str(value))


class _Values(dict[Any, bytes]):
    """The attribute fields of one key by value, each encoded the first time it comes (at most
    :data:`MAX_REMEMBERED` of them, then forgotten). One type of value per instance: 1, 1.0 and True are one key."""

    __slots__ = ("key",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.key = _key(name)

    def __missing__(self, value: Any) -> bytes:
        field = _attribute(self.key, _any(value))
        if len(self) >= MAX_REMEMBERED:
            self.clear()
        self[value] = field
        return field


def _double(name: str) -> bytes:
    """The head of an attribute field of ``name`` whose value is a double (8 bytes after it)."""
    pair = _key(name) + b"\x09\x21"
    return b"\x4a" + _len(len(pair) + 8) + pair


class Encoder:
    """Writes a batch of records (:class:`RequestTrace`) as an ``ExportTraceServiceRequest``: the export thread's."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self.resource = resource
        self.scope = scope
        attributes = b"".join(b"\x0a" + field[1:] for field in (  # Resource.attributes (1)
            _attribute(_key(name), _any(value)) for name, value in resource.attributes.items()
        ))
        self.head = b"\x0a" + _len(len(attributes)) + attributes  # ResourceSpans.resource (1)
        self.schema = _text_field(b"\x1a", resource.schema_url) if resource.schema_url else b""
        named = _text_field(b"\x0a", scope.name) + (_text_field(b"\x12", scope.version) if scope.version else b"")
        self.scope_field = b"\x0a" + _len(len(named)) + named  # ScopeSpans.scope (1)
        # SERVER spans
        self.servers: dict[tuple[str, str, str], bytes] = {}  # (method, path, scheme) -> name and attributes
        self.request_id = _key("mira.request_id")
        self.server_status = _Values("http.response.status_code")
        self.address = _Values("client.address")
        self.server_error = _Values("error.type")
        # CLIENT spans
        self.parameters = [(_Values(name), _Values(name), _key(name), fields) for name, fields in PARAMETERS]
        self.attempt = _Values("mira.attempt")
        self.fallback = _Values("mira.fallback")
        self.key = _Values("mira.key")
        self.status = _Values("http.response.status_code")
        self.response_id = _key("gen_ai.response.id")
        self.response_model = _Values("gen_ai.response.model")
        self.reasons = _Values("gen_ai.response.finish_reasons")
        self.ttfb = _double("gen_ai.response.time_to_first_chunk")
        self.input = _Values("gen_ai.usage.input_tokens")
        self.output = _Values("gen_ai.usage.output_tokens")
        self.cache_read = _Values("gen_ai.usage.cache_read.input_tokens")
        self.error = _Values("error.type")
        self.cost = _double("mira.cost_usd")
        self.cost_key = _key("mira.cost_usd")

    def encode(self, records: Sequence[Any]) -> bytes:
        """The serialized ``ExportTraceServiceRequest`` of ``records``."""
        server, client = self.server, self.client
        spans = b"".join([server(record) if record[0] == SERVER else client(record) for record in records])
        scope_spans = self.scope_field + spans
        resource_spans = self.head + b"\x12" + _len(len(scope_spans)) + scope_spans + self.schema
        return b"\x0a" + _len(len(resource_spans)) + resource_spans

    def server(self, record: tuple[Any, ...]) -> bytes:
        """A SERVER span's ``Span`` field (ScopeSpans.spans, 2). (Protobuf reads a message's fields in any order.)"""
        _, trace_id, span_id, parent_id, state, start, end, method, path, scheme, request_id, status, address = record
        static = self.servers.get((method, path, scheme))
        if static is None:
            static = self.servers[(method, path, scheme)] = self.server_static(method, path, scheme)
        parts = [
            _IDS_PARENT.pack(0x0A10, trace_id >> 64, trace_id & TRACE_ID_LOW, 0x1208, span_id, 0x2208, parent_id)
            if parent_id else _IDS.pack(0x0A10, trace_id >> 64, trace_id & TRACE_ID_LOW, 0x1208, span_id),
            _KIND_TIMES.pack(0x30, _KIND_SERVER, 0x39, start, 0x41, end), static,
            _text_attribute(self.request_id, request_id), self.server_status[status], self.address[address],
        ]
        if state:
            parts.append(_text_field(b"\x1a", state))
        if status >= 500:
            parts.append(self.server_error[str(status)])
        parts.append(_TAILS[status >= 500, parent_id != 0])
        body = b"".join(parts)
        return b"\x12" + _len(len(body)) + body

    def server_static(self, method: str, path: str, scheme: str) -> bytes:
        """A SERVER span's name and the attributes its route gives."""
        if len(self.servers) >= MAX_REMEMBERED:
            self.servers.clear()
        return b"".join((
            _text_field(b"\x2a", f"{method} {path}"), _attribute(_key("http.request.method"), _any(method)),
            _attribute(_key("url.path"), _any(path)), _attribute(_key("http.route"), _any(path)),
            _attribute(_key("url.scheme"), _any(scheme)),
        ))

    def client(self, record: list[Any]) -> bytes:
        """A CLIENT span's ``Span`` field (ScopeSpans.spans, 2)."""
        (_, trace_id, span_id, parent_id, state, start, end, route, parameters, tried, fallback, key, status,
         response_id, response_model, reasons, ttfb, usage, error, cost) = record
        parts = [
            _IDS_PARENT.pack(0x0A10, trace_id >> 64, trace_id & TRACE_ID_LOW, 0x1208, span_id, 0x2208, parent_id),
            _KIND_TIMES.pack(0x30, _KIND_CLIENT, 0x39, start, 0x41, end), route.static, self.attempt[tried],
            self.fallback[fallback],
        ]
        if state:
            parts.append(_text_field(b"\x1a", state))
        if parameters:
            for ints, floats, name, fields in self.parameters:
                for field in fields:
                    value = parameters[field]
                    kind = type(value)
                    if kind is int and -INT64 <= value < INT64:
                        parts.append(ints[value])
                        break
                    if kind is float and math.isfinite(value):
                        parts.append(floats[value] if value else _attribute(name, _any(value)))  # (0.0 is -0.0)
                        break
        if key:
            parts.append(self.key[key])
        if status:
            parts.append(self.status[status])
        if response_id:
            parts.append(_text_attribute(self.response_id, response_id))
        if response_model:
            parts.append(self.response_model[response_model])
        if reasons:
            parts.append(self.reasons[tuple(reasons)])
        if ttfb is not None:
            parts.append(self.ttfb + _F64.pack(ttfb))
        if usage is not None:
            parts.append(self.input[usage.prompt])
            parts.append(self.output[usage.completion])
            if usage.cache_read:
                parts.append(self.cache_read[usage.cache_read])
        if error:
            parts.append(self.error[error])
        if cost is not None:
            parts.append(self.cost + _F64.pack(cost) if type(cost) is float else _attribute(self.cost_key, _any(cost)))
        parts.append(_TAILS[error != "", False])
        body = b"".join(parts)
        return b"\x12" + _len(len(body)) + body


def attributes_of(record: Sequence[Any]) -> dict[str, Any]:
    """A record's attributes, in the order :class:`Encoder` writes them (for :func:`readable`)."""
    if record[0] == SERVER:
        _, _, _, _, _, _, _, method, path, scheme, request_id, status, address = record
        attributes: dict[str, Any] = {
            "http.request.method": method, "url.path": path, "http.route": path, "url.scheme": scheme,
            "mira.request_id": request_id, "http.response.status_code": status, "client.address": address,
        }
        if status >= 500:
            attributes["error.type"] = str(status)
        return attributes
    route: Route = record[C_ROUTE]
    attributes = dict(route.values)
    attributes["mira.attempt"] = record[C_ATTEMPT]
    attributes["mira.fallback"] = record[C_FALLBACK]
    parameters = record[C_PARAMETERS]
    for name, fields in PARAMETERS:
        for field in fields if parameters else ():
            value = parameters[field]
            if type(value) is int and -INT64 <= value < INT64 or type(value) is float and math.isfinite(value):
                attributes[name] = value
                break
    optional = (
        ("mira.key", record[C_KEY]), ("http.response.status_code", record[C_STATUS]),
        ("gen_ai.response.id", record[C_ID]), ("gen_ai.response.model", record[C_MODEL]),
        ("gen_ai.response.finish_reasons", tuple(record[C_REASONS])),
    )
    attributes.update((name, value) for name, value in optional if value)
    if record[C_TTFB] is not None:
        attributes["gen_ai.response.time_to_first_chunk"] = record[C_TTFB]
    usage = record[C_USAGE]
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.prompt
        attributes["gen_ai.usage.output_tokens"] = usage.completion
        if usage.cache_read:
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read
    if record[C_ERROR]:
        attributes["error.type"] = record[C_ERROR]
    if record[C_COST] is not None:
        attributes["mira.cost_usd"] = record[C_COST]
    return attributes


def readable(records: Sequence[Any], resource: Resource, scope: InstrumentationScope) -> list[ReadableSpan]:
    """The SDK's spans of ``records`` (for the exporter's own encoder, and the tests' comparison with it)."""
    spans = []
    for record in records:
        server = record[0] == SERVER
        trace_id, span_id, parent_id, state, start, end = record[1:7]
        trace_state = TraceState.from_header([state]) if state else None
        error = int(record[11]) >= 500 if server else bool(record[C_ERROR])
        parent = SpanContext(trace_id, parent_id, server, TraceFlags(SAMPLED)) if parent_id else None
        spans.append(ReadableSpan(
            name=f"{record[7]} {record[8]}" if server else record[C_ROUTE].name,
            context=SpanContext(trace_id, span_id, False, TraceFlags(SAMPLED), trace_state),
            parent=parent, resource=resource, attributes=attributes_of(record),
            kind=SpanKind.SERVER if server else SpanKind.CLIENT, status=Status(StatusCode.ERROR if error else StatusCode.UNSET),
            start_time=start, end_time=end, instrumentation_scope=scope,
        ))
    return spans


# -- export: off the event loop, its failures said once a minute ------------------------------------------------


class Batches:
    """The export queue and its thread, as the SDK's batch processor does it: the thread wakes when a batch is
    full or ``delay`` seconds have passed, and sends what is queued in batches of at most ``size`` spans; the
    queue holds ``limit`` spans, dropping the oldest when full (:meth:`Tracing.finished`)."""

    def __init__(self, exporter: Exporter, delay: float, limit: int, size: int) -> None:
        self.exporter = exporter
        self.delay = delay
        self.limit = limit
        self.size = size
        self.queue: deque[Any] = deque(maxlen=limit)
        self._awake = threading.Event()
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="mira-tracing-export", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        """A batch is full: the thread sends it now."""
        if not self._awake.is_set():
            self._awake.set()

    def _run(self) -> None:
        attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))  # the export's own HTTP calls are never traced
        queue, awake = self.queue, self._awake
        while not self._stopping:
            awake.wait(self.delay)
            awake.clear()
            if self._stopping:
                break
            self._send()  # a batch (a full one, or what the delay left), then while a whole one is queued
            while len(queue) >= self.size:
                self._send()
        while queue:  # the last spans
            self._send()

    def _send(self) -> None:
        queue = self.queue
        count = min(self.size, len(queue))
        if count:
            popleft = queue.popleft
            self.exporter.export([popleft() for _ in range(count)])

    def stop(self, wait: float) -> None:
        """Send what is queued, for at most ``wait`` seconds (a stalled collector loses it), then close."""
        self._stopping = True
        self._awake.set()
        self.thread.join(wait)
        if self.thread.is_alive():
            log.warning("tracing: the collector did not take the last spans within %gs; they are dropped", wait)
            return
        self.exporter.shutdown()


class Exporter:
    """The OTLP/HTTP exporter's transport, sending what :class:`Encoder` writes (in the export thread); spans it
    cannot deliver are dropped and counted, and a warning says so at most once every :data:`WARN_EVERY` seconds."""

    def __init__(self, otlp: SpanExporter, where: str, encoder: Encoder) -> None:
        self.otlp = otlp
        self.where = where
        self.encoder = encoder
        self._lock = threading.Lock()
        self._dropped = 0
        self._last_warning = -math.inf

    def export(self, records: Sequence[Any]) -> bool:
        try:
            client = getattr(self.otlp, "_client", None)  # the exporter's HTTP client: retries, headers, TLS, gzip
            if client is None:
                spans = readable(records, self.encoder.resource, self.encoder.scope)
                sent = self.otlp.export(spans) is SpanExportResult.SUCCESS
            else:
                sent = bool(client.export(self.encoder.encode(records)).success)
        except Exception:  # the exporter's own failure must not end the export thread
            sent = False
        if not sent:
            self.dropped(len(records))
        return sent

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


def quiet_sdk_logs() -> None:
    """The SDK's own log lines (a line per failed batch) give way to :class:`Exporter`'s warning."""
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
