"""The upstream client: every call to a provider goes through here.

One :class:`UpstreamClient` per process wraps one shared
``CurlAsyncHTTPClient`` (pooled keep-alive connections). It offers two calls:

* :meth:`UpstreamClient.complete`: a buffered call (non-streaming chat,
  verify, eval), retried on connection failures and 429/502/503/504;
* :meth:`UpstreamClient.stream`: a streamed call whose body chunks go to a
  :class:`StreamSink` as they arrive, with backpressure, retried only while
  nothing has reached the client.

Both can be cancelled through a :class:`Cancel` token (the client went away):
the libcurl transfer is aborted from its progress callback and nudged so that
even a silent upstream lets go at once (see ``utils.curl.Transfer``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import pycurl
import ujson
from tornado.httpclient import HTTPResponse

from config import Settings
from models.errors import ApiError
from models.jsonbody import json_bytes
from utils import metrics
from utils.curl import LeanCurlClient, Transfer, TransferRefused, UpstreamCall
from utils.netguard import FORBIDDEN_MESSAGE, AddressGuard
from utils.providers import Target
from utils.redact import PROCESS_REDACTOR, Redactor

log = logging.getLogger("mira.upstream")

RETRY_STATUSES = frozenset((429, 502, 503, 504))
# libcurl errors of a connection that could not be made.
CONNECT_ERRORS = frozenset((pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT, pycurl.E_SSL_CONNECT_ERROR))
# ... and of one that broke before a whole answer arrived (a reset keep-alive connection, say).
LOST_ERRORS = frozenset((pycurl.E_GOT_NOTHING, pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR, pycurl.E_PARTIAL_FILE))
# Both are connection failures: retried while nothing has reached the client. Timeouts are not.
RETRY_ERRORS = CONNECT_ERRORS | LOST_ERRORS
HIGH_WATER = 256 * 1024  # pause the upstream when this much is waiting for the client
LOW_WATER = 64 * 1024  # and resume below this
MAX_ERROR_BODY = 64 * 1024  # how much of an upstream error body is read; the transfer is ended there
MAX_ERROR_MESSAGE = 500  # characters of an upstream error message passed on (after masking)
MAX_ERROR_FIELD = 100  # characters of an upstream error's type or code passed on
MAX_RETRY_AFTER = 30.0
SHUTDOWN = "node shutting down"  # the Cancel reason of requests cut by the drain
_MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+(\s*;\s*[\w.+-]+=(\"[\w .+/-]*\"|[\w.+/-]+))*$")


def passable(status: int) -> bool:
    """Whether an upstream status can be passed on: 2xx with a body (not 204), or 4xx/5xx.

    1xx as a final answer, 204, 304 and every other 3xx (the node follows no
    redirect), and anything outside 100-599 are not answers a client can use.
    """
    return (200 <= status < 300 and status != 204) or 400 <= status <= 599


def invalid_status_error(target: Target, status: int) -> ApiError:
    return ApiError(
        502, f"{target.provider} API answered with HTTP status {status}, which the node cannot pass on",
        code="upstream_invalid_response",
    )


_media_types: dict[str, str] = {}


def media_type(raw: str | None) -> str:
    """The Content-Type of an upstream JSON answer as passed on: a plain media type, else JSON.

    Upstream header text never goes back as it is (it could carry anything);
    the few distinct values seen are remembered, so this costs a dict look-up.
    """
    if not raw:
        return "application/json"
    known = _media_types.get(raw)
    if known is None:
        known = raw if len(raw) <= 100 and _MEDIA_TYPE.match(raw) and not PROCESS_REDACTOR.found_in(raw) else "application/json"
        if len(_media_types) < 64:
            _media_types[raw] = known
    return known


def shutdown_error() -> ApiError:
    return ApiError(503, "The node is shutting down; retry on another node", code="node_shutting_down",
                    headers={"Retry-After": "1"})


def retry_after_seconds(raw: str | None) -> str | None:
    """An upstream Retry-After worth passing on, as whole seconds; an HTTP date or junk is dropped."""
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return str(min(math.ceil(seconds), 3600))


class Cancel:
    """Cancels the upstream transfers of one client request.

    The handler calls :meth:`cancel` when its client disconnects; every
    transfer started under this token is aborted and a queued one is refused
    before it reaches the upstream.
    """

    __slots__ = ("cancelled", "reason", "_transfers")

    def __init__(self) -> None:
        self.cancelled = False
        self.reason = ""
        self._transfers: set[Transfer] = set()

    def cancel(self, reason: str = "client disconnected") -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.reason = reason
        for transfer in list(self._transfers):
            transfer.abort()

    @property
    def shutting_down(self) -> bool:
        """Cancelled by the drain (SHUTDOWN_TIMEOUT ran out), not by the client."""
        return self.reason == SHUTDOWN

    def error(self) -> ApiError:
        """What a call cancelled under this token ends with: 499 (no one to tell), or 503 while shutting down."""
        if self.shutting_down:
            return shutdown_error()
        return ApiError(499, "Client closed the request", type="client_closed")


class StreamSink(Protocol):
    """Where a stream's bytes go (the request handler implements it)."""

    def begin(self) -> None:
        """Called once before the first chunk: set the streaming headers."""

    def write(self, chunk: bytes) -> None:
        """Queue bytes for the client."""

    def flush(self) -> Awaitable[None]:
        """Send what is queued; resolves when it has reached the socket."""


