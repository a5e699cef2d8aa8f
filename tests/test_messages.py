"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` through real HTTP: Anthropic's Messages API at the node's door.

To ``anthropic/...`` a request is relayed as it came (body with the model's
prefix stripped, the client's ``anthropic-version`` and ``anthropic-beta``,
``?beta=true``; the answer, streams and errors byte for byte, secrets masked);
to any other provider it is translated to chat and the answer back. The
official ``anthropic`` SDK is the main client; raw HTTP where bytes, headers
or the upstream's view matter. Also here: the node's own errors in
Anthropic's shape, model aliases, sessions that keep their key of a pool, and
``GET /v1/models`` in Anthropic's shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.conftest import SECRETS
from tests.helpers import Clock, RawClient, get, post, sse_events
from tests.mock_upstream import Behavior
from utils.redact import MASK
from utils.upstream.ledger import session_key

pytestmark = pytest.mark.gen_test(timeout=30)

MESSAGES = "/v1/messages"
COUNT = "/v1/messages/count_tokens"
CHAT = "/v1/chat/completions"
RELAYED = "anthropic/claude-x"
TRANSLATED = "openai/gpt-x"
BOTH = pytest.mark.parametrize("model", [RELAYED, TRANSLATED], ids=["relayed", "translated"])
ANTHROPIC_KEY = SECRETS["ANTHROPIC_API_KEY"]
OPENAI_KEY = SECRETS["OPENAI_API_KEY"]
USER = [{"role": "user", "content": "Is the sky blue?"}]  # 4 words: the mock's prompt tokens
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_CALL = {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "days": [1, 2, 3]})}
BETAS = "context-management-2025-06-27,interleaved-thinking-2025-05-14"

# Files the node reads at start-up: written before every test (autouse), named by node_env markers.
ALIASES_FILE = Path(tempfile.gettempdir()) / f"mira-test-aliases-{os.getpid()}.json"
LIMITS_FILE = Path(tempfile.gettempdir()) / f"mira-test-messages-limits-{os.getpid()}.json"
FALLBACKS_FILE = Path(tempfile.gettempdir()) / f"mira-test-messages-fallbacks-{os.getpid()}.json"
ALIASES = {"claude-sonnet-4-6": "anthropic/claude-sonnet-4-6", "claude-haiku-4-5": "groq/llama-x"}

# A two-key pool per provider, for the session tests.
ANTHROPIC_POOL = ("sk-ant-one-SECRET-1111", "sk-ant-two-SECRET-2222")
OPENAI_POOL = ("sk-oai-one-SECRET-1111", "sk-oai-two-SECRET-2222")
POOLS = pytest.mark.node_env(ANTHROPIC_API_KEY=",".join(ANTHROPIC_POOL), OPENAI_API_KEY=",".join(OPENAI_POOL))
# A session id for each key position of a two-key pool.
SESSION_ON = {session_key(f"session-{n}", 2): f"session-{n}" for n in range(32)}
assert set(SESSION_ON) == {0, 1}


@pytest.fixture(autouse=True)
def config_files() -> Iterator[None]:
    """The alias, limits and fallbacks files (autouse: they exist before any node fixture reads its settings)."""
    ALIASES_FILE.write_text(json.dumps(ALIASES))
    LIMITS_FILE.write_text(json.dumps({"openai": {"rpm": 0}}))
    FALLBACKS_FILE.write_text(json.dumps({RELAYED: [TRANSLATED], TRANSLATED: [RELAYED]}))
    yield
    for path in (ALIASES_FILE, LIMITS_FILE, FALLBACKS_FILE):
        path.unlink(missing_ok=True)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def node_options(clock: Clock) -> dict[str, Any]:
    return {"wall_clock": clock}


