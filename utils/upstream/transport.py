"""The transport: the only module that knows Tornado's curl client from the inside.

Everything else of the upstream engine talks to :class:`Transport`
(start a call, is it idle, close), :class:`Transfer` (abort, pause, resume
one call), :class:`Reply` (what a call came back with) and
:func:`failure_of` (what a libcurl error means). The private names of
``tornado.curl_httpclient`` used here (``fetch_impl``, ``_process_queue``,
``_finish``, ``_finish_pending_requests``, ``_set_timeout``,
``_handle_timeout``, ``_handle_socket``, ``_curl_create``, ``handle_callback_exception``,
``_requests``, ``_free_list``, ``_curls``, ``_multi``, ``_timeout``,
``curl.info``) are
checked by ``tests/test_tornado_contract.py``, which says what changed when a
Tornado upgrade breaks one of them.

A lean request path through Tornado's libcurl client. For every request,
``CurlAsyncHTTPClient`` builds an ``HTTPRequest`` (some forty attributes), a
defaults proxy, a header copy, an ``HTTPHeaders`` and a ``BytesIO``; sets
about thirty libcurl options and resets them all afterwards; reads eight
timings back and builds an ``HTTPResponse``; and re-arms an IOLoop timeout
three or four times. The node sends few kinds of request (a JSON POST to a
provider, the router client's GETs and POSTs), so :class:`LeanCurlClient`
runs every one as an :class:`UpstreamCall`, its own way, on Tornado's multi
handle, handle pool, queue and keep-alive connections:

* each libcurl handle keeps its options from one call to the next; a call
  sets only what differs from the handle's last one (usually just the body),
  and a handle is reset only after a call that changed something else (an
  abort, a pause, an address guard) or before Tornado's own path uses it;
* the answer comes back as a :class:`Reply` (status, body, the two headers
  the node reads, the libcurl error);
* libcurl's timer requests are kept to one asyncio timer, re-armed only
  when its deadline really moves, and "at once" is a ``call_soon``;
* libcurl's sockets are watched in an epoll set of their own, which is a
  single descriptor in the asyncio loop, without the loop's handle and
  selector-key objects; a socket libcurl lets go of at the end of a call
  stays in the set, idle, so a call on a kept-alive connection costs one
  ``epoll_ctl`` (a modify) per socket instead of one each way; without
  epoll, with the loop's ``add_reader`` / ``add_writer`` directly;
* a stream's chunks are handed to its streaming callback at the end of the
  loop turn, every stream's in one ``call_soon`` (libcurl is paused while
  more than STREAM_BUFFER bytes wait), where Tornado makes an
  ``add_callback`` per stream.

Tornado's own request path (``fetch`` with an ``HTTPRequest``) is not served:
every call is an :class:`UpstreamCall`.
"""

from __future__ import annotations

import asyncio
import ctypes
import select
from collections.abc import Callable
from typing import Any

import pycurl
from tornado.curl_httpclient import CurlAsyncHTTPClient, CurlError
from tornado.ioloop import IOLoop

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
# A body up to SMALL_BODY bytes goes through a send buffer of MAPPED_UPLOAD bytes: a mapping of its own, where
# only the pages the request touches are resident (see mapped_send_buffers).
SMALL_BODY = 8 * 1024
MAPPED_UPLOAD = 136 * 1024
MMAP_THRESHOLD = 128 * 1024  # glibc's default mmap threshold, fixed by mapped_send_buffers
_M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)
# A stream's chunks waiting for the loop are at most this many bytes: libcurl is paused above it.
STREAM_BUFFER = 1024 * 1024
# An idle handle lets go of its last request body when it is larger than this (smaller ones stay until the next call).
KEEP_BODY = 16 * 1024
MAX_ORIGINS = 1024  # URLs whose plain-http origin is remembered (LeanCurlClient._origin)
_READ, _WRITE = 1, 2
if hasattr(select, "epoll"):
    _EPOLL_IN = select.EPOLLIN | select.EPOLLHUP  # a hang-up is for libcurl to read (and find the end)
    _EPOLL_MASKS = {_READ: select.EPOLLIN, _WRITE: select.EPOLLOUT, _READ | _WRITE: select.EPOLLIN | select.EPOLLOUT}
