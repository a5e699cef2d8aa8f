"""The mock upstream's Anthropic Messages API (``/v1/messages``), checked with the official ``anthropic`` SDK.

Whatever the SDK parses here, the node's Anthropic client must parse too: the
SDK is the reference for what Anthropic sends. Raw HTTP checks pin the wire
format the SDK hides (event names and their order, error bodies), and send the
headers the node sends (``x-api-key``, ``anthropic-version: 2023-06-01``):
SDK 2.10 itself sends its key as ``Authorization: Bearer`` and a newer
``anthropic-version``, and the mock takes both.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple

import anthropic
import pytest
from anthropic._constants import ANTHROPIC_API_VERSION
from anthropic.types import TextBlock, ThinkingBlock, ToolUseBlock

from tests.mock_upstream import Behavior, MockUpstream

MODEL = "claude-mock-1"
MESSAGES: list[Any] = [{"role": "user", "content": "hi there"}]
API_KEY = "sk-ant-test"


class Reply(NamedTuple):
    """Status, headers (lower-case names) and body of an http.client response."""

    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture
def client(upstream: MockUpstream) -> Iterator[anthropic.Anthropic]:
    """A synchronous Anthropic client for the mock, without retries.

    The SDK appends ``/v1/messages`` to its base URL itself, so it gets the
    mock's root, not its ``/v1`` base URL.
    """
    assert upstream.base_url.endswith("/v1")
    sdk = anthropic.Anthropic(base_url=upstream.base_url[:-3], api_key=API_KEY, max_retries=0, timeout=5)
    yield sdk
    sdk.close()


def create(client: anthropic.Anthropic, **extra: Any) -> Any:
    """``messages.create`` with the usual model, max_tokens and messages."""
    return client.messages.create(**{"model": MODEL, "max_tokens": 64, "messages": MESSAGES, **extra})


def post(up: MockUpstream, body: Any, method: str = "POST") -> Reply:
    """Send ``body`` (JSON unless bytes) to the mock's ``/v1/messages`` with http.client."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
    try:
        headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}
        conn.request(method, "/v1/messages", data if method == "POST" else None, headers)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def parse_sse(raw: bytes) -> list[tuple[str, dict]]:
    """Split an Anthropic SSE body into (event name, data) pairs, checking each frame's form."""
    frames = raw.decode().split("\n\n")
    assert frames[-1] == ""
    events = []
    for frame in frames[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        name, data = event_line[7:], json.loads(data_line[6:])
        assert data["type"] == name
        events.append((name, data))
    return events


# ---- JSON answers -----------------------------------------------------------------------


def test_text_message_as_the_sdk_sends_it(upstream: MockUpstream, client: anthropic.Anthropic) -> None:
    message = create(client, metadata={"user_id": "u1"})
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    [block] = message.content
    assert isinstance(block, TextBlock) and block.text == "Hello from mock"
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (2, 3)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
    assert message._request_id is not None and message._request_id.startswith("req_")
    [rec] = upstream.requests
    assert (rec.method, rec.path) == ("POST", "/v1/messages")
    assert rec.headers["authorization"] == f"Bearer {API_KEY}"  # SDK 2.10's way; the node sends x-api-key
    assert rec.headers["anthropic-version"] == ANTHROPIC_API_VERSION
    assert rec.headers["content-type"] == "application/json"
    assert rec.json["metadata"] == {"user_id": "u1"} and rec.json["max_tokens"] == 64
    assert rec.chunks_sent == 0 and rec.closed_at is None


def test_raw_json_message_shape_and_node_headers(upstream: MockUpstream) -> None:
    upstream.default = Behavior(cache_read=7, cache_write=5)
    reply = post(upstream, {"model": MODEL, "max_tokens": 8, "messages": MESSAGES})
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    assert reply.headers["request-id"].startswith("req_")
    [rec] = upstream.requests
    assert rec.headers["x-api-key"] == API_KEY and "authorization" not in rec.headers
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert rec.headers["content-type"] == "application/json"
    body = json.loads(reply.body)
    assert set(body) == {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
    assert body["content"] == [{"type": "text", "text": "Hello from mock"}]
    assert body["usage"] == {
        "input_tokens": 2,
        "cache_creation_input_tokens": 5,
        "cache_read_input_tokens": 7,
        "output_tokens": 3,
    }


def test_tool_use_block_with_parsed_input(upstream: MockUpstream, client: anthropic.Anthropic) -> None:
    call = {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}
    upstream.push(Behavior(content="Let me check.", tool_call=call))
    upstream.push(Behavior(content="", tool_call=call))
    message = create(client, tools=[{"name": "get_weather", "input_schema": {"type": "object"}}])
    text, tool = message.content
    assert isinstance(text, TextBlock) and text.text == "Let me check."
    assert isinstance(tool, ToolUseBlock) and tool.id.startswith("toolu_mock_")
    assert (tool.name, tool.input) == ("get_weather", {"city": "Paris", "days": 2})
    assert message.stop_reason == "tool_use"
    [only] = create(client).content  # no text: the tool call alone
    assert isinstance(only, ToolUseBlock) and only.input == {"city": "Paris", "days": 2}


def test_usage_counts_system_text_blocks_and_cache(upstream: MockUpstream, client: anthropic.Anthropic) -> None:
    upstream.default = Behavior(content="one two three four", cache_read=100, cache_write=20)
    message = create(
        client,
        system=[{"type": "text", "text": "be very brief"}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "first question here"}]},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "and again"},
        ],
    )
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (3 + 3 + 2 + 2, 4)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (100, 20)
    assert create(client, system="a system prompt").usage.input_tokens == 3 + 2


