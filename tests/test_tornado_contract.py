"""The private parts of Tornado that the node relies on: the curl client's, for ``utils/upstream/transport.py``,
and RequestHandler's, for ``handlers/base.py``.

The transport reaches past ``CurlAsyncHTTPClient``'s public surface in a few
places (its own queue, set-up and finish for an UpstreamCall, libcurl's
timer and socket callbacks, handles made on demand, the idle check). Each
test here pins one of those names, signatures or behaviours and fails with a
sentence saying what a Tornado upgrade changed and where the transport uses it.

``handlers/base.py`` reads two flags of RequestHandler that Tornado has no
public form of, ``_headers_written`` and ``_finished``; the tests at the end pin
them. For the status line's reason phrase it reads none: its ``write_error``
takes what ``send_error`` would have set, from public pieces (the HTTPError's
``reason``, ``send_error``'s ``reason`` argument, ``http.client.responses``),
and a test pins that the two agree.
"""

from __future__ import annotations

import collections
import http.client
import inspect
from collections.abc import Callable
from typing import Any

import pycurl
import pytest
import tornado
from tornado import curl_httpclient, httputil
from tornado.curl_httpclient import CurlAsyncHTTPClient
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, HTTPError, RequestHandler

from utils.upstream.transport import LeanCurlClient, Transport

VERSION = f"tornado {tornado.version}"


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def source(function: Callable[..., Any]) -> str:
    return inspect.getsource(function)


def test_fetch_impl_takes_a_request_and_a_callback() -> None:
    assert parameters(CurlAsyncHTTPClient.fetch_impl) == ["self", "request", "callback"], (
        f"{VERSION}: CurlAsyncHTTPClient.fetch_impl(request, callback) changed its signature;"
        " Transport.start hands it an UpstreamCall and a done callback"
    )
    assert "_requests.append" in source(CurlAsyncHTTPClient.fetch_impl), (
        f"{VERSION}: fetch_impl no longer queues into self._requests; Transport.idle reads that queue"
    )


def test_the_methods_the_lean_client_replaces_or_calls_exist() -> None:
    for name in ("_process_queue", "_curl_create", "_finish", "_finish_pending_requests", "_set_timeout",
                 "_handle_timeout", "_handle_socket", "handle_callback_exception"):
        assert callable(getattr(CurlAsyncHTTPClient, name, None)), (
            f"{VERSION}: CurlAsyncHTTPClient.{name} is gone; LeanCurlClient overrides or calls it"
        )
    assert parameters(CurlAsyncHTTPClient._process_queue) == ["self"]
    assert parameters(CurlAsyncHTTPClient._curl_create) == ["self"]
    assert parameters(CurlAsyncHTTPClient._set_timeout) == ["self", "msecs"]
    assert parameters(CurlAsyncHTTPClient._handle_socket) == ["self", "event", "fd", "multi", "data"]
    assert parameters(CurlAsyncHTTPClient._finish) == ["self", "curl", "curl_error", "curl_message"]


def test_initialize_hands_libcurl_the_overridable_timer_and_socket_callbacks() -> None:
    text = source(CurlAsyncHTTPClient.initialize)
    assert "M_TIMERFUNCTION, self._set_timeout" in text and "M_SOCKETFUNCTION, self._handle_socket" in text, (
        f"{VERSION}: initialize no longer gives libcurl self._set_timeout and self._handle_socket; LeanCurlClient's"
        " one-timer and direct add_reader versions of them would never run"
    )
    assert "self._timeout" in text and "self._multi" in text


def test_finish_pending_requests_finishes_through_finish_then_refills() -> None:
    text = source(CurlAsyncHTTPClient._finish_pending_requests)
    assert "self._finish(" in text and "self._process_queue()" in text, (
        f"{VERSION}: _finish_pending_requests no longer ends transfers with self._finish and starts queued ones with"
        " self._process_queue; LeanCurlClient overrides both"
    )


def test_close_cancels_the_timeout_and_drops_the_multi_handle() -> None:
    text = source(CurlAsyncHTTPClient.close)
    assert "remove_timeout(self._timeout)" in text and "self._multi = None" in text, (
        f"{VERSION}: close() no longer cancels self._timeout and sets self._multi to None; LeanCurlClient keeps its"
        " asyncio timer there and its queued callbacks check for a closed multi handle"
    )