def messages_body(model: str = RELAYED, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": USER, **extra}


def sdk(node_url: str, api_key: str = "unused") -> anthropic.AsyncAnthropic:
    """The anthropic SDK pointed at the node (it appends /v1/messages itself)."""
    return anthropic.AsyncAnthropic(base_url=node_url, api_key=api_key, max_retries=0)


def anthropic_error_of(response: Any) -> dict[str, Any]:
    """The ``error`` object of an Anthropic-shaped error body (asserts the shape)."""
    data = json.loads(response.body)
    assert set(data) == {"type", "error"} and data["type"] == "error", data
    error = data["error"]
    assert {"type", "message"} <= set(error) <= {"type", "message", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def events_of(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """A Messages SSE body as (event name, data) pairs, each frame checked to be ``event:`` then ``data:``."""
    out = []
    for frame in sse_events(body):
        name_line, data_line = frame.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: "), frame
        name, data = name_line[7:].decode(), json.loads(data_line[6:])
        assert data["type"] == name, frame
        out.append((name, data))
    return out


def names_of(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in events]


def only_request(upstream, path: str) -> Any:
    """The one request the mock saw, which must have gone to ``path``."""
    (seen,) = upstream.requests
    assert seen.path == path, seen.path
    return seen


def text_of(content: Any) -> str:
    """A chat message's content as text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part.get("type") == "text")


class AccessLines(logging.Handler):
    """The mock's access lines (tornado.access: the node logs to mira.access), awaitable by their text."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.lines.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, text: str, timeout: float = 5.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(text in line for line in self.lines), timeout)

    async def seen(self, text: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.wait_for, text)


@pytest.fixture
def mock_access() -> Iterator[AccessLines]:
    logger = logging.getLogger("tornado.access")
    handler, level = AccessLines(), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- the SDK, relayed and translated ---------------------------------------------------------------------------------


@BOTH
async def test_sdk_create_reads_text_usage_and_x_mira_model(node_url, upstream, model):
    async with sdk(node_url) as client:
        raw = await client.messages.with_raw_response.create(model=model, max_tokens=64, messages=USER)
    assert raw.headers["x-mira-model"] == model
    reply = await raw.parse()
    assert reply.type == "message" and reply.role == "assistant"
    assert [block.type for block in reply.content] == ["text"]
    assert reply.content[0].text == "Hello from mock"
    assert reply.stop_reason == "end_turn"
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (4, 3)


@BOTH
async def test_sdk_stream_yields_the_text_and_the_final_message(node_url, upstream, model):
    async with sdk(node_url) as client:
        async with client.messages.stream(model=model, max_tokens=64, messages=USER) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert len(pieces) == 3  # the mock's 3 chunks, one text delta each
    assert "".join(pieces) == "Hello from mock"
    assert final.content[0].text == "Hello from mock"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 3)


async def test_sdk_beta_create_passes_its_betas_and_query_on(node_url, upstream, mock_access):
    async with sdk(node_url) as client:
        reply = await client.beta.messages.create(
            model=RELAYED, max_tokens=64, messages=USER, betas=BETAS.split(","), extra_query={"beta": "true"}
        )  # SDK 2.10 keeps ?beta=true to itself: extra_query sends it, as Claude Code does
    assert reply.content[0].text == "Hello from mock"
    assert only_request(upstream, "/v1/messages").headers["anthropic-beta"] == BETAS
    assert await mock_access.seen("POST /v1/messages?beta=true (")


async def test_sdk_beta_stream_to_a_translated_provider(node_url, upstream):
    async with sdk(node_url) as client:
        async with client.beta.messages.stream(model=TRANSLATED, max_tokens=64, messages=USER, betas=BETAS.split(",")) as stream:
            final = await stream.get_final_message()
    assert final.content[0].text == "Hello from mock"
    assert "anthropic-beta" not in only_request(upstream, "/v1/chat/completions").headers


async def test_count_tokens_is_relayed_to_a_messages_provider(node_url, upstream):
    async with sdk(node_url) as client:
        counted = await client.messages.count_tokens(model=RELAYED, system="Be brief.", messages=USER)
    assert counted.input_tokens == 6  # the mock's count: the words of system and messages
    seen = only_request(upstream, "/v1/messages/count_tokens")
    assert seen.json == {"model": "claude-x", "system": "Be brief.", "messages": USER}
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY


async def test_count_tokens_for_a_translated_provider_is_the_nodes_estimate(node_url, upstream):
    async with sdk(node_url) as client:
        system = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French, s'il vous plaît."}]
        messages = [*USER, {"role": "assistant", "content": [{"type": "text", "text": "Oui."}]}]
        raw = await client.messages.with_raw_response.count_tokens(model=TRANSLATED, system=system, messages=messages)
    texts = ["Be brief.", "Answer in French, s'il vous plaît.", "Is the sky blue?", "Oui."]
    assert (await raw.parse()).input_tokens == math.ceil(sum(len(t.encode()) for t in texts) / 4)
    assert raw.headers["x-mira-token-count"] == "estimate"
    assert raw.headers["x-mira-model"] == TRANSLATED
    assert upstream.requests == []


# -- relayed: what the Messages provider gets -------------------------------------------------------------------------


async def test_beta_true_is_passed_on_to_the_messages_provider(node_url, upstream, mock_access):
    response = await post(node_url + MESSAGES + "?beta=true", messages_body())
    assert response.code == 200, response.body
    only_request(upstream, "/v1/messages")  # the mock records the path alone: its access line has the query
    assert await mock_access.seen("POST /v1/messages?beta=true (")


async def test_beta_true_on_count_tokens_is_passed_on_too(node_url, upstream, mock_access):
    response = await post(node_url + COUNT + "?beta=true", {"model": RELAYED, "messages": USER})
    assert response.code == 200, response.body
    assert response.headers["X-Mira-Model"] == RELAYED
    assert json.loads(response.body) == {"input_tokens": 4}
    only_request(upstream, "/v1/messages/count_tokens")
    assert await mock_access.seen("POST /v1/messages/count_tokens?beta=true (")


async def test_without_beta_no_query_is_added(node_url, upstream, mock_access):
    assert (await post(node_url + MESSAGES, messages_body())).code == 200
    assert await mock_access.seen("POST /v1/messages (")


async def test_beta_true_is_accepted_for_a_translated_provider(node_url, upstream):
    response = await post(node_url + MESSAGES + "?beta=true", messages_body(TRANSLATED))
    assert response.code == 200, response.body
    only_request(upstream, "/v1/chat/completions")


async def test_the_provider_key_goes_as_x_api_key_and_the_clients_credentials_never(node_url, upstream):
    headers = {"x-api-key": "client-key-1234", "Authorization": "Bearer client-token-5678"}
    assert (await post(node_url + MESSAGES, messages_body(), headers)).code == 200
    seen = only_request(upstream, "/v1/messages")
    assert seen.headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in seen.headers


async def test_the_clients_anthropic_version_and_beta_are_passed_unchanged(node_url, upstream):
    headers = {"anthropic-version": "2026-10-21", "anthropic-beta": BETAS}
    assert (await post(node_url + MESSAGES, messages_body(), headers)).code == 200
    seen = only_request(upstream, "/v1/messages")
    assert seen.headers["anthropic-version"] == "2026-10-21"
    assert seen.headers["anthropic-beta"] == BETAS


async def test_anthropic_version_defaults_to_2023_06_01(node_url, upstream):
    assert (await post(node_url + MESSAGES, messages_body())).code == 200
    seen = only_request(upstream, "/v1/messages")
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "anthropic-beta" not in seen.headers


async def test_the_body_arrives_exactly_as_sent_but_for_the_models_prefix(node_url, upstream):
    body = messages_body(
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        thinking={"type": "enabled", "budget_tokens": 1024},
        context_management={"edits": [{"type": "clear_tool_uses_20250919", "keep": {"type": "tool_uses", "value": 3}}]},
        fallbacks=[{"model": "claude-haiku-4-5"}],  # Anthropic's own field: not the node's fallbacks
        tools=[{**WEATHER_TOOL, "defer_loading": True}, {"type": "web_search_20250305", "name": "web_search"}],
        metadata={"user_id": "user-42"},
        some_future_field={"nested": [1, 2.5, None, True, "text/with/slashes"]},
        top_k=5,
    )
    response = await post(node_url + MESSAGES, body)
    assert response.code == 200, response.body
    seen = only_request(upstream, "/v1/messages")
    assert seen.json == {**body, "model": "claude-x"}


async def test_a_relayed_stream_reaches_the_client_byte_for_byte(node_url, upstream):
    upstream.default = Behavior(thinking="Let me think.", tool_call=TOOL_CALL, cache_read=2)
    response = await post(node_url + MESSAGES, messages_body(stream=True))
    assert response.code == 200, response.body
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Mira-Model"] == RELAYED
    seen = only_request(upstream, "/v1/messages")
    assert b"event: ping\n" in seen.sent_bytes
    assert response.body == bytes(seen.sent_bytes)


async def test_a_relayed_json_answer_reaches_the_client_byte_for_byte(node_url, upstream):
    raw = b'{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",  "content":[{"type":"text","text":"Hi"}],' \
          b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":1},"extra":"kept"}'
    upstream.default = Behavior(raw_body=raw)
    response = await post(node_url + MESSAGES, messages_body())
    assert response.code == 200
    assert response.body == raw


@pytest.mark.node_env(UPSTREAM_RETRIES="0", CIRCUIT_FAILURES="0")
@pytest.mark.parametrize(
    "status, raw",
    [
        (529, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'),
        (400, b'{"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens"},'
              b' "request_id": "req_011"}'),
    ],
    ids=["529", "400"],
)
async def test_an_upstream_error_comes_back_with_its_status_and_body_bytes(node_url, upstream, status, raw):
    upstream.default = Behavior(status=status, raw_body=raw)
    response = await post(node_url + MESSAGES, messages_body())
    assert response.code == status
    assert response.body == raw


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
async def test_an_upstream_error_streamed_for_comes_back_with_its_status_and_body_bytes(node_url, upstream):
    raw = b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down"}}'
    upstream.default = Behavior(status=429, raw_body=raw)
    response = await post(node_url + MESSAGES, messages_body(stream=True))
    assert response.code == 429
    assert response.body == raw


async def test_a_key_echoed_in_an_upstream_error_body_is_masked(node_url, upstream):
    raw = '{"type":"error","error":{"type":"invalid_request_error","message":"bad request with key %s"}}'
    upstream.default = Behavior(status=400, raw_body=(raw % ANTHROPIC_KEY).encode())
    response = await post(node_url + MESSAGES, messages_body())
    assert response.code == 400
    assert ANTHROPIC_KEY.encode() not in response.body and b"SECRET-0003" not in response.body
    assert response.body == (raw % MASK).encode()


# -- translated: the chat request -------------------------------------------------------------------------------------


async def translated(node_url: str, upstream, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    """Send a Messages request for TRANSLATED with ``fields``; the chat request the mock received."""
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, **fields), headers)
    assert response.code == 200, response.body
    return only_request(upstream, "/v1/chat/completions")


async def test_a_translated_request_goes_to_chat_with_the_bearer_key(node_url, upstream):
    seen = await translated(node_url, upstream, {"anthropic-beta": BETAS, "x-api-key": "client-key-1234"})
    assert seen.headers["authorization"] == "Bearer " + OPENAI_KEY
    assert "x-api-key" not in seen.headers
    assert "anthropic-beta" not in seen.headers
    assert seen.json["model"] == "gpt-x"
    assert seen.json["messages"] == USER
    assert seen.json["max_tokens"] == 64


async def test_system_is_the_first_message_without_the_billing_block(node_url, upstream):
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.3; cc_entrypoint=cli; cch=1a2b3;"},
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Be brief."},
    ]
    seen = await translated(node_url, upstream, system=system)
    assert seen.json["messages"] == [{"role": "system", "content": "You are Claude Code.\n\nBe brief."}, *USER]


async def test_a_string_system_is_the_first_message(node_url, upstream):
    seen = await translated(node_url, upstream, system="Be brief.")
    assert seen.json["messages"][0] == {"role": "system", "content": "Be brief."}


async def test_text_and_image_blocks_become_content_parts(node_url, upstream):
    content = [
        {"type": "text", "text": "What are these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    seen = await translated(node_url, upstream, messages=[{"role": "user", "content": content}])
    assert seen.json["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]}]


async def test_tool_use_blocks_become_tool_calls_and_thinking_is_dropped(node_url, upstream):
    assistant = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig"},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome", "days": [1, 2]}},
    ]}
    results = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "rain"},
    ]}
    seen = await translated(node_url, upstream, messages=[*USER, assistant, results], tools=[WEATHER_TOOL])
    message = seen.json["messages"][1]
    assert message["role"] == "assistant"
    assert text_of(message["content"]) == "Let me check."
    calls = message["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("toolu_1", "function", "get_weather"), ("toolu_2", "function", "get_weather")
    ]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {"city": "Rome", "days": [1, 2]}]