else:  # no epoll (not Linux): libcurl's sockets are watched with the loop's add_reader / add_writer
    _EPOLL_IN, _EPOLL_MASKS = 0, {}
_SOCKET_EVENTS = {
    pycurl.POLL_NONE: 0,
    pycurl.POLL_IN: _READ,
    pycurl.POLL_OUT: _WRITE,
    pycurl.POLL_INOUT: _READ | _WRITE,
}


class UpstreamCall:
    """One call to an upstream, as :class:`LeanCurlClient` runs it: a POST of ``body``, or a GET when it is None."""

    __slots__ = (
        "url",
        "body",
        "header_lines",
        "connect_timeout_ms",
        "timeout_ms",
        "transfer",
        "streaming_callback",
        "opensocket",
    )

    def __init__(
        self,
        url: str,
        body: bytes | None,
        header_lines: list[bytes],
        connect_timeout: float,
        timeout: float,
        transfer: Transfer,
        streaming_callback: Callable[[bytes], None] | None = None,
        opensocket: Callable[[int, Any], Any] | None = None,
    ) -> None:
        self.url = url
        self.body = body
        self.header_lines = header_lines  # one list per target: a handle that ran the same list last skips it
        self.connect_timeout_ms = int(connect_timeout * 1000)
        self.timeout_ms = int(timeout * 1000)  # 0: no cap on the whole transfer
        self.transfer = transfer
        self.streaming_callback = streaming_callback
        self.opensocket = opensocket  # libcurl's OPENSOCKETFUNCTION: vets the address of each new connection


class Reply:
    """What an :class:`UpstreamCall` came back with.

    ``code`` is the HTTP status, or 599 when no answer came (``error`` then
    says why: a ``CurlError`` with the libcurl ``errno``, or
    :class:`TransferRefused`). ``headers`` holds ``Content-Type`` and
    ``Retry-After`` when the answer had them; a streamed answer's body went to
    the streaming callback and ``body`` is empty.
    """

    __slots__ = ("code", "body", "headers", "error")

    def __init__(self, code: int, body: bytes, headers: dict[str, str], error: Exception | None = None) -> None:
        self.code = code
        self.body = body
        self.headers = headers
        self.error = error


class TransferRefused(Exception):
    """Raised when a call's turn comes: the caller gave up while it waited for a slot."""


class Transfer:
    """The libcurl side of one request: lets it be aborted, paused and resumed.

    A transfer is aborted from libcurl's progress callback and nudged with a
    pause/unpause, so that it ends at once even when the server is silent; a
    request still queued for a handle is refused before it reaches the server.
    ``owner`` is a set the transfer belongs to while it runs (whoever may
    abort it). The transport detaches the handle (``curl`` back to ``None``,
    ``done``) before it goes back to the pool, so an abort never reaches the
    next call on that handle.
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
        """The call's turn has come and ``curl`` will run it."""
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

    def _touched(self) -> None:
        """This call changed its handle beyond the options a call sets: reset it before the next one."""
        handle = getattr(self.curl, "lean", None)  # none on a handle of Tornado's own path (it resets every handle)
        if handle is not None:
            handle.dirty = True

    def abort(self) -> None:
        """Abort now: a queued request never starts, a running one ends at once."""
        self.aborted = True
        if self.curl is not None and not self.done:
            # The progress callback is set only now (a Python call from libcurl on every progress
            # update otherwise costs each request about ten of them); the nudge makes libcurl run it.
            self._touched()
            try:
                self.curl.setopt(pycurl.NOPROGRESS, 0)
                self.curl.setopt(pycurl.XFERINFOFUNCTION, self._stop)
            except pycurl.error:
                pass
        self._pause(pycurl.PAUSE_ALL)
        self._pause(pycurl.PAUSE_CONT)

    def pause(self) -> None:
        """Stop reading from the server (backpressure)."""
        if not self.paused and not self.done:
            self.paused = True
            self._touched()
            self._pause(pycurl.PAUSE_RECV)

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._pause(pycurl.PAUSE_CONT)

    def detach(self) -> None:
        """The call is over: its handle is about to go back to the pool, never touch it again."""
        self.done = True
        self.curl = None

    def finish(self) -> None:
        """The caller is done with this transfer."""
        self.detach()
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


