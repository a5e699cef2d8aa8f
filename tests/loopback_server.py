"""A Tornado server on a loopback port, run in its own thread, for test doubles.

:class:`LoopbackServer` holds what the fake servers of the suite share: a
background thread running a fresh asyncio event loop (so a test whose own loop
is busy, or that uses synchronous clients, can never deadlock it), the bound
port and base URL, the condition guarding the recorded state, ``wait_for`` /
``await_for`` on that state, and a bounded ``stop`` that closes every
connection and joins the thread. A subclass supplies the application::

    class Echo(LoopbackServer):
        thread_name = "echo"

        def make_app(self) -> tornado.web.Application:
            return tornado.web.Application([(r"/", EchoHandler, {"server": self})])

Subclasses change recorded state under ``self._cond`` and call
``self._cond.notify_all()`` so that waiters re-check their predicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable
from typing import Any, Self

import tornado.httpserver
import tornado.httputil
import tornado.netutil
import tornado.web

STOP_TIMEOUT = 5.0
"""Seconds that start-up, closing the connections and joining the thread may each take."""


def json_or_none(request: tornado.httputil.HTTPServerRequest) -> Any:
    """The request body parsed as JSON, or None when it is empty or not JSON."""
    try:
        return json.loads(request.body) if request.body else None
    except ValueError:
        return None


class LoopbackServer:
    """Serves :meth:`make_app` from a background thread until :meth:`stop`."""

    thread_name = "loopback-server"
    """Prefix of the serving thread's name; the port is appended."""

    url_path = ""
    """Appended to ``http://127.0.0.1:PORT`` to form :attr:`base_url`."""

    def __init__(self) -> None:
        """Create a stopped server; call :meth:`start` to serve."""
        self._cond = threading.Condition(threading.RLock())
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._serving = False
        self.port = 0
        self.ssl_context: Any = None  # an ssl.SSLContext: serve https

    def make_app(self) -> tornado.web.Application:
        """Return the application to serve (called on the server's loop)."""
        raise NotImplementedError

    # ---- life cycle -------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The server's loopback URL plus :attr:`url_path`."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.url_path}"

    def start(self, port: int = 0, host: str = "127.0.0.1", ssl_context: Any = None) -> Self:
        """Bind ``host:port`` (a free port by default), serve (https with ``ssl_context``), return when ready."""
        self.ssl_context = ssl_context
        name = type(self).__name__
        if self._thread is not None:
            raise RuntimeError(f"{name} already started")
        sockets = tornado.netutil.bind_sockets(port, host, family=socket.AF_INET)
        self.port = sockets[0].getsockname()[1]
        self._ready.clear()
        self._serving = False
        self._loop = self._stop_event = None
        self._thread = threading.Thread(
            target=self._run, args=(sockets,), name=f"{self.thread_name}-{self.port}", daemon=True
        )
        self._thread.start()
        self._ready.wait(STOP_TIMEOUT)
        if not self._serving:
            self.stop()
            for sock in sockets:
                sock.close()
            raise RuntimeError(f"{name} failed to start")
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and join the thread (bounded)."""
        thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(event.set)
        thread.join(STOP_TIMEOUT)
        self._thread = None
        self._serving = False

    def __enter__(self) -> Self:
        """Start the server as a context manager."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop the server at the end of a ``with`` block."""
        self.stop()

    def _run(self, sockets: list[socket.socket]) -> None:
        """Thread body: run the server on a fresh event loop until stopped."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(sockets))
        finally:
            self._ready.set()  # start() sees self._serving still False on failure
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            asyncio.set_event_loop(None)

    async def _serve(self, sockets: list[socket.socket]) -> None:
        """Serve until told to stop, then close the listener and all connections."""
        self._stop_event = asyncio.Event()
        server = tornado.httpserver.HTTPServer(self.make_app(), ssl_options=self.ssl_context)
        server.add_sockets(sockets)
        self._serving = True
        self._ready.set()
        await self._stop_event.wait()
        server.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.close_all_connections(), STOP_TIMEOUT)

    # ---- observation ------------------------------------------------------

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(self)`` holds or ``timeout`` passes; return it.

        The predicate is re-checked on every notified change of the recorded
        state; a ``LookupError`` from it (``u.requests[0]`` before anything
        arrived) counts as "not yet".
        """

        def check() -> bool:
            try:
                return bool(predicate(self))
            except LookupError:
                return False

        with self._cond:
            return self._cond.wait_for(check, timeout)

    async def await_for(self, predicate: Callable[[Self], bool], timeout: float = 5.0) -> bool:
        """Awaitable :meth:`wait_for` for a test running its own event loop (uses an executor)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.wait_for, predicate, timeout)