async def test_tool_results_become_tool_messages_before_the_rest_of_the_turn(node_url, upstream):
    assistant = {"role": "assistant", "content": [
        {"type": "tool_use", "id": f"toolu_{n}", "name": "get_weather", "input": {}} for n in (1, 2, 3)
    ]}
    turn = {"role": "user", "content": [
        {"type": "text", "text": "Here you go."},
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"},
                                                                       {"type": "text", "text": "22C"}]},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "tool_reference", "tool_name": "WebFetch"},
                                                                       {"type": "tool_reference", "tool_name": "Bash"}]},
        {"type": "tool_result", "tool_use_id": "toolu_3", "content": "city not found", "is_error": True},
    ]}
    seen = await translated(node_url, upstream, messages=[*USER, assistant, turn], tools=[WEATHER_TOOL])
    after = seen.json["messages"][2:]
    assert after[:3] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny\n22C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "tool: WebFetch\ntool: Bash"},
        {"role": "tool", "tool_call_id": "toolu_3", "content": "Error: city not found"},
    ]
    assert len(after) == 4 and after[3]["role"] == "user"
    assert text_of(after[3]["content"]) == "Here you go."


async def test_tools_become_function_tools_without_defer_loading_and_cache_control(node_url, upstream):
    tools = [
        {**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}},
        {"name": "ToolSearch", "description": "Find tools", "input_schema": {"type": "object"}, "defer_loading": True},
    ]
    seen = await translated(node_url, upstream, tools=tools)
    assert seen.json["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "description": WEATHER_TOOL["description"],
                                          "parameters": WEATHER_TOOL["input_schema"]}},
        {"type": "function", "function": {"name": "ToolSearch", "description": "Find tools",
                                          "parameters": {"type": "object"}}},
    ]


