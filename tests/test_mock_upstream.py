"""Tests of the mock upstream itself, with the OpenAI SDK and raw sockets."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from typing import NamedTuple

import openai
import pytest

from tests.mock_upstream import Behavior, MockUpstream

MESSAGES = [{"role": "user", "content": "hi there"}]


class Reply(NamedTuple):
    """Status, headers and body of an http.client response."""

    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def up() -> Iterator[MockUpstream]:
    """A started mock, stopped (and checked to be gone) after the test."""
    mock = MockUpstream()
    mock.start()
    yield mock
    mock.stop()
    assert not any(t.name == f"mock-upstream-{mock.port}" for t in threading.enumerate())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mock.port), timeout=1).close()


@pytest.fixture
def client(up: MockUpstream) -> Iterator[openai.OpenAI]:
    """A synchronous OpenAI client for the mock, without retries."""
    sdk = openai.OpenAI(
        base_url=up.base_url, api_key="test-key", max_retries=0, timeout=5
    )
    yield sdk
    sdk.close()


def post(up: MockUpstream, body: dict) -> Reply:
    """POST ``body`` to the mock's chat endpoint with http.client."""
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body))
        resp = conn.getresponse()
        return Reply(resp.status, dict(resp.getheaders()), resp.read())
    finally:
        conn.close()


def content(reply: Reply) -> str:
    """The assistant text of a JSON chat completion reply."""
    return json.loads(reply.body)["choices"][0]["message"]["content"]


def send_raw(up: MockUpstream, body: dict) -> socket.socket:
    """Send a chat request on a raw socket and return the socket."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", up.port), timeout=5)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: mock\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Read from ``sock`` until the peer closes it."""
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    sock.close()
    return b"".join(parts)


def test_json_completion_is_recorded(up: MockUpstream, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="m1", messages=MESSAGES, temperature=0.5
    )
    assert reply.choices[0].message.content == "Hello from mock"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "m1"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    [rec] = up.requests
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.json["temperature"] == 0.5
    assert rec.headers["authorization"] == "Bearer test-key"
    assert json.loads(rec.body) == rec.json
    assert rec.finished_at is not None and rec.finished_at >= rec.received_at
    assert rec.closed_at is None
    assert (up.in_flight, up.max_in_flight) == (0, 1)


def test_stream_reassembles_content(up: MockUpstream, client: openai.OpenAI) -> None:
    up.set_behavior("m1", Behavior(content="abcdefg", chunks=3, chunk_padding=2))
    stream = client.chat.completions.create(
        model="m1",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas == ["abcxx", "dexx", "fgxx"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    # as OpenAI does: usage comes in a chunk of its own, with no choices
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    [rec] = up.requests
    assert rec.chunks_sent == 6 and len(rec.sent_times) == 6  # 3 deltas, final, usage, [DONE]


def test_comments_and_framing_in_raw_stream(up: MockUpstream) -> None:
    up.default = Behavior(comments=[": OPENROUTER PROCESSING"], chunks=2)
    resp = post(up, {"model": "m", "messages": MESSAGES, "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    text = resp.body.decode()
    assert text.startswith(": OPENROUTER PROCESSING\n")
    events = text.split("\n", 1)[1].split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2]) and len(events) == 5


def test_error_statuses(up: MockUpstream, client: openai.OpenAI) -> None:
    up.set_behavior("bad", Behavior(status=400, error_message="nope"))
    up.set_behavior("down", Behavior(status=503, headers={"Retry-After": "0"}))
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="bad", messages=MESSAGES)
    assert bad.value.body["message"] == "nope"
    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(model="down", messages=MESSAGES)
    assert down.value.status_code == 503
    assert down.value.response.headers["retry-after"] == "0"
    assert down.value.body["type"] == "server_error"
    resp = post(up, {"model": "bad", "messages": MESSAGES, "stream": True})
    assert resp.status == 400 and json.loads(resp.body)["error"]["message"] == "nope"


def test_json_raw_and_tool_call_bodies(up: MockUpstream, client: openai.OpenAI) -> None:
    up.push(Behavior(status=201, json_body={"anything": 1}))
    html = b"<html>bad gateway</html>"
    up.push(Behavior(status=502, raw_body=html, content_type="text/html"))
    up.push(Behavior(tool_call={"name": "verify", "arguments": '{"is_correct": tr'}))
    first = post(up, {"model": "m"})
    assert (first.status, json.loads(first.body)) == (201, {"anything": 1})
    second = post(up, {"model": "m"})
    assert second.status == 502 and second.headers["Content-Type"] == "text/html"
    assert second.body == html
    reply = client.chat.completions.create(model="m", messages=MESSAGES)
    call = reply.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_1",
        "verify",
        '{"is_correct": tr',
    )
    assert reply.choices[0].message.content is None
    assert reply.choices[0].finish_reason == "tool_calls"


