"""The private parts of Tornado's curl client that ``utils/upstream/transport.py`` relies on.

The transport reaches past ``CurlAsyncHTTPClient``'s public surface in a few
places (its own queue, set-up and finish for an UpstreamCall, libcurl's
timer and socket callbacks, handles made on demand, the idle check). Each
test here pins one of those names, signatures or behaviours and fails with a
sentence saying what a Tornado upgrade changed and where the transport uses it.
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Callable
from typing import Any

import pycurl
import pytest
import tornado
from tornado import curl_httpclient
from tornado.curl_httpclient import CurlAsyncHTTPClient

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
