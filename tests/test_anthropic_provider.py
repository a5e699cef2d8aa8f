"""The ``anthropic`` provider through real HTTP: chat requests translated to Anthropic's Messages API and back.

A chat request (and verify, eval) whose model is ``anthropic/MODEL`` goes to
``POST {ANTHROPIC_BASE_URL}/messages`` with ``x-api-key`` and
``anthropic-version``; the mock upstream answers ``/v1/messages`` as Anthropic
does, and the client gets OpenAI chat back, JSON or SSE. Most tests use the
official ``openai`` SDK as the client, the rest raw HTTP where bytes matter.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from tests.conftest import SECRETS
from tests.helpers import USER, chat_body, error_of, get, post, sse_events
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test(timeout=20)

CHAT = "/v1/chat/completions"
MODEL = "anthropic/claude-x"
KEY = SECRETS["ANTHROPIC_API_KEY"]
LISTED = "anthropic/claude-3-5-haiku-latest"  # in the shipped SUPPORTED_MODELS_FILE: metrics label it by name
TOOL = {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius", "days": [1, 2, 3]})}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def sdk(node_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="unused", max_retries=0)


def sent(upstream) -> dict[str, Any]:
    """The body of the one request the mock saw, which must have gone to /v1/messages."""
    (seen,) = upstream.requests
    assert seen.path == "/v1/messages"
    return seen.json


def data_of(body: bytes) -> list[Any]:
    """The payload of each ``data:`` event of a chat SSE body: parsed JSON, or the string ``[DONE]``."""
    out: list[Any] = []
    for event in sse_events(body):
        assert event.startswith(b"data: "), event
        payload = event[len(b"data: "):]
        out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


async def translated(node_url: str, upstream, **body: Any) -> dict[str, Any]:
    """Send a chat request for MODEL with ``body``'s fields; the Messages body the mock received."""
    response = await post(node_url + CHAT, chat_body(MODEL, **body))
    assert response.code == 200, response.body
    return sent(upstream)


async def tokens(node_url: str, provider: str, model: str, kind: str) -> float:
    """The value of ``mira_tokens_total`` for one provider, model and kind (0 when absent)."""
    text = (await get(node_url + "/metrics")).body.decode()
    labels = {"provider": provider, "model": model, "kind": kind}
    for line in text.splitlines():
        if line.startswith("mira_tokens_total{"):
            head, _, value = line.rpartition(" ")
            pairs = dict(item.split("=", 1) for item in head[len("mira_tokens_total{"):-1].split(","))
            if {name: raw.strip('"') for name, raw in pairs.items()} == labels:
                return float(value)
    return 0.0


class TokenCounts:
    """``mira_tokens_total`` of one provider and model, for the four kinds, before a test's requests."""

    KINDS = ("prompt", "completion", "cache_read", "cache_write")

    def __init__(self, node_url: str, provider: str, model: str) -> None:
        self.node_url, self.provider, self.model = node_url, provider, model
        self.before: dict[str, float] = {}

    async def start(self) -> TokenCounts:
        self.before = {kind: await tokens(self.node_url, self.provider, self.model, kind) for kind in self.KINDS}
        return self

    async def added(self) -> dict[str, float]:
        now = {kind: await tokens(self.node_url, self.provider, self.model, kind) for kind in self.KINDS}
        return {kind: now[kind] - self.before[kind] for kind in self.KINDS}


# -- the call: where it goes, with which headers and max_tokens ------------------------------------------------------


async def test_a_chat_request_is_a_messages_call_and_the_sdk_reads_the_answer(node_url, upstream):
    upstream.default = Behavior(cache_read=2)
    client = sdk(node_url)
    raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=USER)
    await client.close()
    (seen,) = upstream.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.json["model"] == "claude-x"
    assert seen.json["max_tokens"] == 4096
    assert seen.json["messages"] == USER
    assert raw.headers["x-mira-model"] == MODEL
    reply = raw.parse()
    assert reply.choices[0].message.content == "Hello from mock"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == 6  # "Is the sky blue?" is 4 words, plus 2 read from the cache
    assert reply.usage.completion_tokens == 3
    assert reply.usage.total_tokens == 9
    assert reply.usage.prompt_tokens_details.cached_tokens == 2


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_the_requests_own_max_tokens_is_sent(node_url, upstream, field):
    assert (await translated(node_url, upstream, **{field: 77}))["max_tokens"] == 77


@pytest.mark.node_env(ANTHROPIC_MAX_TOKENS="1234")
async def test_anthropic_max_tokens_is_the_default_max_tokens(node_url, upstream):
    assert (await translated(node_url, upstream))["max_tokens"] == 1234