class _Handle:
    """The lean side of one libcurl handle: what it was last set to, and the call it runs.

    Its :meth:`header` and :meth:`write` are the handle's ``HEADERFUNCTION``
    and ``WRITEFUNCTION`` for as long as it is not reset; they put what comes
    into the running call's state here.
    """

    __slots__ = (
        "client",
        "curl",
        "ready",
        "dirty",
        "url",
        "header_lines",
        "connect_timeout_ms",
        "timeout_ms",
        "call",
        "callback",
        "headers",
        "chunks",
        "size",
        "stream",
        "queued",
        "full",
        "fresh",
        "origin",
        "upload",
    )

    def __init__(self, client: LeanCurlClient, curl: pycurl.Curl) -> None:
        self.client = client
        self.curl = curl
        self.ready = False  # the options every call shares are set (false after a reset)
        self.dirty = False  # the running call changed something else: reset when it ends
        self.url: str | None = None
        self.header_lines: list[bytes] | None = None
        self.connect_timeout_ms = -1
        self.timeout_ms = 0
        self.call: UpstreamCall | None = None
        self.callback: Callable[[Reply], None] | None = None
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []  # a buffered answer's body, or a stream's chunks not yet delivered
        self.size = 0  # their bytes
        self.stream: Callable[[bytes], None] | None = None  # a streamed call's streaming_callback
        self.queued = False  # in the client's delivery queue
        self.full = False  # the stream's undelivered chunks reached STREAM_BUFFER: libcurl is paused
        self.fresh = False  # FRESH_CONNECT is set on the handle (see LeanCurlClient._fresh)
        self.origin = ""  # the running call's plain-http origin ("" for https): where its connection goes back idle
        self.upload = 0  # UPLOAD_BUFFERSIZE set on the handle (0: libcurl's default, after a reset)

    def header(self, raw: bytes) -> int | None:
        first = raw[:1]
        if first == b"H" and raw[:5] == b"HTTP/":
            self.headers = {}  # a new response (after a 100 Continue, say)
            if raw.split(None, 2)[1:2] == [b"101"]:
                # Switching Protocols, never asked for: libcurl would take it as final and wait for the
                # connection to close. End the transfer now; _finish reports the status (not passable).
                return 0
        elif first in b"CcRr" and first:
            lower = raw[:13].lower()
            if lower.startswith(b"content-type:"):
                self.headers["Content-Type"] = raw[13:].decode("latin-1").strip()
            elif lower.startswith(b"retry-after:"):
                self.headers["Retry-After"] = raw[12:].decode("latin-1").strip()
        return None

    def write(self, chunk: bytes) -> int | None:
        if self.stream is not None:
            if self.size >= STREAM_BUFFER:
                # Enough waits for the loop: libcurl keeps this chunk and offers it again once unpaused.
                self.full = True
                return pycurl.WRITEFUNC_PAUSE
            self.chunks.append(chunk)
            self.size += len(chunk)
            if not self.queued:
                self.queued = True
                self.client._deliver_later(self)
            return None
        self.size += len(chunk)
        if self.size > MAX_BUFFERED_BODY:
            return 0  # libcurl ends the transfer with a write error
        self.chunks.append(chunk)
        return None

    def deliver(self) -> None:
        """Hand a stream's waiting chunks to its streaming callback (outside libcurl's callbacks)."""
        self.queued = False
        stream = self.stream
        chunks, self.chunks, self.size = self.chunks, [], 0
        if stream is None:
            return
        for chunk in chunks:
            try:
                stream(chunk)
            except Exception:
                self.client.handle_callback_exception(stream)
        if self.full and self.call is not None:
            self.full = False
            if not self.call.transfer.paused:  # a pause for a slow client is the relay's to lift
                try:
                    self.curl.pause(pycurl.PAUSE_CONT)  # may offer the held chunk again at once
                except pycurl.error:
                    pass  # the transfer failed meanwhile: _finish reports it


