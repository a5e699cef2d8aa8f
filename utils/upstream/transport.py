"""The transport: the only module that knows Tornado's curl client from the inside.

Everything else of the upstream engine talks to :class:`Transport`
(start a call, is it idle, close), :class:`Transfer` (abort, pause, resume
one call) and :func:`failure_of` (what a libcurl error means). The private
names of ``tornado.curl_httpclient`` used here (``fetch_impl``,
``_process_queue``, ``_curl_setup_request``, ``_curl_create``, ``_requests``,
``_free_list``, ``_curls``, ``_CurlStreamingBuffer``, ``curl.info``) are
checked by ``tests/test_tornado_contract.py``, which says what changed when a
Tornado upgrade breaks one of them.

A lean request path through Tornado's libcurl client:

``CurlAsyncHTTPClient.fetch`` builds an ``HTTPRequest`` (some forty
attributes), copies its headers, wraps it in a defaults proxy, and then sets
about thirty libcurl options per request, most of them to libcurl's own
defaults. The node sends one kind of request only (a JSON POST to a provider),
so :class:`LeanCurlClient` accepts an :class:`UpstreamCall` through
``fetch_impl`` and sets just the options that call needs: the handle was
``reset()`` to libcurl's defaults when it came back to the pool. Everything
else (the handle pool, keep-alive connections, the multi-socket loop, the
queue, timeouts, streaming buffer with its own flow control) is Tornado's.
Any other request goes the ordinary way.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from typing import Any

import pycurl
from tornado import curl_httpclient
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import HTTPResponse
from tornado.httputil import HTTPHeaders

from utils.upstream.failures import (
    ConnectFailed,
    ConnectionLost,
    Forbidden,
    QueueTimeout,
    TimedOut,
    TlsFailed,
    TransportError,
    UpstreamFailure,
)

USER_AGENT = "mira-service-node"
# A non-streamed answer is held in memory whole: refuse one larger than this.
MAX_BUFFERED_BODY = 64 * 1024 * 1024
_PROTOCOLS = pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS
UPLOAD_BUFFER = 16 * 1024  # libcurl's minimum


class UpstreamCall:
    """One POST to an upstream, as :class:`LeanCurlClient` sets it up."""

    __slots__ = (
        "url",
        "body",
        "header_lines",
        "connect_timeout_ms",
        "timeout_ms",
        "streaming_callback",
        "prepare_curl_callback",
        "opensocket",
    )

    def __init__(
        self,
        url: str,
        body: bytes,
        header_lines: list[bytes],
        connect_timeout: float,
        timeout: float,
        prepare: Callable[[pycurl.Curl], None],
        streaming_callback: Callable[[bytes], None] | None = None,
        opensocket: Callable[[int, Any], Any] | None = None,
    ) -> None:
        self.url = url
        self.body = body
        self.header_lines = header_lines
        self.connect_timeout_ms = int(connect_timeout * 1000)
        self.timeout_ms = int(timeout * 1000)  # 0: no cap on the whole transfer
        self.streaming_callback = streaming_callback
        self.prepare_curl_callback = prepare
        self.opensocket = opensocket  # libcurl's OPENSOCKETFUNCTION: vets the address of each new connection


class TransferRefused(Exception):
    """Raised from ``prepare_curl_callback``: the caller gave up while the request waited for a slot."""


class Transfer:
    """The libcurl side of one request: lets it be aborted, paused and resumed.

    Pass :meth:`prepare` as the request's ``prepare_curl_callback``. A transfer
    is aborted from libcurl's progress callback and nudged with a pause/unpause,
    so that it ends at once even when the server is silent; a request still
    queued for a handle is refused before it reaches the server. ``owner`` is a
    set the transfer belongs to while it runs (whoever may abort it).
    """

    __slots__ = ("curl", "aborted", "started", "done", "paused", "owner", "guard")

    def __init__(self, owner: set[Transfer] | None = None) -> None:
        self.curl: pycurl.Curl | None = None
        self.aborted = False
        self.started = False
        self.done = False
        self.paused = False
        self.owner = owner
        self.guard: Any = None  # the AddressGuard of a custom provider's call (utils.upstream.guard)
        if owner is not None:
            owner.add(self)

    def prepare(self, curl: pycurl.Curl) -> None:
        """``prepare_curl_callback``: runs when a handle is free."""
        if self.aborted:
            raise TransferRefused()
        self.started = True
        self.curl = curl

    @staticmethod
    def _stop(*_: int) -> int:
        return 1  # libcurl's progress callback: non-zero ends the transfer

    def _pause(self, how: int) -> None:
        if self.curl is not None and not self.done:
            try:
                self.curl.pause(how)
            except pycurl.error:
                pass

    def abort(self) -> None:
        """Abort now: a queued request never starts, a running one ends at once."""
        self.aborted = True
        if self.curl is not None and not self.done:
            # The progress callback is set only now (a Python call from libcurl on every progress
            # update otherwise costs each request about ten of them); the nudge makes libcurl run it.
            try:
                self.curl.setopt(pycurl.NOPROGRESS, 0)
                self.curl.setopt(pycurl.XFERINFOFUNCTION, self._stop)
            except pycurl.error:
                pass
        self._pause(pycurl.PAUSE_ALL)
        self._pause(pycurl.PAUSE_CONT)

    def pause(self) -> None:
        """Stop reading from the server (backpressure)."""
        if not self.paused:
            self.paused = True
            self._pause(pycurl.PAUSE_RECV)

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._pause(pycurl.PAUSE_CONT)

    def finish(self) -> None:
        """The request is over and its handle back in the pool: never touch it again."""
        self.done = True
        self.curl = None
        if self.owner is not None:
            self.owner.discard(self)


def header_lines(headers: dict[str, str]) -> list[bytes]:
    """Request header lines as libcurl takes them, with its ``Expect``/``Pragma`` defaults off."""
    lines = []
    for name, value in headers.items():
        line = f"{name}: {value}".encode("latin-1")
        if b"\r" in line or b"\n" in line:
            raise ValueError(f"illegal characters in header {name}")
        lines.append(line)
    return [*lines, b"Expect:", b"Pragma:"]


class LeanCurlClient(CurlAsyncHTTPClient):
    """``CurlAsyncHTTPClient`` that also runs :class:`UpstreamCall` requests, set up lean.

    It also makes its libcurl handles as they are first needed, up to
    ``max_clients``, where Tornado makes them all at once: an idle node with
    UPSTREAM_MAX_CONNECTIONS=10000 would otherwise hold 10,000 handles (about
    35 MB) it may never use.
    """

    def initialize(self, max_clients: int = 10, ca_bundle: str = "", **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(max_clients=0, **kwargs)
        self._handle_limit = max_clients
        self.ca_bundle = ca_bundle  # CAINFO of every https call; "" is libcurl's default (the system store)

    def _process_queue(self) -> None:
        missing = min(len(self._requests) - len(self._free_list), self._handle_limit - len(self._curls))
        for _ in range(missing):
            curl = self._curl_create()
            self._curls.append(curl)
            self._free_list.append(curl)
        super()._process_queue()

    def _curl_setup_request(self, curl: pycurl.Curl, request: Any, buffer: BytesIO, headers: HTTPHeaders) -> None:
        if type(request) is not UpstreamCall:
            super()._curl_setup_request(curl, request, buffer, headers)
            return
        setopt = curl.setopt
        setopt(pycurl.URL, request.url)
        setopt(pycurl.PROTOCOLS, _PROTOCOLS)
        setopt(pycurl.HTTPHEADER, request.header_lines)
        setopt(pycurl.USERAGENT, USER_AGENT)
        setopt(pycurl.HEADERFUNCTION, _HeaderParser(headers).line)
        if request.streaming_callback is not None:
            streaming = curl_httpclient._CurlStreamingBuffer(self, curl, request.streaming_callback)
            curl.info["streaming_buffer"] = streaming
            setopt(pycurl.WRITEFUNCTION, streaming.write)
        else:
            setopt(pycurl.WRITEFUNCTION, _BoundedWriter(buffer).write)
        setopt(pycurl.CONNECTTIMEOUT_MS, request.connect_timeout_ms)
        if request.timeout_ms:
            setopt(pycurl.TIMEOUT_MS, request.timeout_ms)
        setopt(pycurl.POSTFIELDS, request.body)
        # The body goes from POSTFIELDS; libcurl's 64 KB upload buffer per handle is
        # memory held for nothing by every open stream (about 30 KB a stream saved).
        setopt(pycurl.UPLOAD_BUFFERSIZE, UPLOAD_BUFFER)
        setopt(pycurl.NOSIGNAL, 1)
        # Certificates are always verified (libcurl's default, kept by reset()), against the CA bundle when set.
        if self.ca_bundle:
            setopt(pycurl.CAINFO, self.ca_bundle)
        if request.opensocket is not None:
            setopt(pycurl.OPENSOCKETFUNCTION, request.opensocket)
        request.prepare_curl_callback(curl)


class _HeaderParser:
    """libcurl ``HEADERFUNCTION``: keeps the status reason and the headers the node reads."""

    __slots__ = ("headers",)
    KEEP = (b"content-type:", b"retry-after:")

    def __init__(self, headers: HTTPHeaders) -> None:
        self.headers = headers

    def line(self, raw: bytes) -> None:
        if raw[:5] == b"HTTP/":
            self.headers.clear()  # a new response (after a 100 Continue, say)
            reason = raw.split(b" ", 2)[2:]
            if reason:
                self.headers["X-Http-Reason"] = reason[0].strip().decode("latin-1")
            return
        lower = raw[:13].lower()
        for prefix in self.KEEP:
            if lower.startswith(prefix):
                name, _, value = raw.decode("latin-1").partition(":")
                self.headers.add(name.strip(), value.strip())
                return


class _BoundedWriter:
    """libcurl ``WRITEFUNCTION`` for a buffered answer, failing the transfer past the cap."""

    __slots__ = ("buffer", "size")

    def __init__(self, buffer: BytesIO) -> None:
        self.buffer = buffer
        self.size = 0

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self.size > MAX_BUFFERED_BODY:
            return 0  # libcurl ends the transfer with a write error
        return self.buffer.write(chunk)


# libcurl errors of a connection that could not be made.
CONNECT_ERRORS = frozenset((pycurl.E_COULDNT_RESOLVE_HOST, pycurl.E_COULDNT_CONNECT, pycurl.E_SSL_CONNECT_ERROR))
# ... and of one that broke before a whole answer arrived (a reset keep-alive connection, say).
LOST_ERRORS = frozenset((pycurl.E_GOT_NOTHING, pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR, pycurl.E_PARTIAL_FILE))
TLS_ERRORS = frozenset((pycurl.E_PEER_FAILED_VERIFICATION, pycurl.E_SSL_CACERT_BADFILE, pycurl.E_SSL_ISSUER_ERROR))


def failure_of(response: HTTPResponse, transfer: Transfer, provider: str) -> UpstreamFailure:
    """What an attempt that got no HTTP answer (Tornado's code 599) failed of."""
    err = response.error
    errno = getattr(err, "errno", None)
    if transfer.guard is not None and transfer.guard.refused:
        return Forbidden(provider)
    if isinstance(err, TransferRefused) or transfer.aborted:
        return QueueTimeout(provider)  # dropped while it waited for a slot
    if errno == pycurl.E_OPERATION_TIMEDOUT:
        return TimedOut(provider)
    if errno in TLS_ERRORS:
        return TlsFailed(provider)
    if errno in CONNECT_ERRORS:
        return ConnectFailed(provider)
    if errno in LOST_ERRORS:
        return ConnectionLost(provider)
    return TransportError(provider, str(err) if err is not None else "")


def status_of(transfer: Transfer) -> int:
    """The HTTP status of a running transfer, read from its libcurl handle (0 when not known yet).

    Tornado queues header lines with ``add_callback`` but flushes a fast
    response's body synchronously, so the body may reach the streaming
    callback before the status line has been parsed: the handle knows.
    """
    curl = transfer.curl
    return curl.getinfo(pycurl.RESPONSE_CODE) if curl is not None else 0


class Transport:
    """The process's one libcurl client: pooled keep-alive connections, at most ``max_connections`` transfers."""

    def __init__(self, max_connections: int, ca_bundle: str = "") -> None:
        self.http = LeanCurlClient(
            force_instance=True,
            max_clients=max_connections,
            ca_bundle=ca_bundle,
            max_body_size=1 << 62,  # a stream may be arbitrarily long; buffered answers are capped by _BoundedWriter
        )

    def start(self, call: UpstreamCall, done: Callable[[HTTPResponse], None]) -> None:
        """Queue ``call``; ``done`` gets its response (code 599 for a transport failure)."""
        self.http.fetch_impl(call, done)  # type: ignore[arg-type]

    def idle(self) -> bool:
        """No transfer running or waiting for a slot."""
        http = self.http
        return not http._requests and len(http._free_list) == len(http._curls)

    def close(self) -> None:
        self.http.close()