@pytest.mark.parametrize(
    "choice, expected",
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
    ],
    ids=["auto", "any", "none", "tool"],
)
async def test_tool_choice_is_chats(node_url, upstream, choice, expected):
    seen = await translated(node_url, upstream, tools=[WEATHER_TOOL], tool_choice=choice)
    assert seen.json["tool_choice"] == expected
    assert "parallel_tool_calls" not in seen.json


async def test_disable_parallel_tool_use_is_parallel_tool_calls_false(node_url, upstream):
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    seen = await translated(node_url, upstream, tools=[WEATHER_TOOL], tool_choice=choice)
    assert seen.json["parallel_tool_calls"] is False


async def test_stop_sequences_metadata_and_sampling_are_carried_over(node_url, upstream):
    fields = {"stop_sequences": ["END", "\n\nHuman:"], "metadata": {"user_id": "user-42"}, "temperature": 0.2, "top_p": 0.9}
    seen = await translated(node_url, upstream, **fields)
    assert seen.json["stop"] == ["END", "\n\nHuman:"]
    assert seen.json["user"] == "user-42"
    assert (seen.json["temperature"], seen.json["top_p"], seen.json["max_tokens"]) == (0.2, 0.9, 64)


async def test_a_translated_stream_asks_for_usage(node_url, upstream):
    seen = await translated(node_url, upstream, stream=True)
    assert seen.json["stream"] is True
    assert seen.json["stream_options"] == {"include_usage": True}


async def test_anthropic_only_fields_are_dropped(node_url, upstream):
    seen = await translated(
        node_url, upstream,
        thinking={"type": "enabled", "budget_tokens": 1024},
        context_management={"edits": [{"type": "clear_tool_uses_20250919"}]},
        output_config={"effort": "high"},
        top_k=5,
        service_tier="auto",
        fallbacks=[{"model": "claude-haiku-4-5"}],  # Anthropic's own field: dropped, not the node's fallbacks
        some_future_field=1,
    )
    assert set(seen.json) == {"model", "messages", "max_tokens"}


# -- translated: the answer --------------------------------------------------------------------------------------------


async def test_a_translated_stream_is_one_message_with_a_text_block(node_url, upstream):
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, stream=True))
    assert response.code == 200, response.body
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["X-Mira-Model"] == TRANSLATED
    events = events_of(response.body)
    assert names_of(events) == [
        "message_start", "content_block_start", *["content_block_delta"] * 3, "content_block_stop",
        "message_delta", "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["type"], start["role"], start["model"], start["content"]) == ("message", "assistant", TRANSLATED, [])
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [data for _, data in events[2:5]]
    assert all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas)
    assert "".join(d["delta"]["text"] for d in deltas) == "Hello from mock"
    assert events[5][1]["index"] == 0
    delta = events[6][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert (delta["usage"]["input_tokens"], delta["usage"]["output_tokens"]) == (4, 3)  # the mock's usage chunk


async def test_a_translated_tool_call_stream_is_a_tool_use_block(node_url, upstream):
    upstream.default = Behavior(content="", tool_call=TOOL_CALL)
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, stream=True, tools=[WEATHER_TOOL]))
    assert response.code == 200, response.body
    events = events_of(response.body)
    names = names_of(events)
    assert names.count("message_start") == 1
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {
        "type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}}
    fragments = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert len(fragments) >= 2 and all(f["type"] == "input_json_delta" for f in fragments)
    assert "".join(f["partial_json"] for f in fragments) == TOOL_CALL["arguments"]
    assert names[-3] == "content_block_stop"
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_text_then_a_tool_call_are_blocks_0_and_1(node_url, upstream):
    upstream.default = Behavior(content="Let me check.", tool_call=TOOL_CALL)
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, stream=True, tools=[WEATHER_TOOL]))
    events = events_of(response.body)
    starts = [(data["index"], data["content_block"]["type"]) for name, data in events if name == "content_block_start"]
    assert starts == [(0, "text"), (1, "tool_use")]
    stops = [data["index"] for name, data in events if name == "content_block_stop"]
    assert stops == [0, 1]


def chat_sse(*events: dict | str) -> bytes:
    """A chat SSE body of ``events`` (``[DONE]`` as the string)."""
    return b"".join(b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + b"\n\n" for e in events)


def chat_chunk(delta: dict, finish_reason: str | None = None, **extra: Any) -> dict:
    choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "gpt-x", "choices": choices, **extra}


async def test_a_translated_stream_cut_by_length_stops_for_max_tokens_with_its_cache_reads(node_url, upstream):
    usage = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10, "prompt_tokens_details": {"cached_tokens": 5}}
    body = chat_sse(chat_chunk({"role": "assistant", "content": "Hi"}), chat_chunk({}, "length"),
                    {**chat_chunk({}), "choices": [], "usage": usage}, "[DONE]")
    upstream.default = Behavior(raw_body=body, content_type="text/event-stream")
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, stream=True))
    name, delta = events_of(response.body)[-2]
    assert name == "message_delta"
    assert delta["delta"]["stop_reason"] == "max_tokens"
    usage = delta["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["cache_read_input_tokens"]) == (4, 1, 5)


async def test_an_upstream_error_event_mid_stream_becomes_an_error_event_masked(node_url, upstream):
    error = {"error": {"message": "boom with " + OPENAI_KEY, "type": "server_error", "code": None}}
    body = chat_sse(chat_chunk({"role": "assistant", "content": "Hi"}), error)
    upstream.default = Behavior(raw_body=body, content_type="text/event-stream")
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, stream=True))
    assert OPENAI_KEY.encode() not in response.body
    events = events_of(response.body)
    assert names_of(events)[-1] == "error" and "message_stop" not in names_of(events)
    assert events[-1][1]["error"] == {"type": "api_error", "message": f"Error from openai API: boom with {MASK}"}