class LeanCurlClient(CurlAsyncHTTPClient):
    """``CurlAsyncHTTPClient`` that also runs :class:`UpstreamCall` requests, lean (see the module's docstring).

    It also makes its libcurl handles as they are first needed, up to
    ``max_clients``, where Tornado makes them all at once: an idle node with
    UPSTREAM_MAX_CONNECTIONS=10000 would otherwise hold 10,000 handles (about
    35 MB) it may never use.
    """

    def initialize(  # type: ignore[override]
        self, max_clients: int = 10, ca_bundle: str = "", use_epoll: bool = True, **kwargs: Any
    ) -> None:
        # Set first: Tornado's initialize already runs libcurl's timer callback once.
        self._loop: asyncio.AbstractEventLoop = IOLoop.current().asyncio_loop  # type: ignore[attr-defined]
        self._soon = False  # a socket_action(TIMEOUT) is queued with call_soon
        self._timeout_at = 0.0  # the loop time libcurl's timer (self._timeout, when set) is due at
        self._delivery: list[_Handle] = []  # streams with chunks waiting for the end of the loop turn
        self._watched: dict[int, int] = {}  # fd -> the _READ/_WRITE bits libcurl wants it watched for
        self._in_epoll: set[int] = set()  # fds in the epoll set: those watched, and idle ones left there
        # Plain-http origin -> how many of its connections may be idle in libcurl's pool (see _fresh).
        self._idle: dict[str, int] = {}
        self._origins: dict[str, str] = {}  # url -> its plain-http origin, "" for any other scheme
        # On Linux libcurl's sockets go in an epoll set of their own, which is one descriptor in the loop:
        # watching a socket is then an epoll_ctl, without the loop's handle and key objects (see _handle_socket).
        self._epoll: select.epoll | None = select.epoll() if hasattr(select, "epoll") and use_epoll else None
        if self._epoll is not None:
            self._loop.add_reader(self._epoll.fileno(), self._epoll_ready)
        super().initialize(max_clients=0, **kwargs)
        self._handle_limit = max_clients
        self.ca_bundle = ca_bundle  # CAINFO of every https call; "" is libcurl's default (the system store)
        # The send buffer of a call with a small body (or none): a mapping of its own where malloc allows it.
        self._small_upload = MAPPED_UPLOAD if mapped_send_buffers() else UPLOAD_BUFFER

    def close(self) -> None:
        for fd in list(self._watched):
            self._unwatch(fd)
        for fd in list(self._in_epoll):
            self._leave_epoll(fd)
        super().close()
        if self._epoll is not None:
            self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None

    def fetch(self, request: Any, raise_error: bool = True, **kwargs: Any) -> Any:
        """Tornado's own request path is not served here: start an :class:`UpstreamCall` with :meth:`Transport.start`."""
        raise TypeError("LeanCurlClient runs UpstreamCall objects only (Transport.start), not Tornado's fetch()")

    def _curl_create(self) -> pycurl.Curl:
        curl = super()._curl_create()
        curl.lean = _Handle(self, curl)
        return curl

    def _deliver_later(self, handle: _Handle) -> None:
        """Queue a stream's chunks for the end of this loop turn: one callback delivers every stream's."""
        self._delivery.append(handle)
        if len(self._delivery) == 1:
            self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        handles, self._delivery = self._delivery, []
        for handle in handles:
            if handle.queued:
                handle.deliver()

    # -- the queue ------------------------------------------------------------------------

    def _process_queue(self) -> None:
        requests, free = self._requests, self._free_list
        while requests:
            if free:
                curl = free.pop()
            elif len(self._curls) < self._handle_limit:
                curl = self._curl_create()
                self._curls.append(curl)
            else:
                return
            call, callback, _ = requests.popleft()  # only Transport.start queues here: an UpstreamCall
            self._start_call(curl, call, callback)  # type: ignore[arg-type]

    def _start_call(self, curl: pycurl.Curl, call: UpstreamCall, callback: Callable[[Reply], None]) -> None:
        handle: _Handle = curl.lean
        setopt = curl.setopt
        if not handle.ready:
            # Options every call shares, on a handle at libcurl's defaults (FRESH_CONNECT off).
            handle.fresh = False
            setopt(pycurl.PROTOCOLS, _PROTOCOLS)
            setopt(pycurl.USERAGENT, USER_AGENT)
            setopt(pycurl.HEADERFUNCTION, handle.header)
            setopt(pycurl.WRITEFUNCTION, handle.write)
            setopt(pycurl.NOSIGNAL, 1)
            # Certificates are always verified (libcurl's default), against the CA bundle when set.
            if self.ca_bundle:
                setopt(pycurl.CAINFO, self.ca_bundle)
            handle.ready = True
            handle.url = handle.header_lines = None
            handle.connect_timeout_ms, handle.timeout_ms = -1, 0
            handle.upload = 0
        body = call.body
        # The body goes from POSTFIELDS, through libcurl's send buffer, which the handle keeps whole from its
        # first call with a body to its last: a small body's is a mapping where only the pages written are
        # resident, a larger one's the smallest libcurl takes (see mapped_send_buffers).
        upload = self._small_upload if body is None or len(body) <= SMALL_BODY else UPLOAD_BUFFER
        if upload != handle.upload:
            setopt(pycurl.UPLOAD_BUFFERSIZE, upload)  # libcurl frees the old buffer when the call starts
            handle.upload = upload
        if call.url is not handle.url:
            setopt(pycurl.URL, call.url)
            handle.url = call.url
        if call.header_lines is not handle.header_lines:
            setopt(pycurl.HTTPHEADER, call.header_lines)
            handle.header_lines = call.header_lines
        if call.connect_timeout_ms != handle.connect_timeout_ms:
            setopt(pycurl.CONNECTTIMEOUT_MS, call.connect_timeout_ms)
            handle.connect_timeout_ms = call.connect_timeout_ms
        if call.timeout_ms != handle.timeout_ms:
            setopt(pycurl.TIMEOUT_MS, call.timeout_ms)
            handle.timeout_ms = call.timeout_ms
        if body is not None:
            setopt(pycurl.POSTFIELDS, body)
        else:
            setopt(pycurl.HTTPGET, 1)  # a method of its own: the handle is reset after this call
            handle.dirty = True
        if call.opensocket is not None:
            setopt(pycurl.OPENSOCKETFUNCTION, call.opensocket)
            handle.dirty = True
        handle.call, handle.callback = call, callback
        handle.headers, handle.chunks, handle.size = {}, [], 0
        handle.stream = call.streaming_callback
        try:
            call.transfer.prepare(curl)
        except Exception as error:
            self._release(curl, handle)
            callback(Reply(599, b"", {}, error))
            return
        # Only a call that runs takes one of the idle connections counted (a refused one would leave the count low).
        origin = handle.origin = self._origin(call.url)
        fresh = self._fresh(origin)
        if fresh is not handle.fresh:
            setopt(pycurl.FRESH_CONNECT, 1 if fresh else 0)
            handle.fresh = fresh
        curl.info = handle
        self._multi.add_handle(curl)

    def _origin(self, url: str) -> str:
        """``http://host:port`` of a plain-http URL (lower case, the port always there); "" for https and anything else."""
        origin = self._origins.get(url)
        if origin is None:
            origin = ""
            if url[:7].lower() == "http://":
                end = min((i for i in (url.find("/", 7), url.find("?", 7), url.find("#", 7)) if i >= 0), default=len(url))
                origin = url[:end].lower()
                if ":" not in origin[7:].rpartition("]")[2]:
                    origin += ":80"  # http://host is http://host:80 to libcurl too
            if len(self._origins) < MAX_ORIGINS:  # a custom provider's URLs are the caller's: the memo is bounded
                self._origins[url] = origin
        return origin

    def _fresh(self, origin: str) -> bool:
        """Whether a call to ``origin`` should skip libcurl's search for a connection to reuse.

        For every new transfer libcurl walks all its connections to the
        destination, in use or idle, looking for one to reuse: with thousands
        of streams open on as many HTTP/1.1 connections to one upstream, each
        new call walked them all (bench/PERFORMANCE.md, issue 24). A plain-http
        call therefore searches only when one of its origin's connections may
        be idle: one for each call to it that ended with an answer, less one
        for each call that searched since. The count can only be too high (the
        upstream or libcurl closed an idle connection), which costs a search
        that finds nothing, as every call did before; it is never too low, so
        a connection that could be reused always is. An https call always
        searches: over HTTP/2 a busy connection takes more streams.
        """
        if not origin:
            return False
        idle = self._idle.get(origin, 0)
        if not idle:
            return True
        self._idle[origin] = idle - 1
        return False

    def _finish(self, curl: pycurl.Curl, curl_error: int | None = None, curl_message: str | None = None) -> None:
        handle: _Handle = curl.info
        curl.info = None
        self._multi.remove_handle(curl)
        call, callback = handle.call, handle.callback
        assert call is not None and callback is not None
        if handle.queued:
            handle.deliver()  # the last chunks reach the streaming callback before the reply
        if curl_error and not (curl_error == pycurl.E_WRITE_ERROR and curl.getinfo(pycurl.RESPONSE_CODE) == 101):
            reply = Reply(599, b"", handle.headers, CurlError(curl_error, curl_message or ""))
        else:
            chunks = handle.chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            reply = Reply(curl.getinfo(pycurl.RESPONSE_CODE), body, handle.headers)
        if handle.origin and reply.code != 599:
            self._idle[handle.origin] = self._idle.get(handle.origin, 0) + 1  # kept alive, unless the upstream closed it
        call.transfer.detach()
        self._release(curl, handle)
        try:
            callback(reply)
        except Exception:
            self.handle_callback_exception(callback)

    def _release(self, curl: pycurl.Curl, handle: _Handle) -> None:
        """Put a handle back in the pool: reset when its call changed it, and let go of a large body."""
        call = handle.call
        if handle.dirty:
            curl.reset()
            handle.ready = handle.dirty = False
        elif call is not None and call.body is not None and len(call.body) > KEEP_BODY:
            curl.setopt(pycurl.POSTFIELDS, b"")
        handle.call = handle.callback = handle.stream = None
        handle.chunks, handle.size, handle.queued, handle.full = [], 0, False, False
        self._free_list.append(curl)

    # -- libcurl's timer and sockets ------------------------------------------------------

    def _set_timeout(self, msecs: int) -> None:
        """libcurl's timer callback: -1 no timer, 0 act at once, else act in ``msecs``."""
        if msecs == 0:
            if not self._soon:
                self._soon = True
                self._loop.call_soon(self._timeout_soon)
            return
        loop = self._loop
        timer: asyncio.Handle | None = self._timeout  # type: ignore[assignment]
        if msecs < 0:
            if timer is not None:
                timer.cancel()
                self._timeout = None
            return
        when = loop.time() + msecs / 1000
        if timer is not None:
            if abs(self._timeout_at - when) < 0.001:
                return  # the same deadline: libcurl re-read after a timeout, or unchanged by a new call
            timer.cancel()
        # The deadline is kept here, not read back from the handle: uvloop's call_at gives a plain Handle (no
        # when()) for a deadline less than half a millisecond away, as a 1 ms one is once the process stood still
        # (a full collection, a busy CPU) between this read of the clock and call_at's own.
        self._timeout = loop.call_at(when, self._timeout_due)
        self._timeout_at = when

    def _timeout_soon(self) -> None:
        self._soon = False
        self._handle_timeout()

    def _timeout_due(self) -> None:
        self._timeout = None
        self._handle_timeout()

    def _handle_timeout(self) -> None:
        multi = self._multi
        if multi is None:
            return  # closed meanwhile
        try:
            multi.socket_action(pycurl.SOCKET_TIMEOUT, 0)
        except pycurl.error:
            pass
        self._finish_pending_requests()
        # libcurl's clock and the loop's may disagree by a little: re-read the next deadline (a no-op when unchanged).
        next_ms = multi.timeout()
        if next_ms >= 0:
            self._set_timeout(next_ms)

    def _handle_socket(self, event: int, fd: int, multi: pycurl.CurlMulti, data: Any) -> None:
        """libcurl's socket callback: watch ``fd`` for what it asks, or no longer.

        With epoll, a socket libcurl no longer wants stays in the set, idle:
        libcurl lets go of its connection's socket and of its own eventfd at
        the end of every call and asks for both again at the next one, and an
        ``epoll_ctl`` each way, twice a call, was most of what watching cost.
        Asked for again, a socket is modified in place; libcurl may close a
        socket and open another under the same number without telling, the
        kernel has then dropped the old one from the set, and the new one is
        added. An idle socket that becomes ready (a keep-alive connection the
        upstream closed) leaves the set then (:meth:`_epoll_ready`); libcurl
        finds out when it next tries the connection, as it would have anyway.

        Without epoll, a changed request is a remove and an add, as in Tornado.
        """
        epoll = self._epoll
        if epoll is not None:
            events = _SOCKET_EVENTS[event] if event != pycurl.POLL_REMOVE else 0
            if not events:
                self._watched.pop(fd, None)  # idle: stays in the set
                return
            self._watched[fd] = events
            mask = _EPOLL_MASKS[events]
            if fd in self._in_epoll:
                try:
                    epoll.modify(fd, mask)
                    return
                except FileNotFoundError:  # closed since: a new socket under the old number
                    pass
            epoll.register(fd, mask)
            self._in_epoll.add(fd)
            return
        if fd in self._watched:
            self._unwatch(fd)
        if event == pycurl.POLL_REMOVE:
            return
        events = _SOCKET_EVENTS[event]
        if not events:
            return
        self._watched[fd] = events
        if events & _READ:
            self._loop.add_reader(fd, self._socket_ready, fd, pycurl.CSELECT_IN)
        if events & _WRITE:
            self._loop.add_writer(fd, self._socket_ready, fd, pycurl.CSELECT_OUT)

    def _unwatch(self, fd: int) -> None:
        """Stop watching ``fd`` for libcurl (with epoll, it leaves the set too)."""
        events = self._watched.pop(fd)
        if self._epoll is not None:
            self._leave_epoll(fd)
            return
        if events & _READ:
            self._loop.remove_reader(fd)
        if events & _WRITE:
            self._loop.remove_writer(fd)

    def _leave_epoll(self, fd: int) -> None:
        self._in_epoll.discard(fd)
        epoll = self._epoll
        if epoll is not None:
            try:
                epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # closed meanwhile: the kernel has dropped it

    def _socket_ready(self, fd: int, action: int) -> None:
        multi = self._multi
        if multi is None:
            return
        try:
            multi.socket_action(fd, action)
        except pycurl.error:
            pass
        self._finish_pending_requests()

    def _epoll_ready(self) -> None:
        """The epoll set of libcurl's sockets is readable: act on every socket that is ready."""
        multi, epoll = self._multi, self._epoll
        if multi is None or epoll is None:
            return
        watched = self._watched
        for fd, mask in epoll.poll(0):
            if fd not in watched:  # idle, and ready all the same: leave the set (level-triggered, it would fire again)
                self._leave_epoll(fd)
                continue
            action = 0
            if mask & _EPOLL_IN:
                action |= pycurl.CSELECT_IN
            if mask & select.EPOLLOUT:
                action |= pycurl.CSELECT_OUT
            if mask & select.EPOLLERR:
                action |= pycurl.CSELECT_ERR
            try:
                multi.socket_action(fd, action)
            except pycurl.error:
                pass
        self._finish_pending_requests()