# -- the request, translated -----------------------------------------------------------------------------------------


async def test_system_and_developer_messages_become_system(node_url, upstream):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        *USER,
    ]
    body = await translated(node_url, upstream, messages=messages)
    assert body["system"] == "Be brief.\n\nAnswer in French."
    assert body["messages"] == USER


async def test_image_parts_become_image_blocks(node_url, upstream):
    content = [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    body = await translated(node_url, upstream, messages=[{"role": "user", "content": content}])
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What are these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]}]


async def test_tool_calls_become_tool_use_and_tool_messages_one_user_turn_of_tool_results(node_url, upstream):
    calls = [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
    ]
    messages = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
    ]
    body = await translated(node_url, upstream, messages=messages, tools=[WEATHER])
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "call_b", "content": "rain"},
        ]},
    ]


@pytest.mark.parametrize(
    "choice, expected",
    [
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
    ids=["required", "named"],
)
async def test_tools_and_tool_choice_are_sent_as_anthropic_names_them(node_url, upstream, choice, expected):
    body = await translated(node_url, upstream, tools=[WEATHER], tool_choice=choice)
    function = WEATHER["function"]
    assert body["tools"] == [
        {"name": "get_weather", "description": function["description"], "input_schema": function["parameters"]}
    ]
    assert body["tool_choice"] == expected


async def test_parallel_tool_calls_false_becomes_disable_parallel_tool_use(node_url, upstream):
    body = await translated(node_url, upstream, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_stop_becomes_stop_sequences_and_user_metadata_user_id(node_url, upstream):
    body = await translated(node_url, upstream, stop=["END", "\n\n"], user="user-42")
    assert body["stop_sequences"] == ["END", "\n\n"]
    assert body["metadata"] == {"user_id": "user-42"}


async def test_fields_anthropic_cannot_take_are_not_sent(node_url, upstream):
    body = await translated(
        node_url, upstream, seed=7, frequency_penalty=0.5, stream=True, stream_options={"include_usage": True}
    )
    assert body["stream"] is True
    for field in ("seed", "frequency_penalty", "stream_options"):
        assert field not in body


# -- the answer, translated back -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stop_reason, finish_reason",
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_stop_reasons_become_finish_reasons(node_url, upstream, stop_reason, finish_reason, stream):
    upstream.default = Behavior(stop_reason=stop_reason)
    async with sdk(node_url) as client:
        if stream:
            chunks = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
            reasons = [c.choices[0].finish_reason async for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            reply = await client.chat.completions.create(model=MODEL, messages=USER)
            reasons = [reply.choices[0].finish_reason]
    assert reasons == [finish_reason]


async def test_a_tool_use_answer_becomes_tool_calls(node_url, upstream):
    upstream.default = Behavior(content="", tool_call=TOOL)
    async with sdk(node_url) as client:
        reply = await client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("toolu_mock_")
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(TOOL["arguments"])


async def test_a_streamed_tool_use_arrives_as_argument_fragments_the_sdk_joins(node_url, upstream):
    # a text block comes first (the tool_use is block 1), yet the tool call's index is 0: its position among calls
    upstream.default = Behavior(content="Let me check.", tool_call=TOOL, chunks=4)
    response = await post(node_url + CHAT, chat_body(MODEL, tools=[WEATHER], stream=True))
    deltas = [e["choices"][0]["delta"] for e in data_of(response.body) if e != "[DONE]" and e["choices"]]
    calls = [call for delta in deltas for call in delta.get("tool_calls", [])]
    assert {call["index"] for call in calls} == {0}
    assert len([call for call in calls if call["function"].get("arguments")]) > 1
    async with sdk(node_url) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=USER, tools=[WEATHER], stream=True)
        ids, names, arguments = set(), set(), ""
        async for chunk in stream:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                assert call.index == 0
                ids.add(call.id)
                names.add(call.function.name)
                arguments += call.function.arguments or ""
    assert len(ids - {None}) == 1 and names - {None} == {"get_weather"}
    assert json.loads(arguments) == json.loads(TOOL["arguments"])


async def test_a_stream_through_the_sdk_joins_the_text_and_starts_with_the_role(node_url, upstream):
    upstream.default = Behavior(content="The quick brown fox jumps", chunks=5)
    async with sdk(node_url) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "The quick brown fox jumps"
    assert len(pieces) == 5


@pytest.mark.parametrize("include_usage", [True, False, None], ids=["asked", "declined", "unset"])
async def test_a_usage_chunk_comes_only_when_the_client_asks(node_url, upstream, include_usage):
    extra = {} if include_usage is None else {"stream_options": {"include_usage": include_usage}}
    async with sdk(node_url) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True, **extra)
        usage_chunks = [chunk async for chunk in stream if not chunk.choices]
    if not include_usage:
        assert usage_chunks == []
        return
    (chunk,) = usage_chunks
    assert chunk.usage.prompt_tokens == 4 and chunk.usage.completion_tokens == 3


async def test_a_translated_stream_ends_with_done(node_url, upstream):
    response = await post(node_url + CHAT, chat_body(MODEL, stream=True))
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(response.body)
    assert events[-1] == b"data: [DONE]"
    assert events.count(b"data: [DONE]") == 1


async def test_a_translated_stream_cut_short_is_an_error_to_the_sdk(node_url, upstream):
    # The Messages upstream's stream ends (its HTTP answer whole) after text, with no message_delta or message_stop.
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "claude-x", "usage": {"input_tokens": 3}}}
    events = [start, {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
              {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}]
    body = b"".join(b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events)
    upstream.default = Behavior(raw_body=body, content_type="text/event-stream")
    payloads = data_of((await post(node_url + CHAT, chat_body(MODEL, stream=True))).body)
    assert "[DONE]" not in payloads and "ended before the answer was complete" in payloads[-1]["error"]["message"]
    upstream.default = Behavior(raw_body=body, content_type="text/event-stream")
    with pytest.raises(openai.APIError, match="ended before the answer was complete"):
        async for _ in await sdk(node_url).chat.completions.create(model=MODEL, messages=USER, stream=True):
            pass


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_thinking_blocks_are_dropped(node_url, upstream, stream):
    upstream.default = Behavior(thinking="SECRET PLAN: say hello")
    response = await post(node_url + CHAT, chat_body(MODEL, stream=stream))
    assert response.code == 200
    assert b"SECRET PLAN" not in response.body and b"thinking" not in response.body
    if stream:
        deltas = [e["choices"][0]["delta"] for e in data_of(response.body) if e != "[DONE]" and e["choices"]]
        assert "".join(d.get("content") or "" for d in deltas) == "Hello from mock"
    else:
        assert json.loads(response.body)["choices"][0]["message"]["content"] == "Hello from mock"


# -- usage accounting ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_usage_is_counted_with_cache_reads_and_writes(node_url, upstream, stream):
    upstream.default = Behavior(cache_read=5, cache_write=7)
    counts = await TokenCounts(node_url, "anthropic", LISTED).start()
    assert (await post(node_url + CHAT, chat_body(LISTED, stream=stream))).code == 200
    # prompt = 4 input words + 5 read from the cache + 7 written to it; "Hello from mock" is 3
    assert await counts.added() == {"prompt": 16, "completion": 3, "cache_read": 5, "cache_write": 7}


# -- refused before any call -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [("n", 2), ("logprobs", True), ("response_format", {"type": "json_object"})],
)
async def test_a_parameter_anthropic_cannot_take_is_a_400_before_any_call(node_url, upstream, field, value):
    response = await post(node_url + CHAT, chat_body(MODEL, **{field: value}))
    assert response.code == 400
    assert error_of(response)["param"] == field
    assert upstream.requests == []