async def test_a_translated_stream_cut_short_is_an_error_to_the_sdk(node_url, upstream):
    # The chat upstream's stream ends (its HTTP answer whole) with neither a finish_reason nor [DONE].
    body = chat_sse(chat_chunk({"role": "assistant", "content": "Hi"}), chat_chunk({"content": " there"}))
    upstream.default = Behavior(raw_body=body, content_type="text/event-stream")
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, stream=True))
    events = events_of(response.body)
    assert names_of(events)[-1] == "error" and "message_stop" not in names_of(events)
    upstream.default = Behavior(raw_body=body, content_type="text/event-stream")
    async with sdk(node_url) as client:
        with pytest.raises(anthropic.APIStatusError, match="ended before the answer was complete"):
            async with client.messages.stream(model=TRANSLATED, max_tokens=64, messages=USER) as stream:
                await stream.get_final_message()


async def test_the_sdk_reads_a_translated_tool_call_stream(node_url, upstream):
    upstream.default = Behavior(content="", tool_call=TOOL_CALL)
    async with sdk(node_url) as client:
        async with client.messages.stream(model=TRANSLATED, max_tokens=64, messages=USER, tools=[WEATHER_TOOL]) as stream:
            final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (block,) = final.content
    assert (block.type, block.id, block.name) == ("tool_use", "call_1", "get_weather")
    assert block.input == json.loads(TOOL_CALL["arguments"])


async def test_a_translated_json_answer_is_a_message_in_the_clients_model(node_url, upstream):
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED))
    assert response.code == 200
    answer = json.loads(response.body)
    assert answer["id"].startswith("msg_")
    assert (answer["type"], answer["role"], answer["model"]) == ("message", "assistant", TRANSLATED)
    assert answer["content"] == [{"type": "text", "text": "Hello from mock"}]
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("end_turn", None)
    assert answer["usage"] == {
        "input_tokens": 4, "output_tokens": 3, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0
    }


async def test_a_translated_tool_call_answer_is_a_tool_use_block(node_url, upstream):
    upstream.default = Behavior(tool_call=TOOL_CALL)
    async with sdk(node_url) as client:
        reply = await client.messages.create(model=TRANSLATED, max_tokens=64, messages=USER, tools=[WEATHER_TOOL])
    assert reply.stop_reason == "tool_use"
    (block,) = reply.content
    assert (block.type, block.id, block.name) == ("tool_use", "call_1", "get_weather")
    assert block.input == json.loads(TOOL_CALL["arguments"])


async def test_finish_reason_length_is_stop_reason_max_tokens(node_url, upstream):
    answer = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-x",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello fr"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12,
                  "prompt_tokens_details": {"cached_tokens": 6}},
    }
    upstream.default = Behavior(json_body=answer)
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED))
    reply = json.loads(response.body)
    assert reply["stop_reason"] == "max_tokens"
    assert reply["usage"] == {"input_tokens": 4, "output_tokens": 2, "cache_read_input_tokens": 6,
                              "cache_creation_input_tokens": 0}


@pytest.mark.parametrize(
    "field, value, named",
    [
        ("messages", [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "a doc"}}]}], "document"),
        ("tools", [{"type": "web_search_20250305", "name": "web_search"}], "web_search_20250305"),
    ],
    ids=["document", "server-tool"],
)
async def test_what_chat_cannot_take_is_a_400_naming_it_before_any_call(node_url, upstream, field, value, named):
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, **{field: value}))
    assert response.code == 400
    error = anthropic_error_of(response)
    assert error["type"] == "invalid_request_error"
    assert named in error["message"]
    assert upstream.requests == []


# -- tool round trips ---------------------------------------------------------------------------------------------------


async def first_tool_use(node_url: str, upstream, model: str) -> Any:
    """The tool_use block of a first turn answered with a tool call (the mock then forgets it)."""
    upstream.push(Behavior(content="", tool_call=TOOL_CALL))
    async with sdk(node_url) as client:
        reply = await client.messages.create(model=model, max_tokens=64, messages=USER, tools=[WEATHER_TOOL])
    assert reply.stop_reason == "tool_use"
    (block,) = [b for b in reply.content if b.type == "tool_use"]
    upstream.reset()
    return block


def round_trip_messages(block: Any) -> list[dict[str, Any]]:
    """The second turn: the assistant's tool_use and the user's tool_result for it."""
    return [
        *USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny, 22C"}]},
    ]


async def test_a_relayed_tool_round_trip_goes_upstream_unchanged(node_url, upstream):
    block = await first_tool_use(node_url, upstream, RELAYED)
    messages = round_trip_messages(block)
    response = await post(node_url + MESSAGES, messages_body(RELAYED, messages=messages, tools=[WEATHER_TOOL]))
    assert response.code == 200, response.body
    seen = only_request(upstream, "/v1/messages")
    assert seen.json["messages"] == messages


async def test_a_translated_tool_round_trip_is_tool_calls_and_a_tool_message(node_url, upstream):
    block = await first_tool_use(node_url, upstream, TRANSLATED)
    assert block.id == "call_1"
    messages = round_trip_messages(block)
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, messages=messages, tools=[WEATHER_TOOL]))
    assert response.code == 200, response.body
    sent = only_request(upstream, "/v1/chat/completions").json["messages"]
    assert sent[0] == USER[0]
    assert sent[1]["role"] == "assistant" and not sent[1].get("content")
    (call,) = sent[1]["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"]) == ("call_1", "function", "get_weather")
    assert json.loads(call["function"]["arguments"]) == json.loads(TOOL_CALL["arguments"])
    assert sent[2:] == [{"role": "tool", "tool_call_id": "call_1", "content": "sunny, 22C"}]


# -- errors the node answers itself, in Anthropic's shape -------------------------------------------------------------