_mapped: bool | None = None


def mapped_send_buffers() -> bool:
    """Whether a send buffer of MAPPED_UPLOAD bytes is a mapping of its own: with glibc's malloc, told so once here.

    libcurl sends a request that has a body through a send buffer of
    UPLOAD_BUFFERSIZE bytes (16 KiB at the least), which it allocates
    (``calloc``) at a handle's first such call and keeps whole, as a spare,
    until the handle is closed: 16 KiB resident for every running stream, of
    which its request wrote one or two (bench/PERFORMANCE.md, issue 34). A
    block above malloc's mmap threshold is a mapping of its own, and a fresh
    mapping's pages, zero already, become resident only when written. glibc
    raises that threshold, though, whenever a mapped block larger than it is
    freed (up to 32 MiB): once the process had freed a 1 MiB request body, a
    136 KiB buffer would come from the heap, cleared, all of it resident. The
    threshold is therefore fixed at its default, 128 KiB, which turns the
    raising off. Any other libc (or a failed ``mallopt``): False, and every
    buffer is libcurl's smallest.
    """
    global _mapped
    if _mapped is None:
        try:
            libc = ctypes.CDLL(None)
            _mapped = hasattr(libc, "gnu_get_libc_version") and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        except (OSError, AttributeError):
            _mapped = False
    return _mapped