async def test_response_format_text_is_accepted(node_url, upstream):
    body = await translated(node_url, upstream, response_format={"type": "text"})
    assert "response_format" not in body


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/responses", {"model": MODEL, "input": "hi"}),
        ("/v1/embeddings", {"model": MODEL, "input": "hi"}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi"}),
    ],
    ids=["responses", "embeddings", "completions"],
)
async def test_responses_embeddings_and_completions_to_anthropic_are_unsupported(node_url, upstream, path, body):
    response = await post(node_url + path, body)
    assert response.code == 400
    error = error_of(response)
    assert error["code"] == "unsupported_endpoint"
    assert "anthropic" in error["message"]
    assert upstream.requests == []


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
async def test_an_embeddings_fallback_to_anthropic_is_skipped(node_url, upstream):
    upstream.set_behavior("x", Behavior(status=503, error_message="down"))
    body = {"model": "openai/x", "input": "hi", "fallbacks": ["anthropic/y", "groq/z"]}
    response = await post(node_url + "/v1/embeddings", body)
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "groq/z"
    assert [(r.path, r.json["model"]) for r in upstream.requests] == [("/v1/embeddings", "x"), ("/v1/embeddings", "z")]


# -- fallbacks across dialects ---------------------------------------------------------------------------------------


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_openai_failure_falls_back_to_anthropic_in_chat_shape(node_url, upstream, stream):
    upstream.set_behavior("down", Behavior(status=503, error_message="down"))
    response = await post(node_url + CHAT, chat_body("openai/down", stream=stream, fallbacks=["anthropic/up"]))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "anthropic/up"
    assert [(r.path, r.json["model"]) for r in upstream.requests] == [
        ("/v1/chat/completions", "down"), ("/v1/messages", "up")
    ]
    if stream:
        events = data_of(response.body)
        assert events[-1] == "[DONE]"
        assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "Hello from mock"
    else:
        answer = json.loads(response.body)
        assert answer["object"] == "chat.completion"
        assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hello from mock"}


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_anthropic_failure_falls_back_to_openai(node_url, upstream, stream):
    upstream.set_behavior("down", Behavior(status=503, error_message="down"))
    response = await post(node_url + CHAT, chat_body("anthropic/down", stream=stream, fallbacks=["openai/up"]))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "openai/up"
    assert [(r.path, r.json["model"]) for r in upstream.requests] == [
        ("/v1/messages", "down"), ("/v1/chat/completions", "up")
    ]
    assert upstream.requests[1].headers["authorization"] == "Bearer " + SECRETS["OPENAI_API_KEY"]