def test_push_order_before_model_behaviour(up: MockUpstream) -> None:
    up.set_behavior("m", Behavior(content="per model"))
    up.push(Behavior(status=503))
    up.push(Behavior(status=429))
    statuses = [post(up, {"model": "m", "messages": MESSAGES}) for _ in range(3)]
    assert [r.status for r in statuses] == [503, 429, 200]
    assert content(statuses[2]) == "per model"
    assert up.wait_for(lambda u: u.in_flight == 0)  # the mock may still be finishing the last answer
    up.reset()
    assert up.requests == [] and up.max_in_flight == 0
    assert content(post(up, {"model": "m"})) == "Hello from mock"


def test_models_and_unknown_path(up: MockUpstream, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["mock-model"]
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
    conn.request("GET", "/nowhere")
    resp = conn.getresponse()
    assert resp.status == 404 and "error" in json.loads(resp.read())
    conn.close()


def test_drop_after_chunks_leaves_incomplete_stream(up: MockUpstream) -> None:
    up.default = Behavior(chunks=4, drop_after_chunks=2)
    raw = read_all(send_raw(up, {"model": "m", "messages": MESSAGES, "stream": True}))
    assert raw.count(b"data: {") == 2
    assert b"[DONE]" not in raw and not raw.endswith(b"0\r\n\r\n")
    [rec] = up.requests
    assert rec.chunks_sent == 2 and rec.closed_at is None


def test_drop_before_headers(up: MockUpstream) -> None:
    up.default = Behavior(drop_before_headers=True)
    assert read_all(send_raw(up, {"model": "m", "messages": MESSAGES})) == b""


def test_hang_ends_when_client_closes(up: MockUpstream) -> None:
    up.default = Behavior(hang=True)
    sock = send_raw(up, {"model": "m", "messages": MESSAGES})
    assert up.wait_for(lambda u: u.in_flight == 1)
    sock.close()
    assert up.wait_for(lambda u: u.requests[0].closed_at is not None)
    [rec] = up.requests
    assert rec.finished_at is None and up.in_flight == 0


def test_hang_after_chunks_goes_silent(up: MockUpstream) -> None:
    up.default = Behavior(hang_after_chunks=1)
    sock = send_raw(up, {"model": "m", "messages": MESSAGES, "stream": True})
    assert up.wait_for(lambda u: u.requests[0].chunks_sent == 1)
    sock.close()
    assert up.wait_for(lambda u: u.requests[0].closed_at is not None)
    assert up.requests[0].chunks_sent == 1


def test_max_in_flight_with_threads(up: MockUpstream) -> None:
    up.default = Behavior(hang=True)
    conns = [
        http.client.HTTPConnection("127.0.0.1", up.port, timeout=5) for _ in range(4)
    ]
    errors: list[BaseException] = []

    def call(conn: http.client.HTTPConnection) -> None:
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": "m"}))
        try:
            conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:  # we cut the connection
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    assert up.wait_for(lambda u: u.in_flight == 4)
    for conn in conns:
        conn.sock.shutdown(socket.SHUT_RDWR)
    for t in threads:
        t.join(5)
    for conn in conns:
        conn.close()
    assert up.wait_for(lambda u: u.in_flight == 0)
    assert up.max_in_flight == 4 and len(errors) == 4
    assert all(r.closed_at is not None for r in up.requests)


def test_stop_closes_hanging_connection() -> None:
    mock = MockUpstream().start()
    mock.default = Behavior(hang=True)
    sock = send_raw(mock, {"model": "m"})
    assert mock.wait_for(lambda u: u.in_flight == 1)
    mock.stop()
    assert read_all(sock) == b""
