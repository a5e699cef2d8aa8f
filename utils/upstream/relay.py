"""A stream's bytes on their way to the client: backpressure, the silence watchdog, first-byte bookkeeping."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Protocol

from models.errors import ApiError
from utils.upstream.providers.base import StreamWatcher
from utils.upstream.transport import Transfer, status_of
from utils.upstream.usage import Usage

HIGH_WATER = 256 * 1024  # pause the upstream when this much is waiting for the client
LOW_WATER = 64 * 1024  # and resume below this
MAX_ERROR_BODY = 64 * 1024  # how much of an upstream error body is read; the transfer is ended there


class StreamSink(Protocol):
    """Where a stream's bytes go (the request handler implements it)."""

    def begin(self, model_id: str) -> None:
        """Called once before the first chunk, with the model that answers: set the streaming headers."""

    def write(self, chunk: bytes) -> None:
        """Queue bytes for the client."""

    def flush(self) -> asyncio.Future[None]:
        """Send what is queued; the future resolves when it has reached the socket (Tornado's ``flush``)."""


@dataclass
class StreamResult:
    """How a stream ended, for logs and metrics."""

    status: int = 200
    bytes_sent: int = 0
    chunks: int = 0
    outcome: str = "completed"  # completed | client_aborted | upstream_failed
    error: ApiError | None = None
    ttfb: float | None = None
    model_id: str = ""  # the model of the route being tried (the one that answered, in the end)
    usage: Usage | None = None
    cost: float | None = None  # USD, when PRICES_FILE prices the answer


class Relay:
    """One attempt of a stream: its status, its error body, and the bytes on their way to the client.

    :meth:`on_chunk` is the transfer's ``streaming_callback``. A 2xx answer's chunks go to the sink as
    they come, one flush in flight at a time; above HIGH_WATER bytes waiting for the client the transfer
    is paused, and resumed below LOW_WATER. Another status's body is kept (up to MAX_ERROR_BODY, then the
    transfer is ended) for the error answer.
    """

    def __init__(
        self, sink: StreamSink, transfer: Transfer, result: StreamResult, started: float, usage: StreamWatcher
    ) -> None:
        self.sink = sink
        self.usage = usage
        self.transfer = transfer
        self.result = result
        self.started = started
        self.status = 0
        self.last_activity = started  # monotonic time of the upstream's last byte (or of the start)
        self.silent = False  # ended by the silence watchdog
        self.timer: asyncio.TimerHandle | None = None
        self.error_body = bytearray()
        self.error_capped = False  # the error body reached MAX_ERROR_BODY and the transfer was ended
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.flushing = False
        self.client_gone = False
        self.flush_done: asyncio.Future[None] | None = None

    def on_chunk(self, chunk: bytes) -> None:
        self.last_activity = time.monotonic()
        if not self.status:
            self.status = status_of(self.transfer)
        if not 200 <= self.status < 300:
            room = MAX_ERROR_BODY - len(self.error_body)
            self.error_body += chunk[:room]
            if len(chunk) >= room and not self.error_capped:
                # An error body without end (or just a huge one): answer with what came.
                self.error_capped = True
                self.transfer.abort()
            return
        if self.client_gone:
            return
        chunk = self.usage.feed(chunk)
        if chunk:
            self.push(chunk)

    def push(self, chunk: bytes) -> None:
        """Pass bytes on to the client (the first ones switch the response to SSE)."""
        result = self.result
        if result.chunks == 0:
            result.ttfb = time.monotonic() - self.started
            self.sink.begin(result.model_id)
        result.chunks += 1
        result.bytes_sent += len(chunk)
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if not self.flushing:
            self._flush()
        elif self.pending_bytes > HIGH_WATER:
            self.transfer.pause()

    def _flush(self) -> None:
        sink = self.sink
        for chunk in self.pending:
            sink.write(chunk)
        self.pending.clear()
        self.flushing = True
        try:
            future = sink.flush()
        except Exception:  # the connection is gone
            self._client_gone()
            return
        future.add_done_callback(self._flushed)

    def _flushed(self, future: asyncio.Future[None]) -> None:
        self.flushing = False
        if future.cancelled() or future.exception() is not None:
            self._client_gone()
            return
        self.pending_bytes = sum(len(c) for c in self.pending)
        if self.pending:
            self._flush()
        else:
            if self.pending_bytes < LOW_WATER and self.transfer.paused:
                self.transfer.resume()
                self.last_activity = time.monotonic()  # time paused by us is not the upstream's silence
            if self.flush_done is not None and not self.flush_done.done():
                self.flush_done.set_result(None)

    def _client_gone(self) -> None:
        self.client_gone = True
        self.pending.clear()
        self.transfer.abort()
        if self.flush_done is not None and not self.flush_done.done():
            self.flush_done.set_result(None)

    def watch_silence(self, timeout: float) -> asyncio.TimerHandle:
        """Abort the transfer once the upstream has sent nothing for ``timeout`` seconds.

        One timer per stream, re-armed from the last byte's time when it fires:
        a chunk costs only a clock read. Time spent waiting for a pool slot, or
        paused because the client reads slowly, is not silence.
        """
        loop = asyncio.get_running_loop()

        def check() -> None:
            if self.transfer.done:
                return
            idle = time.monotonic() - self.last_activity
            if not self.transfer.started or self.transfer.paused:
                self.timer = loop.call_later(timeout, check)
            elif idle < timeout:
                self.timer = loop.call_later(timeout - idle, check)
            else:
                self.silent = True
                self.transfer.abort()

        self.timer = loop.call_later(timeout, check)
        return self.timer

    async def drained(self) -> None:
        """Wait until everything written so far has been flushed to the client."""
        if self.client_gone or (not self.flushing and not self.pending):
            return
        self.flush_done = asyncio.get_running_loop().create_future()
        await self.flush_done