@pytest.mark.parametrize(
    "route, body, param",
    [
        (MESSAGES, {"model": RELAYED, "max_tokens": 64}, "messages"),
        (MESSAGES, {"model": RELAYED, "max_tokens": 64, "messages": []}, "messages"),
        (MESSAGES, messages_body(max_tokens=0), "max_tokens"),
        (MESSAGES, {"model": RELAYED, "messages": USER}, "max_tokens"),
        (MESSAGES, b"{not json", None),
        (COUNT, {"model": RELAYED}, "messages"),
    ],
    ids=["no-messages", "empty-messages", "max-tokens-0", "no-max-tokens", "not-json", "count-no-messages"],
)
async def test_a_bad_request_is_a_400_invalid_request_error(node_url, upstream, route, body, param):
    response = await post(node_url + route, body)
    assert response.code == 400
    error = anthropic_error_of(response)
    assert error["type"] == "invalid_request_error"
    if param:
        assert param in error["message"]
    assert upstream.requests == []


@pytest.mark.node_env(SERVICE_API_KEY="node-key-SECRET-42")
async def test_the_service_key_is_required_and_taken_as_x_api_key_or_bearer(node_url, upstream):
    for headers in ({}, {"x-api-key": "wrong-key-1234"}, {"Authorization": "Bearer wrong-key-1234"}):
        response = await post(node_url + MESSAGES, messages_body(), headers)
        assert response.code == 401, headers
        assert anthropic_error_of(response)["type"] == "authentication_error"
    assert upstream.requests == []
    for headers in ({"x-api-key": "node-key-SECRET-42"}, {"Authorization": "Bearer node-key-SECRET-42"}):
        assert (await post(node_url + MESSAGES, messages_body(), headers)).code == 200, headers
    # the node's key is never the provider's: the provider gets its own
    assert [r.headers["x-api-key"] for r in upstream.requests] == [ANTHROPIC_KEY] * 2


@pytest.mark.node_env(SERVICE_API_KEY="node-key-SECRET-42")
async def test_the_sdk_passes_the_service_key_and_raises_authentication_error_without_it(node_url, upstream):
    async with sdk(node_url, "node-key-SECRET-42") as client:
        reply = await client.messages.create(model=TRANSLATED, max_tokens=64, messages=USER)
    assert reply.content[0].text == "Hello from mock"
    async with sdk(node_url, "wrong-key-1234") as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model=TRANSLATED, max_tokens=64, messages=USER)


@pytest.mark.node_env(ALLOWED_CLIENTS="198.51.100.7")
async def test_a_client_not_allowed_is_403_permission_error(node_url, upstream):
    response = await post(node_url + MESSAGES, messages_body())
    assert response.code == 403
    error = anthropic_error_of(response)
    assert (error["type"], error["code"]) == ("permission_error", "client_forbidden")
    assert upstream.requests == []


@pytest.mark.node_env(MAX_BODY_SIZE="512")
async def test_a_body_over_max_body_size_is_413_request_too_large(node_url, upstream):
    body = messages_body(messages=[{"role": "user", "content": "x" * 2000}])
    response = await post(node_url + MESSAGES, body)
    assert response.code == 413
    assert anthropic_error_of(response)["type"] == "request_too_large"
    assert upstream.requests == []


@pytest.mark.node_env(PROVIDER_LIMITS_FILE=str(LIMITS_FILE))
async def test_a_limit_reached_is_429_rate_limit_error(node_url, upstream):
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED))
    assert response.code == 429
    error = anthropic_error_of(response)
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1
    assert upstream.requests == []


@pytest.mark.node_env(PROVIDER_LIMITS_FILE=str(LIMITS_FILE))
async def test_the_sdk_raises_rate_limit_error_on_a_limit(node_url, upstream):
    async with sdk(node_url) as client:
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(model=TRANSLATED, max_tokens=64, messages=USER)


@pytest.mark.node_env(MAX_CONCURRENT_REQUESTS="1")
async def test_over_max_concurrent_requests_is_503_overloaded_error(node_url, http_port, upstream):
    upstream.default = Behavior(hang=True)
    holder = RawClient(http_port)
    await holder.send(MESSAGES, messages_body())
    assert await upstream.await_for(lambda u: len(u.requests) == 1)
    response = await post(node_url + MESSAGES, messages_body())
    assert response.code == 503
    assert response.headers["Retry-After"] == "1"
    assert anthropic_error_of(response)["type"] == "overloaded_error"
    holder.close()
    assert await upstream.await_for(lambda u: u.requests[0].closed_at is not None)


@pytest.mark.node_env(CIRCUIT_FAILURES="1", UPSTREAM_RETRIES="0")
async def test_an_open_circuit_is_503_overloaded_error(node_url, upstream):
    upstream.default = Behavior(status=500)
    assert (await post(node_url + MESSAGES, messages_body(TRANSLATED))).code == 500
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED))
    assert response.code == 503
    error = anthropic_error_of(response)
    assert (error["type"], error["code"]) == ("overloaded_error", "provider_unavailable")
    assert int(response.headers["Retry-After"]) >= 1
    assert len(upstream.requests) == 1


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
async def test_a_translated_providers_error_keeps_its_status_in_anthropics_shape(node_url, upstream):
    upstream.default = Behavior(status=500, error_message="the model crashed")
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED))
    assert response.code == 500
    error = anthropic_error_of(response)
    assert error["type"] == "api_error"
    assert error["message"] == "Error from openai API: the model crashed"


async def test_a_relayed_stream_dropped_mid_way_ends_with_an_error_event(node_url, upstream):
    upstream.default = Behavior(drop_after_chunks=4)  # message_start, content_block_start, ping, one delta
    response = await post(node_url + MESSAGES, messages_body(stream=True))
    assert response.code == 200
    sent = bytes(only_request(upstream, "/v1/messages").sent_bytes)
    assert response.body.startswith(sent)
    ((name, data),) = events_of(response.body[len(sent):])
    assert name == "error"
    assert set(data["error"]) >= {"type", "message"} and data["error"]["message"]
    assert b"message_stop" not in response.body


async def test_a_translated_stream_dropped_mid_way_ends_with_an_error_event(node_url, upstream):
    upstream.default = Behavior(drop_after_chunks=2)
    response = await post(node_url + MESSAGES, messages_body(TRANSLATED, stream=True))
    assert response.code == 200
    events = events_of(response.body)
    names = names_of(events)
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-1] == "error" and "message_stop" not in names
    error = events[-1][1]["error"]
    assert set(error) >= {"type", "message"} and error["message"]


