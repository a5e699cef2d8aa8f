"""Faults a gateway meets every day: disconnects, retries, timeouts, slow readers, limits, auth, secrets."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
import ujson
from tornado.iostream import IOStream

from tests.conftest import SECRETS
from tests.helpers import RawClient, chat_body, error_of, get, post, sse_events
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test(timeout=20)


# -- client disconnects -------------------------------------------------------------------


async def test_disconnect_mid_stream_aborts_the_upstream(node_url, http_port, upstream):
    upstream.default = Behavior(chunks=10, hang_after_chunks=2)
    client = RawClient(http_port)
    await client.send("/v1/chat/completions", chat_body(stream=True))
    head = await client.read_head()
    assert head.status == 200
    while b"data:" not in head.body:
        assert await client.read_some(head)
    client.close()
    # the upstream is silent, yet it sees its connection closed within a second
    assert await upstream.await_for(lambda u: u.requests[0].closed_at is not None, timeout=1.0)


async def test_disconnect_during_a_json_request_aborts_the_upstream(node_url, http_port, upstream):
    upstream.default = Behavior(hang=True)
    client = RawClient(http_port)
    await client.send("/v1/chat/completions", chat_body())
    assert await upstream.await_for(lambda u: len(u.requests) == 1)
    client.close()
    assert await upstream.await_for(lambda u: u.requests[0].closed_at is not None, timeout=1.0)


@pytest.mark.node_env(UPSTREAM_MAX_CONNECTIONS="1")
async def test_a_queued_request_whose_client_left_never_reaches_the_upstream(node_url, http_port, upstream):
    upstream.set_behavior("slot-holder", Behavior(hang=True))
    holder = RawClient(http_port)
    await holder.send("/v1/chat/completions", chat_body("openai/slot-holder"))
    assert await upstream.await_for(lambda u: len(u.requests) == 1)
    queued = RawClient(http_port)
    await queued.send("/v1/chat/completions", chat_body("openai/queued"))
    queued.close()  # leaves while waiting for the only upstream slot
    holder.close()  # frees the slot
    assert await upstream.await_for(lambda u: u.requests[0].closed_at is not None)
    follow_up = await post(node_url + "/v1/chat/completions", chat_body("openai/after"))
    assert follow_up.code == 200
    assert [r.json["model"] for r in upstream.requests] == ["slot-holder", "after"]


@pytest.mark.node_env(UPSTREAM_MAX_CONNECTIONS="1", UPSTREAM_QUEUE_TIMEOUT="0.2")
async def test_waiting_too_long_for_an_upstream_slot_is_503(node_url, http_port, upstream):
    upstream.set_behavior("slot-holder", Behavior(hang=True))
    holder = RawClient(http_port)
    await holder.send("/v1/chat/completions", chat_body("openai/slot-holder"))
    assert await upstream.await_for(lambda u: len(u.requests) == 1)
    response = await post(node_url + "/v1/chat/completions", chat_body("openai/queued"))
    assert response.code == 503
    assert response.headers["Retry-After"]
    holder.close()
    assert await upstream.await_for(lambda u: u.requests[0].closed_at is not None)
    assert len(upstream.requests) == 1


# -- retries ------------------------------------------------------------------------------------


@pytest.mark.node_env(UPSTREAM_RETRIES="2")
@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_flaky_upstream_recovered_by_retries(node_url, upstream, status):
    upstream.push(Behavior(status=status, headers={"Retry-After": "0"}))
    upstream.push(Behavior(status=status))
    response = await post(node_url + "/v1/chat/completions", chat_body())
    assert response.code == 200
    assert len(upstream.requests) == 3


@pytest.mark.node_env(UPSTREAM_RETRIES="1")
async def test_retries_give_up_with_the_upstream_status(node_url, upstream):
    for _ in range(3):
        upstream.push(Behavior(status=503, error_message="overloaded", headers={"Retry-After": "0"}))
    response = await post(node_url + "/v1/chat/completions", chat_body(stream=True))
    assert response.code == 503
    assert error_of(response)["message"] == "Error from openai API: overloaded"
    assert len(upstream.requests) == 2


@pytest.mark.node_env(UPSTREAM_RETRIES="2")
async def test_dropped_connection_before_an_answer_is_retried(node_url, upstream):
    upstream.push(Behavior(drop_before_headers=True))
    response = await post(node_url + "/v1/chat/completions", chat_body(stream=True))
    assert response.code == 200
    assert b"data: [DONE]" in response.body
    assert len(upstream.requests) == 2


@pytest.mark.node_env(UPSTREAM_RETRIES="3")
async def test_other_4xx_are_not_retried(node_url, upstream):
    upstream.push(Behavior(status=400))
    response = await post(node_url + "/v1/chat/completions", chat_body())
    assert response.code == 400
    assert len(upstream.requests) == 1


@pytest.mark.node_env(UPSTREAM_RETRIES="3")
async def test_no_retry_once_a_byte_reached_the_client(node_url, upstream):
    upstream.default = Behavior(chunks=5, drop_after_chunks=2)
    response = await post(node_url + "/v1/chat/completions", chat_body(stream=True))
    assert response.code == 200
    events = sse_events(response.body)
    assert len(events) == 3
    error = ujson.loads(events[-1][len(b"data: "):])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "ended early" in error["message"]
    assert len(upstream.requests) == 1


# -- timeouts -----------------------------------------------------------------------------------------


@pytest.mark.node_env(UPSTREAM_TIMEOUT="0.3", UPSTREAM_RETRIES="0")
async def test_stream_silent_before_its_first_byte_is_504(node_url, upstream):
    upstream.default = Behavior(hang=True)
    response = await post(node_url + "/v1/chat/completions", chat_body(stream=True))
    assert response.code == 504
    assert response.headers["Content-Type"] == "application/json"
    assert error_of(response)["code"] == "upstream_timeout"


@pytest.mark.node_env(UPSTREAM_TIMEOUT="0.3", UPSTREAM_RETRIES="2")
async def test_stream_silent_mid_way_ends_with_an_error_event(node_url, upstream):
    upstream.default = Behavior(chunks=5, hang_after_chunks=1)
    response = await post(node_url + "/v1/chat/completions", chat_body(stream=True))
    assert response.code == 200
    events = sse_events(response.body)
    assert events[0].startswith(b"data: {")
    error = ujson.loads(events[-1][len(b"data: "):])["error"]
    assert error["code"] == "upstream_timeout"
    assert b"[DONE]" not in response.body
    assert len(upstream.requests) == 1
    assert await upstream.await_for(lambda u: u.requests[0].closed_at is not None)


@pytest.mark.node_env(UPSTREAM_TIMEOUT="0.3")
async def test_a_long_live_stream_outlasts_the_timeout(node_url, upstream):
    # 1.2 s of stream with 0.1 s gaps: UPSTREAM_TIMEOUT bounds silence, not length
    upstream.default = Behavior(chunks=12, chunk_delay=0.1)
    response = await post(node_url + "/v1/chat/completions", chat_body(stream=True))
    assert response.code == 200
    assert response.body.endswith(b"data: [DONE]\n\n")


async def test_a_stream_larger_than_tornados_default_body_limit_passes(node_url, http_port, upstream):
    # 120 MB > the 100 MB max_body_size of Tornado's client
    upstream.default = Behavior(chunks=240, chunk_padding=500_000)
    client = RawClient(http_port)
    await client.send("/v1/chat/completions", chat_body(stream=True))
    head = await client.read_head()
    total = 0
    tail = b""
    while data := await client.read_some(head):
        total += len(data)
        tail = (tail + data)[-64:]
        head.reads.clear()
    client.close()
    assert total > 120_000_000
    assert b"data: [DONE]" in tail


# -- backpressure -----------------------------------------------------------------------------------------


async def test_slow_reader_keeps_node_memory_bounded(spawn_node, upstream):
    """A 64 MB stream to a client reading slowly: the node's peak RSS grows by far less."""
    node = spawn_node({"LOG_LEVEL": "WARNING"})
    pid = node.proc.pid

    def peak_rss_kb() -> int:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM")

    warm = await post(node.url + "/v1/chat/completions", chat_body(stream=True))
    assert warm.code == 200
    before = peak_rss_kb()
    upstream.default = Behavior(chunks=128, chunk_padding=512 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", node.port))
    body = ujson.dumps(chat_body(stream=True)).encode()
    await loop.sock_sendall(sock, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    received = 0
    tail = b""
    for _ in range(200_000):  # bounded
        data = await loop.sock_recv(sock, 32 * 1024)
        if not data:
            break
        received += len(data)
        tail = (tail + data)[-64:]
        await asyncio.sleep(0.0005)  # the slow reader: about 64 MB/s at most, slower than the upstream
    sock.close()
    assert received > 64 * 1024 * 1024
    assert b"[DONE]" in tail
    grown_mb = (peak_rss_kb() - before) / 1024
    print(f"slow reader: relayed {received / 2**20:.0f} MB, node peak RSS grew by {grown_mb:.1f} MB")
    assert grown_mb < 24, f"node RSS grew by {grown_mb:.1f} MB while relaying a 64 MB stream to a slow reader"


# -- limits and access ---------------------------------------------------------------------------------------


@pytest.mark.node_env(MAX_BODY_SIZE="2000")
async def test_body_over_the_limit_is_413(node_url, upstream):
    big = chat_body(messages=[{"role": "user", "content": "x" * 5000}])
    response = await post(node_url + "/v1/chat/completions", big)
    assert response.code == 413
    assert error_of(response)["type"] == "invalid_request_error"
    small = await post(node_url + "/v1/chat/completions", chat_body())
    assert small.code == 200
    assert len(upstream.requests) == 1


@pytest.mark.node_env(MAX_BODY_SIZE="2000")
async def test_chunked_body_over_the_limit_is_413(node_url, upstream):
    from tornado.httpclient import AsyncHTTPClient

    raw = ujson.dumps(chat_body(messages=[{"role": "user", "content": "x" * 5000}])).encode()

    async def producer(write):
        for start in range(0, len(raw), 1000):
            await write(raw[start:start + 1000])

    response = await AsyncHTTPClient().fetch(
        node_url + "/v1/chat/completions", method="POST", body_producer=producer, raise_error=False,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert response.code == 413
    assert upstream.requests == []


@pytest.mark.node_env(MAX_CONCURRENT_REQUESTS="1")
async def test_over_the_concurrency_limit_is_503(node_url, http_port, upstream):
    upstream.default = Behavior(hang=True)
    holder = RawClient(http_port)
    await holder.send("/v1/chat/completions", chat_body())
    assert await upstream.await_for(lambda u: len(u.requests) == 1)
    response = await post(node_url + "/v1/chat/completions", chat_body())
    assert response.code == 503
    assert response.headers["Retry-After"] == "1"
    assert error_of(response)["code"] == "overloaded"
    assert (await get(node_url + "/health")).code == 200  # health is not counted
    holder.close()
    assert await upstream.await_for(lambda u: u.requests[0].closed_at is not None)


@pytest.mark.node_env(SERVICE_API_KEY="node-key-SECRET-42")
async def test_service_api_key(node_url, upstream):
    url = node_url + "/v1/chat/completions"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "node-key-SECRET-42"},
                    {"Authorization": "Basic node-key-SECRET-42"}):
        response = await post(url, chat_body(), headers)
        assert response.code == 401, headers
        assert error_of(response)["type"] == "authentication_error"
        assert b"node-key-SECRET-42" not in response.body
    assert (await get(node_url + "/v1/models")).code == 401
    ok = await post(url, chat_body(), {"Authorization": "Bearer node-key-SECRET-42"})
    assert ok.code == 200
    assert (await get(node_url + "/health")).code == 200
    assert len(upstream.requests) == 1
    # the node's own key is never forwarded: the provider gets the provider key
    assert upstream.requests[0].headers["authorization"] == "Bearer " + SECRETS["OPENAI_API_KEY"]


# -- secrets ------------------------------------------------------------------------------------------------------


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")  # the mock upstream is on loopback
async def test_no_secret_reaches_a_response_or_a_log(node_url, upstream, caplog):
    custom_key = "sk-custom-SECRET-9999"
    all_secrets = [*SECRETS.values(), custom_key]
    echo = " ".join(SECRETS.values())  # what a provider might echo: the configured keys
    bodies = []
    caplog.set_level(logging.DEBUG)
    upstream.push(Behavior(status=401, error_message=f"Incorrect API key provided: {echo}"))
    upstream.push(Behavior(status=500, raw_body=echo.encode(), content_type="text/plain"))
    upstream.push(Behavior(status=503, error_message=echo))
    upstream.push(Behavior(status=503, error_message=echo))
    upstream.push(Behavior(status=503, error_message=echo))
    upstream.push(Behavior(status=400, error_message=echo))
    upstream.push(Behavior(status=401, error_message=f"bad key {custom_key} {echo}"))
    upstream.push(Behavior(status=200, chunks=3, drop_after_chunks=1))
    url = node_url + "/v1/chat/completions"
    requests = [
        chat_body(),
        chat_body("anthropic/claude"),
        chat_body("groq/llama"),
        chat_body("openrouter/x/y", stream=True),
        chat_body("m", model_provider={"base_url": upstream.base_url, "api_key": custom_key}),
        chat_body("mira/llama3.1", stream=True),
        chat_body("openai/x", temperature="hot"),
        b"{broken",
        chat_body("m", model_provider={"base_url": "gopher://x", "api_key": custom_key}),
    ]
    for body in requests:
        response = await post(url, body, {"X-Request-ID": "leak-check"})
        bodies.append(bytes(response.body) + str(dict(response.headers)).encode())
    logged = caplog.text
    for secret in all_secrets:
        assert secret not in logged
        for body in bodies:
            assert secret.encode() not in body
    assert "[redacted]" in b"".join(bodies).decode()


@pytest.mark.node_env(UPSTREAM_TIMEOUT="0.3")
async def test_time_paused_for_a_slow_reader_is_not_upstream_silence(node_url, http_port, upstream):
    """The client stops reading for longer than UPSTREAM_TIMEOUT: the node pauses the upstream, and resumes."""
    upstream.default = Behavior(chunks=64, chunk_padding=256 * 1024)  # 16 MB: far more than socket buffers hold
    client = RawClient(http_port)
    await client.send("/v1/chat/completions", chat_body(stream=True))
    head = await client.read_head()
    assert head.status == 200
    # not reading: wait until the upstream has stopped being able to send (the node paused it) ...
    assert not await upstream.await_for(lambda u: u.requests[0].finished_at is not None, timeout=1.0)
    # ... then read everything: no silence error, the whole stream arrives
    total, tail = 0, b""
    while data := await client.read_some(head):
        total += len(data)
        tail = (tail + data)[-64:]
        head.reads.clear()
    client.close()
    assert total > 16 * 1024 * 1024
    assert b"data: [DONE]" in tail
    assert b"upstream_timeout" not in tail


@pytest.mark.node_env(MAX_BODY_SIZE="2000")
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_413_closes_the_connection_instead_of_reading_the_rest(node_url, http_port, upstream, framing):
    stream = IOStream(socket.socket())
    await stream.connect(("127.0.0.1", http_port))
    if framing == "chunked":
        head = b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (3000, b"x" * 3000)
    else:
        head = b"Content-Length: 1000000000\r\n\r\n" + b"x" * 3000
    await stream.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: node\r\n" + head)
    response = await stream.read_until_close()  # ends: the node closed the connection
    assert response.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in response
    assert b'"request_too_large"' in response
    assert upstream.requests == []