@dataclass
class UpstreamResponse:
    """A buffered upstream answer with a 2xx status."""

    status: int
    body: bytes
    content_type: str
    retries: int = 0


@dataclass
class StreamResult:
    """How a stream ended, for logs and metrics."""

    status: int = 200
    bytes_sent: int = 0
    chunks: int = 0
    retries: int = 0
    outcome: str = "completed"  # completed | client_aborted | upstream_failed
    error: ApiError | None = None
    ttfb: float | None = None


class _StreamState:
    """Per-attempt state of a stream: status, error body, client-side queue."""

    def __init__(self, sink: StreamSink, transfer: Transfer, result: StreamResult, started: float) -> None:
        self.sink = sink
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
            # The status is read from the handle, not from header callbacks: Tornado
            # delivers a fast response's last chunks before its queued header lines.
            curl = self.transfer.curl
            self.status = curl.getinfo(pycurl.RESPONSE_CODE) if curl is not None else 0
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
        result = self.result
        if result.chunks == 0:
            result.ttfb = time.monotonic() - self.started
            self.sink.begin()
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


class UpstreamClient:
    """The process's one way out to the providers."""

    def __init__(self, settings: Settings, redactor: Redactor) -> None:
        # libcurl's verbose trace (Tornado turns it on at DEBUG) prints request
        # headers, Authorization included: never let it run.
        logging.getLogger("tornado.curl_httpclient").setLevel(logging.INFO)
        self.settings = settings
        self.redact = redactor
        self.http = LeanCurlClient(
            force_instance=True,
            max_clients=settings.upstream_max_connections,
            max_body_size=1 << 62,  # a stream may be arbitrarily long; buffered answers are capped in utils.curl
        )

    def idle(self) -> bool:
        """No transfer running or waiting for a slot."""
        http = self.http
        return not http._requests and len(http._free_list) == len(http._curls)

    async def aclose(self, timeout: float = 1.0) -> None:
        """Close the client once aborted transfers have wound down (at most ``timeout`` s).

        Closing libcurl's multi handle under a running transfer makes Tornado
        log a traceback; aborted transfers end within a few IOLoop turns.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.idle() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.http.close()

    # -- one attempt ---------------------------------------------------------------

    def _request(
        self,
        target: Target,
        body: bytes,
        transfer: Transfer,
        stream: _StreamState | None = None,
    ) -> UpstreamCall:
        s = self.settings
        guard = None
        if target.guarded:
            guard = transfer.guard = AddressGuard()
        if stream is not None:
            # No cap on a live stream; the longest silence is bounded by the stream's watchdog.
            return UpstreamCall(
                target.url, body, target.header_lines, s.upstream_connect_timeout, 0, transfer.prepare,
                streaming_callback=stream.on_chunk, opensocket=guard,
            )
        return UpstreamCall(
            target.url, body, target.header_lines, s.upstream_connect_timeout, s.upstream_timeout, transfer.prepare,
            opensocket=guard,
        )

    async def _attempt(self, call: UpstreamCall, transfer: Transfer) -> HTTPResponse:
        """Run one call; a transport failure comes back as a 599 response.

        A call that waits for a pool slot longer than UPSTREAM_QUEUE_TIMEOUT
        is dropped (it never reaches the upstream) and answered with 503.
        """
        future: asyncio.Future[HTTPResponse] = asyncio.get_running_loop().create_future()

        def done(response: HTTPResponse) -> None:
            if not future.done():
                future.set_result(response)

        self.http.fetch_impl(call, done)  # type: ignore[arg-type]
        try:
            if not transfer.started and not future.done():
                await asyncio.wait((future,), timeout=self.settings.upstream_queue_timeout)
                if not transfer.started and not future.done():
                    transfer.abort()  # refused by prepare() if a slot frees later
                    raise ApiError(503, "No upstream connection became free in time", headers={"Retry-After": "1"})
            return await future
        finally:
            transfer.finish()

    # -- error mapping ---------------------------------------------------------------

    def _transport_error(self, target: Target, response: HTTPResponse, transfer: Transfer, cancel: Cancel | None) -> ApiError:
        """An ApiError for an attempt that got no HTTP answer (code 599)."""
        err = response.error
        errno = getattr(err, "errno", None)
        if transfer.guard is not None and transfer.guard.refused:
            return ApiError(400, FORBIDDEN_MESSAGE, param="model_provider.base_url", code="custom_provider_forbidden")
        if cancel is not None and cancel.cancelled:
            return cancel.error()
        if isinstance(err, TransferRefused) or transfer.aborted:
            return ApiError(503, "Upstream request was abandoned", headers={"Retry-After": "1"})
        if errno == pycurl.E_OPERATION_TIMEDOUT:
            return ApiError(504, f"{target.provider} API did not answer in time", code="upstream_timeout")
        if errno in CONNECT_ERRORS:
            return ApiError(502, f"Could not connect to {target.provider} API", code="upstream_unreachable")
        if errno in LOST_ERRORS:
            return ApiError(502, f"Connection to {target.provider} API was lost", code="upstream_connection_lost")
        detail = self.redact(str(err), target.api_key) if err is not None else "unknown error"
        return ApiError(502, f"Error calling {target.provider} API: {detail}", code="upstream_error")

    def status_error(self, target: Target, status: int, body: bytes, retry_after: str | None) -> ApiError:
        """The node's error for an upstream 4xx/5xx answer.

        Everything taken from the upstream's body (message, type, code) is
        masked first and cut after, so a key the upstream echoes never comes
        back, not even its head across the cut.
        """
        if not passable(status):
            return invalid_status_error(target, status)
        message, type_, code = "", None, None
        try:
            data = ujson.loads(body)
        except (ValueError, OverflowError):
            data = None
        if isinstance(data, dict):
            err = data.get("error", data)
            if isinstance(err, dict):
                message = err.get("message") or err.get("detail") or ""
                type_ = err.get("type") if isinstance(err.get("type"), str) else None
                code = err.get("code") if isinstance(err.get("code"), str) else None
            elif isinstance(err, str):
                message = err
            if not message and isinstance(data.get("detail"), str):
                message = data["detail"]
        if not isinstance(message, str) or not message:
            message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
        seconds = retry_after_seconds(retry_after) if status in (429, 503) else None
        cut = self.redact.cut
        return ApiError(
            status,
            f"Error from {target.provider} API: {cut(message, MAX_ERROR_MESSAGE, target.api_key)}",
            type=cut(type_, MAX_ERROR_FIELD, target.api_key) if type_ else ("upstream_error" if status >= 500 else None),
            code=cut(code, MAX_ERROR_FIELD, target.api_key) if code else None,
            headers={"Retry-After": seconds} if seconds else None,
        )

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER)
            except ValueError:
                pass
        base = self.settings.retry_backoff * (2**attempt)
        return base * (0.5 + random.random() / 2)

    async def _wait_to_retry(
        self, target: Target, attempt: int, error: ApiError, retry_after: str | None, cancel: Cancel | None
    ) -> None:
        """Back off before retry number ``attempt``; raise ``error`` instead if the client has gone."""
        if cancel is not None and cancel.cancelled:
            raise error
        delay = self._backoff(attempt - 1, retry_after)
        metrics.upstream_retry(target.label)
        log.info("retrying %s API (retry %d of %d) after %s in %.2fs",
                 target.provider, attempt, self.settings.upstream_retries, error.status, delay)
        await asyncio.sleep(delay)
        if cancel is not None and cancel.cancelled:
            raise cancel.error()

    # -- public calls -------------------------------------------------------------------

    async def complete(self, target: Target, body: bytes, cancel: Cancel | None = None) -> UpstreamResponse:
        """POST ``body`` and return the 2xx answer; raise :class:`ApiError` otherwise."""
        retries = self.settings.upstream_retries
        attempt = 0
        while True:
            transfer = Transfer(cancel._transfers if cancel is not None else None)
            started = time.monotonic()
            try:
                response = await self._attempt(self._request(target, body, transfer), transfer)
            except ApiError as exc:
                metrics.upstream_call(target.label, "queue_timeout", time.monotonic() - started)
                raise exc
            status = response.code
            if status == 599:
                error = self._transport_error(target, response, transfer, cancel)
                outcome = "cancelled" if error.status == 499 else "error"
                metrics.upstream_call(target.label, outcome, time.monotonic() - started)
                retryable = error.status == 502 and getattr(response.error, "errno", None) in RETRY_ERRORS
                retry_after = None
            else:
                metrics.upstream_call(target.label, str(status), time.monotonic() - started)
                if 200 <= status < 300 and status != 204:
                    content_type = media_type(response.headers.get("Content-Type"))
                    return UpstreamResponse(status, response.body or b"", content_type, retries=attempt)
                retry_after = response.headers.get("Retry-After")
                error = self.status_error(target, status, response.body or b"", retry_after)
                retryable = passable(status) and status in RETRY_STATUSES
            if not retryable or attempt >= retries:
                raise error
            attempt += 1
            await self._wait_to_retry(target, attempt, error, retry_after, cancel)

    async def complete_json(self, target: Target, payload: dict[str, Any], cancel: Cancel | None = None) -> Any:
        """:meth:`complete` for internal callers (verify, eval): JSON in, parsed JSON out."""
        body = json_bytes(payload)
        response = await self.complete(target, body, cancel)
        try:
            return ujson.loads(response.body)
        except (ValueError, OverflowError):
            raise ApiError(502, f"{target.provider} API answered with invalid JSON", code="upstream_invalid_json") from None

    async def stream(self, target: Target, body: bytes, sink: StreamSink, cancel: Cancel | None = None) -> StreamResult:
        """Relay a streamed answer to ``sink`` chunk by chunk.

        Before the first byte reaches the sink an upstream failure raises
        :class:`ApiError` (after retries) so that the handler can answer an
        ordinary JSON error. After it, failures are reported in the result
        (``outcome`` and ``error``) and the handler ends the stream.
        """
        retries = self.settings.upstream_retries
        result = StreamResult()
        attempt = 0
        while True:
            transfer = Transfer(cancel._transfers if cancel is not None else None)
            started = time.monotonic()
            state = _StreamState(sink, transfer, result, started)
            state.watch_silence(self.settings.upstream_timeout)
            try:
                response = await self._attempt(self._request(target, body, transfer, state), transfer)
            except ApiError:
                metrics.upstream_call(target.label, "queue_timeout", time.monotonic() - started)
                raise
            finally:
                if state.timer is not None:
                    state.timer.cancel()
            # the streaming buffer has delivered every chunk by now; let them reach the client
            await state.drained()
            code = response.code
            if code == 599 and state.error_capped:
                code = state.status  # an error body cut at its cap: answer the error with what came
            result.retries = attempt
            result.status = state.status or code
            elapsed = time.monotonic() - started
            if result.chunks:
                if state.client_gone or (cancel is not None and cancel.cancelled):
                    result.outcome = "client_aborted"
                elif code == 599:
                    result.outcome = "upstream_failed"
                    result.error = self._mid_stream_error(target, response, transfer, cancel, state.silent)
                outcome = "error" if result.outcome == "upstream_failed" else str(result.status)
                metrics.upstream_call(target.label, outcome, elapsed)
                return result
            if code == 599:
                if state.silent and not (cancel is not None and cancel.cancelled):
                    error = ApiError(504, f"{target.provider} API did not answer in time", code="upstream_timeout")
                else:
                    error = self._transport_error(target, response, transfer, cancel)
                metrics.upstream_call(target.label, "cancelled" if error.status == 499 else "error", elapsed)
                retryable = (
                    not state.silent and error.status == 502 and getattr(response.error, "errno", None) in RETRY_ERRORS
                )
                retry_after = None
            elif passable(code) and code < 300:
                # an empty 2xx stream: nothing to relay, nothing went wrong
                metrics.upstream_call(target.label, str(code), elapsed)
                sink.begin()
                return result
            else:
                metrics.upstream_call(target.label, str(code), elapsed)
                retry_after = response.headers.get("Retry-After")
                error = self.status_error(target, code, bytes(state.error_body), retry_after)
                retryable = passable(code) and code in RETRY_STATUSES
            if not retryable or attempt >= retries:
                raise error
            attempt += 1
            await self._wait_to_retry(target, attempt, error, retry_after, cancel)

    def _mid_stream_error(
        self, target: Target, response: HTTPResponse, transfer: Transfer, cancel: Cancel | None, silent: bool
    ) -> ApiError:
        if silent:
            silence = f"{self.settings.upstream_timeout:g}s"
            return ApiError(504, f"{target.provider} API went silent for more than {silence} mid-stream", code="upstream_timeout")
        error = self._transport_error(target, response, transfer, cancel)
        error.message = f"Stream from {target.provider} API ended early: " + error.message
        return error