@pytest.mark.parametrize("reason", ["max_tokens", "refusal", "pause_turn", "stop_sequence"])
def test_stop_reason_override(upstream: MockUpstream, client: anthropic.Anthropic, reason: str) -> None:
    upstream.default = Behavior(stop_reason=reason)
    message = create(client, stop_sequences=["STOP", "END"])
    assert message.stop_reason == reason
    assert message.stop_sequence == ("STOP" if reason == "stop_sequence" else None)


def test_thinking_block_comes_first(upstream: MockUpstream, client: anthropic.Anthropic) -> None:
    upstream.default = Behavior(thinking="Let me reason about it.", content="42")
    message = create(client, thinking={"type": "enabled", "budget_tokens": 1024})
    thinking, text = message.content
    assert isinstance(thinking, ThinkingBlock)
    assert (thinking.thinking, thinking.signature) == ("Let me reason about it.", "sig")
    assert isinstance(text, TextBlock) and text.text == "42"


def test_key_behavior_uses_x_api_key_or_bearer(upstream: MockUpstream, client: anthropic.Anthropic) -> None:
    upstream.set_behavior(MODEL, Behavior(content="per model"))
    upstream.set_key_behavior("-test", Behavior(content="per key"))
    reply = post(upstream, {"model": MODEL, "max_tokens": 8, "messages": MESSAGES})  # x-api-key
    assert json.loads(reply.body)["content"][0]["text"] == "per key"
    assert create(client).content[0].text == "per key"  # Authorization: Bearer
    upstream.reset()
    upstream.set_behavior(MODEL, Behavior(content="per model"))
    upstream.set_key_behavior("-other", Behavior(content="per key"))
    assert create(client).content[0].text == "per model"


# ---- streams ------------------------------------------------------------------------------


def test_stream_text(upstream: MockUpstream, client: anthropic.Anthropic) -> None:
    upstream.default = Behavior(content="abcdefg", chunks=3, chunk_padding=1, cache_read=4)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message()
    assert pieces == ["abcx", "dex", "fgx"]
    [block] = message.content
    assert block.type == "text" and block.text == "abcxdexfgx"
    assert (message.stop_reason, message.model) == ("end_turn", MODEL)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 1)
    assert message.usage.cache_read_input_tokens == 4
    [rec] = upstream.requests
    assert rec.json["stream"] is True
    # message_start, block start, ping, 3 deltas, block stop, message_delta, message_stop
    assert rec.chunks_sent == 9 and len(rec.sent_times) == 9