# libcurl's errors (errno), to the failure each one is; any other is a TransportError with libcurl's message.
CURL_FAILURES: dict[int, type[UpstreamFailure]] = {
    # no answer within the timeouts
    pycurl.E_OPERATION_TIMEDOUT: TimedOut,
    # the upstream's certificate failed verification (E_SSL_CACERT is the same number as E_PEER_FAILED_VERIFICATION)
    pycurl.E_PEER_FAILED_VERIFICATION: TlsFailed,
    pycurl.E_SSL_CACERT_BADFILE: TlsFailed,
    pycurl.E_SSL_ISSUER_ERROR: TlsFailed,
    # no connection could be made
    pycurl.E_COULDNT_RESOLVE_HOST: ConnectFailed,
    pycurl.E_COULDNT_CONNECT: ConnectFailed,
    pycurl.E_SSL_CONNECT_ERROR: ConnectFailed,
    # the connection broke before a whole answer arrived (a reset keep-alive connection, say)
    pycurl.E_GOT_NOTHING: ConnectionLost,
    pycurl.E_SEND_ERROR: ConnectionLost,
    pycurl.E_RECV_ERROR: ConnectionLost,
    pycurl.E_PARTIAL_FILE: ConnectionLost,
}


def failure_of(response: Reply, transfer: Transfer, provider: str) -> UpstreamFailure:
    """What an attempt that got no HTTP answer (Tornado's code 599) failed of.

    The address guard's refusal and a call dropped while it waited for a slot
    come first; then libcurl's errno, through :data:`CURL_FAILURES`.
    """
    err = response.error
    if transfer.guard is not None and transfer.guard.refused:
        return Forbidden(provider)
    if isinstance(err, TransferRefused) or transfer.aborted:
        return QueueTimeout(provider)  # dropped while it waited for a slot
    errno = getattr(err, "errno", None)
    kind = CURL_FAILURES.get(errno) if isinstance(errno, int) else None
    if kind is not None:
        return kind(provider)
    return TransportError(provider, str(err) if err is not None else "")