def test_curl_error_carries_the_libcurl_errno() -> None:
    error = curl_httpclient.CurlError(pycurl.E_OPERATION_TIMEDOUT, "timed out")
    assert error.errno == pycurl.E_OPERATION_TIMEDOUT, (
        f"{VERSION}: CurlError(errno, message).errno is gone; failure_of maps libcurl errors by it"
    )


def test_initialize_takes_max_clients_and_max_body_size() -> None:
    names = parameters(CurlAsyncHTTPClient.initialize)
    assert "max_clients" in names and "max_body_size" in names, (
        f"{VERSION}: CurlAsyncHTTPClient.initialize lost max_clients or max_body_size; Transport passes both"
    )


@pytest.mark.gen_test
async def test_the_client_state_the_transport_reads() -> None:
    transport = Transport(max_connections=3)
    http = transport.http
    try:
        assert isinstance(http, LeanCurlClient)
        assert isinstance(http._requests, collections.deque), f"{VERSION}: CurlAsyncHTTPClient._requests is not a deque"
        assert isinstance(http._free_list, list) and isinstance(http._curls, list), (
            f"{VERSION}: CurlAsyncHTTPClient._free_list / _curls are not lists; Transport.idle compares their lengths"
        )
        assert http._curls == [], "LeanCurlClient made handles before any request (they are made on demand)"
        assert isinstance(http._curl_create(), pycurl.Curl), f"{VERSION}: _curl_create no longer returns a pycurl.Curl"
        assert http._loop is http.io_loop.asyncio_loop, f"{VERSION}: the IOLoop has no asyncio_loop"
        assert transport.idle()
    finally:
        transport.close()


# -- RequestHandler: what handlers/base.py reads -----------------------------------------------------------------


class FlagProbe(RequestHandler):
    """Records RequestHandler's ``_headers_written`` and ``_finished`` at each stage of one response."""

    seen: dict[str, tuple[bool, bool]] = {}

    def flags(self) -> tuple[bool, bool]:
        return self._headers_written, self._finished

    async def get(self) -> None:
        FlagProbe.seen["before"] = self.flags()
        self.write("part")
        await self.flush()
        FlagProbe.seen["flushed"] = self.flags()
        self.finish("rest")
        FlagProbe.seen["finished"] = self.flags()


class ReasonProbe(RequestHandler):
    """Raises or sends the error its query names; records Tornado's reason and the one base.py derives."""

    seen: dict[str, tuple[str, str]] = {}

    def get(self) -> None:
        case = self.get_argument("case")
        if case == "not-found":
            raise HTTPError(404)
        if case == "own-reason":
            raise HTTPError(400, "details", reason="Own Reason")
        if case == "unknown-status":
            raise HTTPError(499)
        self.send_error(409, reason="Told", exc_info=(ValueError, ValueError("x"), None))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        # handlers/base.py BaseHandler.write_error: the HTTPError's reason, else send_error's, else the standard phrase
        derived = (isinstance(exc, HTTPError) and exc.reason) or kwargs.get("reason") or http.client.responses.get(
            status_code, "Unknown"
        )
        ReasonProbe.seen[self.get_argument("case")] = (self._reason, derived)
        self.finish()


@pytest.mark.gen_test
async def test_the_request_handler_flags_base_py_reads() -> None:
    sock, port = bind_unused_port()
    server = HTTPServer(Application([("/flags", FlagProbe), ("/reason", ReasonProbe)]))
    server.add_sockets([sock])
    client = AsyncHTTPClient(force_instance=True)
    try:
        response = await client.fetch(f"http://127.0.0.1:{port}/flags")
        assert response.body == b"partrest"
        assert FlagProbe.seen == {"before": (False, False), "flushed": (True, False), "finished": (True, True)}, (
            f"{VERSION}: RequestHandler._headers_written (False until the status line is sent) or _finished (False until"
            f" finish()) changed: {FlagProbe.seen}; BaseHandler.finish reads the first to add Connection: close while"
            " draining, data_received and _body_timed_out read the second not to answer twice"
        )
        for case in ("not-found", "own-reason", "unknown-status", "sent"):
            await client.fetch(f"http://127.0.0.1:{port}/reason?case={case}", raise_error=False)
            tornados, derived = ReasonProbe.seen[case]
            assert tornados == derived, (
                f"{VERSION}: send_error now sets the reason {tornados!r} where BaseHandler.write_error derives {derived!r}"
                f" ({case}); the message of an error answer without one of its own is that reason"
            )
        assert httputil.responses is http.client.responses
    finally:
        client.close()
        server.stop()
        sock.close()