def test_stream_tool_use_input_assembled(upstream: MockUpstream, client: anthropic.Anthropic) -> None:
    arguments = '{"city": "Paris", "units": ["metric", "kelvin"]}'
    upstream.default = Behavior(content="Checking.", tool_call={"name": "get_weather", "arguments": arguments})
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "Checking."
        message = stream.get_final_message()
    text, tool = message.content
    assert text.type == "text" and text.text == "Checking."
    assert isinstance(tool, ToolUseBlock) and tool.name == "get_weather"
    assert tool.input == {"city": "Paris", "units": ["metric", "kelvin"]}
    assert message.stop_reason == "tool_use"
    events = parse_sse(bytes(upstream.requests[0].sent_bytes))
    partials = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta" and d["index"] == 1]
    assert len(partials) >= 2 and "".join(partials) == arguments  # the arguments are split across events
    [start] = [d for n, d in events if n == "content_block_start" and d["index"] == 1]
    assert start["content_block"] == {"type": "tool_use", "id": tool.id, "name": "get_weather", "input": {}}


def test_stream_thinking(upstream: MockUpstream, client: anthropic.Anthropic) -> None:
    upstream.default = Behavior(thinking="Some careful thought.", content="Done.")
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "Done."
        message = stream.get_final_message()
    thinking, text = message.content
    assert isinstance(thinking, ThinkingBlock)
    assert (thinking.thinking, thinking.signature) == ("Some careful thought.", "sig")
    assert text.type == "text" and text.text == "Done."


def test_raw_stream_event_sequence(upstream: MockUpstream) -> None:
    upstream.default = Behavior(
        content="Hi there", chunks=2, tool_call={"name": "f", "arguments": '{"a": 1}'}, cache_write=3
    )
    reply = post(upstream, {"model": MODEL, "max_tokens": 8, "messages": MESSAGES, "stream": True})
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(reply.body)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith("msg_")
    assert start["usage"] == {
        "input_tokens": 2,
        "cache_creation_input_tokens": 3,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [d["delta"] for _, d in events[3:5]] == [
        {"type": "text_delta", "text": "Hi t"},
        {"type": "text_delta", "text": "here"},
    ]
    assert events[10][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 2},
    }
    [rec] = upstream.requests
    assert bytes(rec.sent_bytes) == reply.body and rec.chunks_sent == len(events)


def test_drop_after_events(upstream: MockUpstream) -> None:
    upstream.default = Behavior(drop_after_chunks=4)
    body = json.dumps({"model": MODEL, "max_tokens": 8, "messages": MESSAGES, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", upstream.port), timeout=5)
    head = f"POST /v1/messages HTTP/1.1\r\nHost: mock\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    sock.close()
    raw = b"".join(parts)
    assert raw.count(b"event: ") == 4 and b"message_stop" not in raw
    [rec] = upstream.requests
    assert rec.chunks_sent == 4


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.APIStatusError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_error_statuses_raise_typed_errors(
    upstream: MockUpstream, client: anthropic.Anthropic, status: int, error_class: type, error_type: str
) -> None:
    upstream.default = Behavior(status=status, error_message="nope")
    with pytest.raises(error_class) as caught:
        create(client)
    error: Any = caught.value
    assert error.status_code == status
    assert error.body == {"type": "error", "error": {"type": error_type, "message": "nope"}}
    assert error.type == error_type
    with pytest.raises(error_class), client.messages.stream(model=MODEL, max_tokens=8, messages=MESSAGES):
        pass
    if status == 529:
        assert isinstance(error, anthropic.InternalServerError)


def test_anthropic_error_shape_only_on_messages(upstream: MockUpstream) -> None:
    reply = post(upstream, b"not json")
    assert reply.status == 400
    assert json.loads(reply.body)["error"]["type"] == "invalid_request_error"
    assert json.loads(reply.body)["type"] == "error"
    assert json.loads(post(upstream, b"", method="GET").body)["error"]["type"] == "invalid_request_error"
    upstream.default = Behavior(status=429)
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    conn.request("POST", "/v1/chat/completions", json.dumps({"model": "m", "messages": MESSAGES}))
    chat = json.loads(conn.getresponse().read())
    conn.close()
    assert "type" not in chat and chat["error"]["type"] == "invalid_request_error"  # OpenAI's shape