@BOTH
async def test_a_client_leaving_a_stream_aborts_the_upstream_call(node_url, http_port, upstream, model):
    upstream.default = Behavior(hang_after_chunks=2)
    client = RawClient(http_port)
    await client.send(MESSAGES, messages_body(model, stream=True))
    head = await client.read_head()
    assert head.status == 200
    assert b"event: message_start" in await client.read_some(head)
    client.close()
    assert await upstream.await_for(lambda u: u.requests[0].closed_at is not None, timeout=2)


# -- fallbacks ----------------------------------------------------------------------------------------------------------


@pytest.mark.node_env(MODEL_ALIASES_FILE=str(ALIASES_FILE), UPSTREAM_RETRIES="0")
@pytest.mark.parametrize("fallbacks", [["claude-haiku-4-5"], [{"model": "claude-haiku-4-5"}]], ids=["strings", "objects"])
async def test_a_bodys_fallbacks_are_anthropics_never_the_nodes(node_url, upstream, fallbacks):
    raw = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    upstream.default = Behavior(status=529, raw_body=raw)
    response = await post(node_url + MESSAGES, messages_body(fallbacks=fallbacks))
    assert (response.code, response.body) == (529, raw)
    assert only_request(upstream, "/v1/messages").json["fallbacks"] == fallbacks


@pytest.mark.node_env(MODEL_FALLBACKS_FILE=str(FALLBACKS_FILE), UPSTREAM_RETRIES="0")
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_relayed_request_falls_back_to_a_translated_provider(node_url, upstream, stream):
    upstream.set_behavior("claude-x", Behavior(status=529))
    response = await post(node_url + MESSAGES, messages_body(stream=stream))
    assert response.code == 200, response.body
    assert response.headers["X-Mira-Model"] == TRANSLATED
    assert [r.path for r in upstream.requests] == ["/v1/messages", "/v1/chat/completions"]
    assert upstream.requests[1].json["model"] == "gpt-x"
    if stream:
        deltas = [data["delta"]["text"] for name, data in events_of(response.body) if name == "content_block_delta"]
        assert "".join(deltas) == "Hello from mock"
    else:
        assert json.loads(response.body)["content"] == [{"type": "text", "text": "Hello from mock"}]


@pytest.mark.node_env(MODEL_FALLBACKS_FILE=str(FALLBACKS_FILE), UPSTREAM_RETRIES="0")
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_translated_request_falls_back_to_a_messages_provider_as_sent(node_url, upstream, stream):
    upstream.set_behavior("gpt-x", Behavior(status=500))
    body = messages_body(TRANSLATED, stream=stream, thinking={"type": "enabled", "budget_tokens": 1024})
    response = await post(node_url + MESSAGES, body, {"anthropic-beta": BETAS})
    assert response.code == 200, response.body
    assert response.headers["X-Mira-Model"] == RELAYED
    assert [r.path for r in upstream.requests] == ["/v1/chat/completions", "/v1/messages"]
    relayed = upstream.requests[1]
    assert relayed.json == {**body, "model": "claude-x"}
    assert relayed.headers["anthropic-beta"] == BETAS
    if stream:
        assert response.body == bytes(relayed.sent_bytes)


# -- model aliases -----------------------------------------------------------------------------------------------------


@pytest.mark.node_env(MODEL_ALIASES_FILE=str(ALIASES_FILE))
async def test_an_alias_to_anthropic_is_relayed(node_url, upstream):
    async with sdk(node_url) as client:
        raw = await client.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=64, messages=USER)
    assert raw.headers["x-mira-model"] == "anthropic/claude-sonnet-4-6"
    assert (await raw.parse()).content[0].text == "Hello from mock"
    assert only_request(upstream, "/v1/messages").json["model"] == "claude-sonnet-4-6"


@pytest.mark.node_env(MODEL_ALIASES_FILE=str(ALIASES_FILE))
async def test_an_alias_to_another_provider_is_translated(node_url, upstream):
    async with sdk(node_url) as client:
        raw = await client.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=64, messages=USER)
    assert raw.headers["x-mira-model"] == "groq/llama-x"
    assert (await raw.parse()).model == "claude-haiku-4-5"  # the client's name for it
    seen = only_request(upstream, "/v1/chat/completions")
    assert seen.json["model"] == "llama-x"
    assert seen.headers["authorization"] == "Bearer " + SECRETS["GROQ_API_KEY"]


@pytest.mark.node_env(MODEL_ALIASES_FILE=str(ALIASES_FILE))
@pytest.mark.parametrize(
    "alias, path, upstream_model",
    [("claude-haiku-4-5", "/v1/chat/completions", "llama-x"), ("claude-sonnet-4-6", "/v1/messages", "claude-sonnet-4-6")],
    ids=["to-groq", "to-anthropic"],
)
async def test_aliases_work_on_chat_too(node_url, upstream, alias, path, upstream_model):
    response = await post(node_url + CHAT, {"model": alias, "messages": USER})
    assert response.code == 200, response.body
    assert response.headers["X-Mira-Model"] == ALIASES[alias]
    assert json.loads(response.body)["choices"][0]["message"]["content"] == "Hello from mock"
    assert only_request(upstream, path).json["model"] == upstream_model


@pytest.mark.node_env(MODEL_ALIASES_FILE=str(ALIASES_FILE))
async def test_v1_models_lists_the_alias_names(node_url, upstream):
    openai_ids = [item["id"] for item in json.loads((await get(node_url + "/v1/models")).body)["data"]]
    anthropic_page = json.loads((await get(node_url + "/v1/models", headers={"anthropic-version": "2023-06-01"})).body)
    anthropic_ids = [item["id"] for item in anthropic_page["data"]]
    for name in ALIASES:
        assert name in openai_ids
        assert name in anthropic_ids


