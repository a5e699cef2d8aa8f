"""Asyncio clients of the benchmark: SSE stream probes, small GETs, a JSON load loop.

:class:`StreamProbe` is a raw :class:`asyncio.Protocol` HTTP/1.1 client for
one streamed chat completion (or Messages answer: it ends at ``message_stop``). It timestamps the request and the first SSE
event with ``time.monotonic()``, decodes chunked framing, and counts, for
every ``recv`` (one ``data_received`` call), how many SSE events it
completed: an event that completes in the same ``recv`` as the one before it
arrived *coalesced* with its neighbour.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"  # Anthropic's Messages API at the node's door
MAX_ERROR_BODY = 2048


def stream_body(chunks: int, interval_ms: float, tag: str = "", model: str = "openai/gpt-4o-mini") -> bytes:
    """A streaming chat request; ``metadata`` tells the benchmark upstream how to answer.

    ``user`` says it again for a Messages provider (``anthropic/``), to which the node sends no
    ``metadata`` but the ``user`` as ``metadata.user_id``; any other provider gets both untouched.
    """
    shape = {"bench_chunks": str(chunks), "bench_interval_ms": str(interval_ms), "bench_tag": tag}
    body = {
        "model": model,
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "Count slowly from one to twenty, one number per line."},
        ],
        "temperature": 0.2,
        "user": " ".join(f"{k}={v}" for k, v in shape.items() if v),
        "metadata": shape,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def messages_stream_body(chunks: int, interval_ms: float, model: str, tag: str = "") -> bytes:
    """A streaming Messages request (``/v1/messages``); ``metadata.user_id`` tells the benchmark upstream how to answer.

    A Messages provider (``anthropic/``) gets it as it is; a chat one (``openai/``) as the chat request's ``user``.
    """
    shape = {"bench_chunks": str(chunks), "bench_interval_ms": str(interval_ms), "bench_tag": tag}
    body = {
        "model": model,
        "max_tokens": 256,
        "stream": True,
        "messages": [{"role": "user", "content": "Count slowly from one to twenty, one number per line."}],
        "metadata": {"user_id": " ".join(f"{k}={v}" for k, v in shape.items() if v)},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def post_request(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    """The bytes of one keep-alive HTTP/1.1 POST of a JSON body."""
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


class StreamProbe(asyncio.Protocol):
    """One connection carrying one streamed request, with its timings and counts."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = loop.create_future()
        self.first_event: asyncio.Future[bool] = loop.create_future()  # True: an event came; False: ended without
        self.finished: asyncio.Future[None] = loop.create_future()
        self.sent_at = 0.0
        self.first_at = 0.0
        self.closed_at = 0.0
        self.status = 0
        self.events = 0
        self.recvs_with_events = 0
        self.coalesced = 0
        self.done_seen = False
        self.error = ""
        self.complete = False
        self._head = b""
        self._in_body = False
        self._chunked = False
        self._length = -1
        self._raw = b""
        self._chunk_left = 0
        self._need_crlf = False
        self._sse = b""
        self._error_body = b""

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.complete and not self.error and not self.closed_at:
            self.error = f"connection closed by peer ({exc or 'EOF'}) after {self.events} events"
        self._end()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(self._head[:end])
            data = self._head[end + 4 :]
            self._head = b""
            self._in_body = True
        decoded = self._decode(data)
        if self.status != 200:
            self._error_body = (self._error_body + decoded)[:MAX_ERROR_BODY]
        elif decoded:
            self._count_events(decoded, now)
        if self.complete:
            if self.status != 200:
                self.error = f"HTTP {self.status}: {self._error_body[:300].decode('utf-8', 'replace')}"
            elif not self.done_seen and not self.error:
                self.error = f"stream ended without [DONE] after {self.events} events"
            self._end()

    # -- use ----------------------------------------------------------------------------

    def send(self, path: str, body: bytes) -> None:
        """Write the request and start the clock."""
        assert self.transport is not None
        self.transport.write(post_request(path, body))
        self.sent_at = time.monotonic()

    def close(self) -> None:
        """Disconnect (FIN) and note when."""
        self.closed_at = time.monotonic()
        if self.transport is not None:
            self.transport.close()
        self._end()

    @property
    def ttfb(self) -> float | None:
        """Seconds from the request to the first complete SSE event."""
        return self.first_at - self.sent_at if self.first_at else None

    # -- parsing ------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        try:
            self.status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            self.status = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True
            elif name == b"content-length":
                self._length = int(value.strip())
        if not self._chunked and self._length == 0:
            self.complete = True

    def _decode(self, data: bytes) -> bytes:
        if not self._chunked:
            if self._length >= 0:
                data = data[: self._length]
                self._length -= len(data)
                if self._length == 0:
                    self.complete = True
            return data
        buf = self._raw + data if self._raw else data
        out = []
        pos = 0
        while True:
            if self._chunk_left:
                take = min(self._chunk_left, len(buf) - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self._chunk_left -= take
                if self._chunk_left:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self._need_crlf = False
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            size = int(buf[pos:end].split(b";")[0], 16)
            pos = end + 2
            if size == 0:
                self.complete = True
                break
            self._chunk_left = size
        self._raw = buf[pos:]
        return b"".join(out)

    def _count_events(self, decoded: bytes, now: float) -> None:
        self._sse += decoded
        completed = 0
        while True:
            end = self._sse.find(b"\n\n")
            if end < 0:
                break
            event = self._sse[:end]
            self._sse = self._sse[end + 2 :]
            completed += 1
            self._on_event(event, now)
        if completed:
            self.recvs_with_events += 1
            self.coalesced += completed - 1

    def _on_event(self, event: bytes, now: float) -> None:
        self.events += 1
        if self.events == 1:
            self.first_at = now
            if not self.first_event.done():
                self.first_event.set_result(True)
        if event.startswith((b"data: [DONE]", b"event: message_stop")):  # a chat stream's end; a Messages stream's
            self.done_seen = True
        elif event.startswith((b'data: {"error"', b"event: error")) and not self.error:
            self.error = "error event: " + event[6:300].decode("utf-8", "replace")

    def _end(self) -> None:
        if not self.first_event.done():
            self.first_event.set_result(False)
        if not self.finished.done():
            self.finished.set_result(None)
        if not self.connected.done():
            self.connected.set_result(None)


async def open_probe(host: str, port: int, timeout: float = 10.0) -> StreamProbe:
    """A connected :class:`StreamProbe` (the request is not sent yet)."""
    loop = asyncio.get_running_loop()
    _, probe = await asyncio.wait_for(loop.create_connection(StreamProbe, host, port), timeout)
    return probe


async def wait_first(probe: StreamProbe, timeout: float) -> bool:
    """True once the probe has its first SSE event; False on error or timeout."""
    try:
        return await asyncio.wait_for(asyncio.shield(probe.first_event), timeout)
    except TimeoutError:
        if not probe.error:
            probe.error = f"no first event within {timeout:g}s"
        return False


async def get_json(host: str, port: int, path: str, timeout: float = 10.0) -> tuple[int, Any]:
    """GET ``path`` on a fresh connection; (status, decoded JSON body or None)."""

    async def fetch() -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await (reader.readexactly(length) if length is not None else reader.read())
        finally:
            writer.close()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, None

    return await asyncio.wait_for(fetch(), timeout)


@dataclass
class LoadResult:
    """What a JSON load run saw."""

    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)


