"""The private parts of Tornado's curl client that ``utils/upstream/transport.py`` relies on.

The transport reaches past ``CurlAsyncHTTPClient``'s public surface in a few
places (a lean request set-up, handles made on demand, the idle check). Each
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


def test_curl_setup_request_keeps_its_signature() -> None:
    assert parameters(CurlAsyncHTTPClient._curl_setup_request) == ["self", "curl", "request", "buffer", "headers"], (
        f"{VERSION}: _curl_setup_request(curl, request, buffer, headers) changed; LeanCurlClient overrides it"
        " to set up an UpstreamCall with the few libcurl options it needs"
    )


def test_process_queue_and_curl_create_exist() -> None:
    for name in ("_process_queue", "_curl_create", "_finish"):
        assert callable(getattr(CurlAsyncHTTPClient, name, None)), (
            f"{VERSION}: CurlAsyncHTTPClient.{name} is gone; LeanCurlClient makes its handles on demand in"
            " _process_queue with _curl_create, and relies on _finish to hand a handle back"
        )
    assert parameters(CurlAsyncHTTPClient._process_queue) == ["self"]
    assert parameters(CurlAsyncHTTPClient._curl_create) == ["self"]


def test_process_queue_gives_each_request_its_info_dict() -> None:
    text = source(CurlAsyncHTTPClient._process_queue)
    for key in ('"headers"', '"buffer"', '"streaming_buffer"', '"request"', '"callback"'):
        assert key in text, (
            f"{VERSION}: _process_queue no longer sets curl.info[{key}]; LeanCurlClient._curl_setup_request stores"
            " its streaming buffer in curl.info['streaming_buffer'] and _finish reads these keys back"
        )
    assert "self._free_list.pop()" in text and "self._curl_setup_request(" in text, (
        f"{VERSION}: _process_queue no longer takes handles from _free_list and calls _curl_setup_request"
    )


def test_finish_resets_the_handle_and_flushes_the_streaming_buffer() -> None:
    text = source(CurlAsyncHTTPClient._finish)
    assert "curl.reset()" in text, (
        f"{VERSION}: _finish no longer resets a handle before reuse; the lean set-up sets only the options a call"
        " needs and relies on every other option being back at libcurl's default"
    )
    assert 'info["streaming_buffer"]' in text and "streaming_buffer.finish()" in text, (
        f"{VERSION}: _finish no longer delivers a streaming buffer's last chunks from curl.info['streaming_buffer']"
    )


def test_streaming_buffer_takes_client_curl_and_callback() -> None:
    buffer_class = getattr(curl_httpclient, "_CurlStreamingBuffer", None)
    assert buffer_class is not None, (
        f"{VERSION}: tornado.curl_httpclient._CurlStreamingBuffer is gone; streams hand their chunks to it (it queues"
        " them for the IOLoop and pauses the transfer above 1 MB)"
    )
    assert parameters(buffer_class.__init__) == ["self", "client", "curl", "callback"], (
        f"{VERSION}: _CurlStreamingBuffer(client, curl, callback) changed its signature"
    )
    for name in ("write", "finish"):
        assert callable(getattr(buffer_class, name, None)), f"{VERSION}: _CurlStreamingBuffer.{name} is gone"


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
        assert transport.idle()
    finally:
        transport.close()