# -- upstream errors from Anthropic ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_anthropic_400_keeps_its_status_and_message(node_url, upstream, stream):
    upstream.default = Behavior(status=400, error_message="max_tokens: must be at most 8192")
    response = await post(node_url + CHAT, chat_body(MODEL, stream=stream))
    assert response.code == 400
    error = error_of(response)
    assert error["message"] == "Error from anthropic API: max_tokens: must be at most 8192"
    assert error["type"] == "invalid_request_error"


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
async def test_a_529_is_passed_back_with_its_status_and_retry_after(node_url, upstream):
    upstream.default = Behavior(status=529, error_message="Overloaded", headers={"Retry-After": "3"})
    response = await post(node_url + CHAT, chat_body(MODEL))
    assert response.code == 529
    error = error_of(response)
    assert error["message"] == "Error from anthropic API: Overloaded"
    assert error["type"] == "overloaded_error"
    assert response.headers.get("Retry-After") == "3"


@pytest.mark.node_env(UPSTREAM_RETRIES="2")
async def test_a_529_is_retried_like_a_503(node_url, upstream):
    upstream.default = Behavior(status=529, error_message="Overloaded")
    response = await post(node_url + CHAT, chat_body(MODEL))
    assert response.code == 529
    assert len(upstream.requests) == 3  # the call and UPSTREAM_RETRIES retries


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
async def test_a_529_falls_back(node_url, upstream):
    upstream.set_behavior("busy", Behavior(status=529, error_message="Overloaded"))
    response = await post(node_url + CHAT, chat_body("anthropic/busy", fallbacks=["groq/z"]))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "groq/z"


@pytest.mark.node_env(UPSTREAM_RETRIES="0", CIRCUIT_FAILURES="1", CIRCUIT_COOLDOWN="60")
async def test_a_529_counts_against_the_circuit(node_url, upstream):
    upstream.default = Behavior(status=529, error_message="Overloaded")
    assert (await post(node_url + CHAT, chat_body(MODEL))).code == 529
    response = await post(node_url + CHAT, chat_body(MODEL))
    assert response.code == 503
    assert error_of(response)["code"] == "provider_unavailable"
    assert len(upstream.requests) == 1
    assert json.loads((await get(node_url + "/health")).body)["providers"]["anthropic"] == "down"


@pytest.mark.node_env(UPSTREAM_RETRIES="1")
async def test_a_429s_retry_after_is_waited_for_and_passed_back(node_url, upstream):
    upstream.default = Behavior(status=429, error_message="rate limited", headers={"retry-after": "1"})
    started = time.monotonic()
    response = await post(node_url + CHAT, chat_body(MODEL))
    assert response.code == 429
    assert response.headers["Retry-After"] == "1"
    assert error_of(response)["type"] == "rate_limit_error"
    first, second = upstream.requests
    assert second.received_at - first.received_at >= 0.9  # the retry waited for the upstream's Retry-After
    assert time.monotonic() - started >= 0.9


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_error_echoing_the_key_never_shows_it(node_url, upstream, stream):
    upstream.default = Behavior(status=401, error_message=f"invalid x-api-key: {KEY}")
    response = await post(node_url + CHAT, chat_body(MODEL, stream=stream))
    assert response.code == 401
    everything = response.body.decode() + repr(sorted(response.headers.get_all()))
    assert KEY not in everything and KEY[-10:] not in everything and KEY[:10] not in everything
    assert error_of(response)["message"].startswith("Error from anthropic API: invalid x-api-key")