async def json_load(host: str, port: int, path: str, body: bytes, connections: int, seconds: float) -> LoadResult:
    """Keep-alive POST loop on ``connections`` connections for ``seconds`` (used where wrk is missing)."""
    result = LoadResult()
    request = post_request(path, body, host)
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            result.errors += 1
            result.error_samples.append(f"connect: {exc}")
            return
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                await reader.readexactly(length)
                result.latencies.append(time.monotonic() - started)
                result.requests += 1
                if not head.startswith(b"HTTP/1.1 2"):
                    result.errors += 1
                    if len(result.error_samples) < 5:
                        result.error_samples.append(head.split(b"\r\n")[0].decode("latin-1"))
        except (OSError, asyncio.IncompleteReadError) as exc:
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(f"{exc.__class__.__name__}: {exc}")
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(connections))), seconds + 30)
    result.seconds = time.monotonic() - started
    return result


async def burst_first_bytes(host: str, port: int, path: str, body: bytes, count: int, timeout: float = 15.0) -> list[float]:
    """``count`` POSTs sent at once on connections opened beforehand: seconds to each answer's first byte.

    The floor of a burst: against the bare Tornado handler it is what the
    server itself costs ``count`` requests arriving together.
    """
    opened = [await asyncio.open_connection(host, port) for _ in range(count)]
    request = post_request(path, body, host)
    try:
        started = time.monotonic()
        for _, writer in opened:
            writer.write(request)

        async def first_byte(reader: asyncio.StreamReader) -> float:
            await reader.read(1)
            return time.monotonic() - started

        return list(await asyncio.wait_for(asyncio.gather(*(first_byte(r) for r, _ in opened)), timeout))
    finally:
        for _, writer in opened:
            writer.close()
