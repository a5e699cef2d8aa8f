"""A real OTLP/HTTP trace receiver for the tests: ``POST /v1/traces``, protobuf decoded with ``opentelemetry-proto``.

It keeps every exported span as a :class:`ReceivedSpan` (ids as hex, attributes as Python values) and every
request body as it came (to search the raw export for text that must never be in it). ``mode`` makes it a
collector that answers ``ok`` (200), refuses (``"fail"``: 503), or stalls (``"stall"``: reads the request and
never answers until it is stopped).

Run ``python -m tests.otlp_receiver --port 4318`` to see a node's spans by hand, one line each, as they arrive
(``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import signal
import threading
import zlib
from typing import Any

import tornado.web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.loopback_server import LoopbackServer

KINDS = {Span.SPAN_KIND_SERVER: "server", Span.SPAN_KIND_CLIENT: "client", Span.SPAN_KIND_INTERNAL: "internal"}


def value_of(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a Python value (an array as a tuple)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return {item.key: value_of(item.value) for item in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclasses.dataclass
class ReceivedSpan:
    """One exported span, decoded."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    trace_state: str
    attributes: dict[str, Any]
    status: int  # Status.STATUS_CODE_UNSET, _OK or _ERROR (0, 1, 2)
    start: int  # ns
    end: int
    resource: dict[str, Any]
    scope: str

    @property
    def duration(self) -> float:
        return (self.end - self.start) / 1e9


class OtlpReceiver(LoopbackServer):
    """See the module docstring."""

    thread_name = "otlp-receiver"

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.bodies: list[bytes] = []
        self.received: list[ReceivedSpan] = []
        self.posts = 0  # export requests that arrived, answered or not
        self.content_types: list[str] = []

    def make_app(self) -> tornado.web.Application:
        return tornado.web.Application([(r"/v1/traces", _TracesHandler, {"receiver": self})])

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._cond:
            return list(self.received)

    def take(self, body: bytes, content_type: str, encoding: str) -> None:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {item.key: value_of(item.value) for item in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(ReceivedSpan(
                        name=span.name,
                        kind=KINDS.get(span.kind, str(span.kind)),
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        trace_state=span.trace_state,
                        attributes={item.key: value_of(item.value) for item in span.attributes},
                        status=span.status.code,
                        start=span.start_time_unix_nano,
                        end=span.end_time_unix_nano,
                        resource=resource,
                        scope=scope_spans.scope.name,
                    ))
        with self._cond:
            self.bodies.append(body)
            self.content_types.append(content_type)
            self.received.extend(spans)
            self._cond.notify_all()

    def arrived(self) -> None:
        with self._cond:
            self.posts += 1
            self._cond.notify_all()


class _TracesHandler(tornado.web.RequestHandler):
    def initialize(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    async def post(self) -> None:
        receiver = self.receiver
        receiver.arrived()
        if receiver.mode == "stall":
            await asyncio.Event().wait()  # never answers: the test stops the receiver
        if receiver.mode == "fail":
            self.set_status(503)
            return
        receiver.take(
            self.request.body, self.request.headers.get("Content-Type", ""), self.request.headers.get("Content-Encoding", "")
        )
        self.set_header("Content-Type", "application/x-protobuf")
        self.write(ExportTraceServiceResponse().SerializeToString())


def describe(span: ReceivedSpan) -> str:
    """One line for a span: kind, name, trace, its id and its parent's, duration, attributes."""
    attributes = " ".join(f"{key}={value}" for key, value in span.attributes.items())
    return (f"{span.kind.upper():6} {span.name}  trace={span.trace_id} span={span.span_id}"
            f" parent={span.parent_span_id or '-'} {span.duration * 1000:.1f}ms  {attributes}")


def main(argv: list[str] | None = None) -> None:
    """Receive spans and print each as a line until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description="An OTLP/HTTP receiver that prints the spans it gets")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318, help="0 picks a free port")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    receiver = OtlpReceiver().start(args.port, args.host)
    print(f"OTLP/HTTP receiver on http://{args.host}:{receiver.port} (POST /v1/traces)", flush=True)
    shown = 0
    while not stop.is_set():
        receiver.wait_for(lambda r, seen=shown: len(r.received) > seen, 0.5)
        for span in receiver.spans[shown:]:
            print(describe(span), flush=True)
            shown += 1
    receiver.stop()


if __name__ == "__main__":
    main()