def status_of(transfer: Transfer) -> int:
    """The HTTP status of a running transfer, read from its libcurl handle (0 when not known yet)."""
    curl = transfer.curl
    return curl.getinfo(pycurl.RESPONSE_CODE) if curl is not None else 0


class Transport:
    """The process's one libcurl client: pooled keep-alive connections, at most ``max_connections`` transfers."""

    def __init__(self, max_connections: int, ca_bundle: str = "", use_epoll: bool = True) -> None:
        self.http = LeanCurlClient(
            force_instance=True,
            max_clients=max_connections,
            ca_bundle=ca_bundle,
            use_epoll=use_epoll,  # False: libcurl's sockets are watched by the loop itself (as without epoll)
            max_body_size=1 << 62,  # a stream may be arbitrarily long; buffered answers are capped by _Handle.write
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop the client runs on."""
        return self.http._loop

    def start(self, call: UpstreamCall, done: Callable[[Reply], None]) -> None:
        """Queue ``call``; ``done`` gets its :class:`Reply` (code 599 for a transport failure)."""
        self.http.fetch_impl(call, done)  # type: ignore[arg-type]

    def idle(self) -> bool:
        """No transfer running or waiting for a slot."""
        http = self.http
        return not http._requests and len(http._free_list) == len(http._curls)

    def close(self) -> None:
        self.http.close()