# -- a stream the upstream drops -------------------------------------------------------------------------------------


async def test_a_dropped_translated_stream_ends_with_one_chat_error_event(node_url, upstream):
    # message_start, content_block_start, ping, one text delta, then the connection breaks
    upstream.default = Behavior(content="one two three four", chunks=4, drop_after_chunks=4)
    response = await post(node_url + CHAT, chat_body(MODEL, stream=True))
    assert response.code == 200
    events = data_of(response.body)
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and events[-1] is errors[0]
    assert set(errors[0]["error"]) >= {"message", "type", "code"}
    assert "anthropic" in errors[0]["error"]["message"]
    assert "[DONE]" not in events
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"


# -- key pools -------------------------------------------------------------------------------------------------------


POOL = ("sk-ant-one-SECRET-1111", "sk-ant-two-SECRET-2222")


@pytest.mark.node_env(ANTHROPIC_API_KEY=",".join(POOL))
async def test_a_pools_keys_take_turns_as_x_api_key(node_url, upstream):
    for _ in range(3):
        assert (await post(node_url + CHAT, chat_body(MODEL))).code == 200
    assert [r.headers["x-api-key"] for r in upstream.requests] == [POOL[0], POOL[1], POOL[0]]
    assert all("authorization" not in r.headers for r in upstream.requests)


@pytest.mark.node_env(ANTHROPIC_API_KEY=",".join(POOL), UPSTREAM_RETRIES="0")
async def test_a_429_on_one_key_moves_the_attempt_to_the_other(node_url, upstream):
    upstream.set_key_behavior("1111", Behavior(status=429, error_message="slow down"))
    response = await post(node_url + CHAT, chat_body(MODEL))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == MODEL
    assert [r.headers["x-api-key"] for r in upstream.requests] == [POOL[0], POOL[1]]


# -- a custom provider that speaks Messages --------------------------------------------------------------------------


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")  # the mock upstream is on loopback
async def test_a_custom_provider_with_api_anthropic_speaks_messages(node_url, upstream):
    provider = {"base_url": upstream.base_url, "api": "anthropic", "api_key": "k"}
    response = await post(node_url + CHAT, chat_body("claude-custom", model_provider=provider))
    assert response.code == 200
    assert json.loads(response.body)["choices"][0]["message"]["content"] == "Hello from mock"
    (seen,) = upstream.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "k" and "authorization" not in seen.headers
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.json["model"] == "claude-custom" and "model_provider" not in seen.json


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")
async def test_an_unknown_custom_api_is_a_400_naming_model_provider_api(node_url, upstream):
    provider = {"base_url": upstream.base_url, "api": "bogus", "api_key": "k"}
    response = await post(node_url + CHAT, chat_body("claude-custom", model_provider=provider))
    assert response.code == 400
    assert error_of(response)["param"] == "model_provider.api"
    assert upstream.requests == []


# -- verify and eval -------------------------------------------------------------------------------------------------


async def test_verify_forces_the_verify_statement_tool_in_anthropic_terms(node_url, upstream):
    arguments = json.dumps({"is_correct": True, "reason": "r"})
    upstream.default = Behavior(content="", tool_call={"name": "verify_statement", "arguments": arguments})
    response = await post(node_url + "/v1/verify", {"model": MODEL, "messages": USER})
    assert response.code == 200
    assert json.loads(response.body) == {"result": "yes", "content": "r"}
    body = sent(upstream)
    (tool,) = body["tools"]
    assert tool["name"] == "verify_statement"
    assert sorted(tool["input_schema"]["required"]) == ["is_correct", "reason"]
    assert body["tool_choice"] == {"type": "tool", "name": "verify_statement"}
    assert "verify_statement" in body["system"]


async def test_an_eval_cell_reads_the_anthropic_answer(node_url, upstream):
    upstream.default = Behavior(content="Maybe Later.")
    body = {"csv": "q\nIs the sky blue?\n", "models": [MODEL], "eval_system_prompt": "Answer yes or no."}
    response = await post(node_url + "/v1/eval", body)
    assert response.code == 200
    assert response.body.decode().splitlines() == [f"q,{MODEL}", "Is the sky blue?,maybe later"]
    seen = sent(upstream)
    assert seen["system"] == "Answer yes or no."
    assert seen["messages"] == [{"role": "user", "content": "q:\n Is the sky blue?\n\n\n"}]