@pytest.mark.parametrize(
    "content, named",
    [
        ("{not json", "MODEL_ALIASES_FILE"),
        ('{"fast": "nosuch/model"}', "fast"),
        ('{"fast": "openai/gpt-x", "quick": "fast"}', "alias"),
    ],
    ids=["not-json", "unroutable", "chained"],
)
def test_a_bad_alias_file_stops_start_up_with_exit_2(spawn_node, tmp_path, content, named):
    path = tmp_path / "aliases.json"
    path.write_text(content)
    node = spawn_node({"MODEL_ALIASES_FILE": str(path)}, ready=False)
    assert node.wait() == 2
    assert "MODEL_ALIASES_FILE" in node.output
    assert named in node.output


# -- sessions keep their key of a pool ----------------------------------------------------------------------------------


def key_positions(upstream, pool: tuple[str, ...]) -> list[int]:
    """The position in ``pool`` of the key each request the mock saw carried (x-api-key, else the bearer token)."""
    out = []
    for seen in upstream.requests:
        key = seen.headers.get("x-api-key") or seen.headers["authorization"].removeprefix("Bearer ")
        out.append(pool.index(key))
    return out


@POOLS
@pytest.mark.parametrize("model, pool", [(RELAYED, ANTHROPIC_POOL), (TRANSLATED, OPENAI_POOL)], ids=["relayed", "translated"])
async def test_a_session_header_keeps_one_key(node_url, upstream, model, pool):
    for position, session in sorted(SESSION_ON.items()):
        for _ in range(3):
            response = await post(node_url + MESSAGES, messages_body(model), {"X-Claude-Code-Session-Id": session})
            assert response.code == 200, response.body
        assert key_positions(upstream, pool)[-3:] == [position] * 3


@POOLS
@pytest.mark.parametrize("model, pool", [(RELAYED, ANTHROPIC_POOL), (TRANSLATED, OPENAI_POOL)], ids=["relayed", "translated"])
async def test_requests_without_a_session_take_the_keys_in_turn(node_url, upstream, model, pool):
    for _ in range(4):
        assert (await post(node_url + MESSAGES, messages_body(model))).code == 200
    used = key_positions(upstream, pool)
    assert sorted(used) == [0, 0, 1, 1]
    assert all(a != b for a, b in zip(used, used[1:], strict=False))


@POOLS
async def test_the_session_in_metadata_user_id_counts_the_same(node_url, upstream):
    for position, session in sorted(SESSION_ON.items()):
        user_id = json.dumps({"device_id": "d1", "account_uuid": "", "session_id": session})
        for _ in range(3):
            assert (await post(node_url + MESSAGES, messages_body(metadata={"user_id": user_id}))).code == 200
        assert key_positions(upstream, ANTHROPIC_POOL)[-3:] == [position] * 3


@POOLS
async def test_the_session_header_wins_over_metadata(node_url, upstream):
    user_id = json.dumps({"session_id": SESSION_ON[1]})
    for _ in range(2):
        body = messages_body(metadata={"user_id": user_id})
        assert (await post(node_url + MESSAGES, body, {"X-Claude-Code-Session-Id": SESSION_ON[0]})).code == 200
    assert key_positions(upstream, ANTHROPIC_POOL) == [0, 0]


@POOLS
@pytest.mark.parametrize("field", ["prompt_cache_key", "user"])
async def test_prompt_cache_key_or_user_names_a_session_on_chat(node_url, upstream, field):
    for position, session in sorted(SESSION_ON.items()):
        for _ in range(3):
            body = {"model": TRANSLATED, "messages": USER, field: session}
            assert (await post(node_url + CHAT, body)).code == 200
        assert key_positions(upstream, OPENAI_POOL)[-3:] == [position] * 3


@POOLS
async def test_when_the_sessions_key_cools_it_goes_to_the_other_key(node_url, upstream):
    session = SESSION_ON[0]
    upstream.set_key_behavior(ANTHROPIC_POOL[0][-4:], Behavior(status=429, headers={"retry-after": "30"}))
    for _ in range(2):
        response = await post(node_url + MESSAGES, messages_body(), {"X-Claude-Code-Session-Id": session})
        assert response.code == 200, response.body
    assert key_positions(upstream, ANTHROPIC_POOL) == [0, 1, 1]  # the 429, then the other key; then it again
    assert [r.path for r in upstream.requests] == ["/v1/messages"] * 3


@POOLS
async def test_a_session_returns_to_its_key_once_it_has_rested(node_url, upstream, clock):
    session = SESSION_ON[1]
    upstream.set_key_behavior(ANTHROPIC_POOL[1][-4:], Behavior(status=429, headers={"retry-after": "30"}))
    assert (await post(node_url + MESSAGES, messages_body(), {"X-Claude-Code-Session-Id": session})).code == 200
    assert key_positions(upstream, ANTHROPIC_POOL) == [1, 0]
    upstream.reset()
    clock.now += 31
    assert (await post(node_url + MESSAGES, messages_body(), {"X-Claude-Code-Session-Id": session})).code == 200
    assert key_positions(upstream, ANTHROPIC_POOL) == [1]


# -- GET /v1/models in Anthropic's shape ---------------------------------------------------------------------------------


async def test_v1_models_with_anthropic_version_is_anthropics_list(node_url, upstream):
    response = await get(node_url + "/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert response.code == 200
    page = json.loads(response.body)
    assert set(page) == {"data", "has_more", "first_id", "last_id"}
    assert page["has_more"] is False
    items = page["data"]
    assert items and all(set(item) == {"type", "id", "display_name", "created_at"} for item in items)
    assert all(item["type"] == "model" and isinstance(item["display_name"], str) for item in items)
    for item in items:
        datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))
    assert (page["first_id"], page["last_id"]) == (items[0]["id"], items[-1]["id"])
    assert "openai/gpt-4o" in [item["id"] for item in items]


async def test_v1_models_without_anthropic_version_stays_openais(node_url, upstream):
    page = json.loads((await get(node_url + "/v1/models")).body)
    assert page["object"] == "list"
    assert all(item["object"] == "model" for item in page["data"])


async def test_the_sdk_lists_models(node_url, upstream):
    async with sdk(node_url) as client:
        page = await client.models.list()
    ids = [model.id for model in page.data]
    assert "anthropic/claude-3-5-haiku-latest" in ids
    assert all(model.type == "model" for model in page.data)
    assert page.has_more is False
