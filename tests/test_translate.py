"""The chat -> Messages translator (utils.translate.chat_to_messages) as plain functions: requests, JSON answers, streams."""

from __future__ import annotations

import json
from typing import Any

import pytest

from models.errors import ApiError
from models.usage import Usage
from utils.translate import ChatStream, chat_completion, check_supported, messages_body
from utils.translate.common import CUT_SHORT

MODEL = "claude-sonnet-4-5"


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def translate(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return messages_body(chat(*messages, **fields), 4096)


def refused(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        messages_body(body, 4096)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


# ---------------------------------------------------------------------------------------------------------------------
# Parameters the anthropic provider cannot take


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
    ],
)
def test_unsupported_parameters_are_a_400_naming_them(fields: dict[str, Any], param: str) -> None:
    body = chat(user("hi"), **fields)
    with pytest.raises(ApiError) as caught:
        check_supported(body)
    error = caught.value
    assert error.status == 400 and error.param == param
    assert f"'{param}'" in error.message and "anthropic provider cannot take" in error.message
    assert refused(body).param == param  # messages_body checks first


@pytest.mark.parametrize("fields", [{"n": 1}, {"n": None}, {"logprobs": False}, {"response_format": {"type": "text"}}, {}])
def test_supported_values_pass(fields: dict[str, Any]) -> None:
    check_supported(chat(user("hi"), **fields))
    messages_body(chat(user("hi"), **fields), 4096)


# ---------------------------------------------------------------------------------------------------------------------
# Requests


def test_a_minimal_request() -> None:
    assert translate(user("Hello")) == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 4096,
    }


def test_system_and_developer_messages_become_system_joined_with_a_blank_line() -> None:
    body = translate(
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}, {"type": "text", "text": "No lists."}]},
        user("Hello"),
        {"role": "system", "content": "Late rule."},
    )
    assert body["system"] == "You are terse.\n\nAnswer in French.\n\nNo lists.\n\nLate rule."
    assert body["messages"] == [{"role": "user", "content": "Hello"}]


def test_no_system_key_without_system_messages() -> None:
    assert "system" not in translate(user("Hello"))


def test_content_parts_become_blocks() -> None:
    body = translate(
        user(
            [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
            ]
        )
    )
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


def test_assistant_string_content_stays_a_string() -> None:
    body = translate(user("Hi"), {"role": "assistant", "content": "Hello!"}, user("Bye"))
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]


def test_consecutive_user_turns_stay_as_they_are() -> None:
    body = translate(user("one"), user("two"))
    assert body["messages"] == [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}]


def weather_call(call_id: str, city: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}


def test_tool_calls_and_tool_messages() -> None:
    body = translate(
        user("Weather in Paris and Rome?"),
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [weather_call("call_1", "Paris"), weather_call("call_2", "Rome")],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {
            "role": "tool",
            "tool_call_id": "call_2",
            "content": [{"type": "text", "text": "22C"}, {"type": "text", "text": "clear"}],
        },
        user("Thanks, and tomorrow?"),
        user("Also Oslo."),
    )
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "22C\nclear"},
                {"type": "text", "text": "Thanks, and tomorrow?"},
            ],
        },
        {"role": "user", "content": "Also Oslo."},
    ]


def test_assistant_with_only_tool_calls_has_no_text_block() -> None:
    for content in (None, ""):
        body = translate(user("Hi"), {"role": "assistant", "content": content, "tool_calls": [weather_call("c1", "Oslo")]})
        assert body["messages"][1]["content"] == [
            {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Oslo"}}
        ]


def test_tool_messages_then_assistant_start_a_new_turn() -> None:
    body = translate(
        user("Hi"),
        {"role": "assistant", "content": None, "tool_calls": [weather_call("c1", "Oslo")]},
        {"role": "tool", "tool_call_id": "c1", "content": "cold"},
        {"role": "assistant", "content": "It is cold."},
        user([{"type": "text", "text": "Thanks"}]),
    )
    assert body["messages"][2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": "cold"}]}
    assert body["messages"][3] == {"role": "assistant", "content": "It is cold."}
    assert body["messages"][4] == {"role": "user", "content": [{"type": "text", "text": "Thanks"}]}


def test_a_user_part_array_after_tool_results_joins_the_turn() -> None:
    body = translate(
        user("Hi"),
        {"role": "assistant", "tool_calls": [weather_call("c1", "Oslo")]},
        {"role": "tool", "tool_call_id": "c1", "content": "cold"},
        user([{"type": "text", "text": "See"}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]),
    )
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "cold"},
        {"type": "text", "text": "See"},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
    ]


@pytest.mark.parametrize("arguments", ["[1, 2]", "not json", '"text"', "42"])
def test_tool_call_arguments_that_are_not_an_object_are_a_400(arguments: str) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    error = refused(
        chat(user("Hi"), {"role": "assistant", "tool_calls": [{"id": "c0", "function": {"name": "f", "arguments": "{}"}}, call]})
    )
    assert error.param == "messages[1].tool_calls[1].function.arguments"


def test_tools_and_tool_choice() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ]
    body = translate(user("Hi"), tools=tools)
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body
    expected = {
        "auto": {"type": "auto"},
        "required": {"type": "any"},
        "none": {"type": "none"},
    }
    for choice, mapped in expected.items():
        assert translate(user("Hi"), tools=tools, tool_choice=choice)["tool_choice"] == mapped
    forced = {"type": "function", "function": {"name": "now"}}
    assert translate(user("Hi"), tools=tools, tool_choice=forced)["tool_choice"] == {"type": "tool", "name": "now"}


def test_parallel_tool_calls_false() -> None:
    tools = [{"type": "function", "function": {"name": "now"}}]
    assert translate(user("Hi"), tools=tools, parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert translate(user("Hi"), tools=tools, tool_choice="required", parallel_tool_calls=False)["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }
    assert translate(user("Hi"), tools=tools, tool_choice="none", parallel_tool_calls=False)["tool_choice"] == {"type": "none"}
    assert "tool_choice" not in translate(user("Hi"), tools=tools, parallel_tool_calls=True)


def test_stop_sampling_user_and_stream() -> None:
    body = translate(user("Hi"), stop="END", temperature=0.2, top_p=0.9, stream=True, user="user-42")
    assert body["stop_sequences"] == ["END"]
    assert body["temperature"] == 0.2 and body["top_p"] == 0.9 and body["stream"] is True
    assert body["metadata"] == {"user_id": "user-42"}
    assert translate(user("Hi"), stop=["a", "b"])["stop_sequences"] == ["a", "b"]


def test_max_tokens_order() -> None:
    assert translate(user("Hi"), max_tokens=10, max_completion_tokens=20)["max_tokens"] == 10
    assert translate(user("Hi"), max_completion_tokens=20)["max_tokens"] == 20
    assert messages_body(chat(user("Hi")), 1234)["max_tokens"] == 1234


def test_other_fields_are_dropped() -> None:
    body = translate(
        user("Hi"),
        stream=True,
        stream_options={"include_usage": True},
        seed=7,
        frequency_penalty=0.5,
        presence_penalty=0.1,
        logit_bias={"1": 2},
        n=1,
        logprobs=False,
        response_format={"type": "text"},
        service_tier="auto",
    )
    assert set(body) == {"model", "messages", "max_tokens", "stream"}


def test_the_chat_body_is_not_changed() -> None:
    messages = [
        user("Hi"),
        {"role": "assistant", "tool_calls": [weather_call("c1", "Oslo")]},
        {"role": "tool", "tool_call_id": "c1", "content": "x"},
    ]
    body = chat(*messages, tools=[{"type": "function", "function": {"name": "get_weather"}}], parallel_tool_calls=False)
    before = json.dumps(body)
    messages_body(body, 4096)
    assert json.dumps(body) == before


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (user(42), "messages[0].content"),
        (user(None), "messages[0].content"),
        (user(["text"]), "messages[0].content[0]"),
        (user([{"type": "input_audio", "input_audio": {}}]), "messages[0].content[0].type"),
        (user([{"type": "text", "text": 5}]), "messages[0].content[0].text"),
        (user([{"type": "image_url", "image_url": {}}]), "messages[0].content[0].image_url.url"),
        (user([{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]), "messages[0].content[0].image_url.url"),
        (
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x.test"}}]},
            "messages[0].content[0].type",
        ),
        ({"role": "function", "name": "f", "content": "x"}, "messages[0].role"),
        ({"role": "tool", "content": "x"}, "messages[0].tool_call_id"),
        ({"role": "assistant", "tool_calls": "nope"}, "messages[0].tool_calls"),
        ({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}, "messages[0].tool_calls[0].id"),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]},
            "messages[0].tool_calls[0].function.name",
        ),
        ("not an object", "messages[0]"),
    ],
)
def test_malformed_messages_are_a_400_naming_the_field(message: Any, param: str) -> None:
    assert refused(chat(message)).param == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function"}}, "tool_choice"),
        ({"stop": ["a", 1]}, "stop"),
    ],
)
def test_malformed_fields_are_a_400_naming_them(fields: dict[str, Any], param: str) -> None:
    assert refused(chat(user("Hi"), **fields)).param == param


# ---------------------------------------------------------------------------------------------------------------------
# JSON answers


def message(content: list[dict[str, Any]], stop_reason: str | None = "end_turn", usage: dict[str, Any] | None = None) -> bytes:
    answer: dict[str, Any] = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }
    if usage is not None:
        answer["usage"] = usage
    return json.dumps(answer).encode()


def test_a_text_answer() -> None:
    data, usage = chat_completion(
        message(
            [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there/é"}],
            usage={"input_tokens": 12, "output_tokens": 5},
        ),
        MODEL,
    )
    assert b"there/\xc3\xa9" in data  # slashes and UTF-8 as they are
    answer = json.loads(data)
    assert isinstance(answer.pop("created"), int)
    assert answer == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "model": "claude-sonnet-4-5-20250929",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hello there/é"}, "finish_reason": "stop", "logprobs": None}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17, "prompt_tokens_details": {"cached_tokens": 0}},
    }
    assert usage == Usage(12, 5, 0, 0)


def test_cache_tokens_count_in_the_prompt() -> None:
    usage_in = {"input_tokens": 10, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 200, "output_tokens": 7}
    data, usage = chat_completion(message([{"type": "text", "text": "ok"}], usage=usage_in), MODEL)
    assert usage == Usage(1210, 7, 1000, 200)
    assert json.loads(data)["usage"] == {
        "prompt_tokens": 1210,
        "completion_tokens": 7,
        "total_tokens": 1217,
        "prompt_tokens_details": {"cached_tokens": 1000},
    }


def test_null_cache_fields_count_zero_and_no_usage_is_none() -> None:
    _, usage = chat_completion(message([], usage={"input_tokens": 3, "output_tokens": 1, "cache_read_input_tokens": None}), MODEL)
    assert usage == Usage(3, 1)
    data, usage = chat_completion(message([{"type": "text", "text": "x"}]), MODEL)
    assert usage is None and "usage" not in json.loads(data)


def test_tool_use_answer_and_dropped_thinking() -> None:
    content = [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "EqQBCgIYAhIM"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris", "unit": "c"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "now", "input": {}},
    ]
    data, _ = chat_completion(message(content, "tool_use"), MODEL)
    choice = json.loads(data)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    calls = choice["message"]["tool_calls"]
    assert calls[0]["id"] == "toolu_01A" and calls[0]["type"] == "function"
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert calls[1]["function"] == {"name": "now", "arguments": "{}"}
    assert "The user wants" not in data.decode()


def test_only_tool_use_has_null_content_and_text_has_no_tool_calls() -> None:
    data, _ = chat_completion(message([{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "tool_use"), MODEL)
    assert json.loads(data)["choices"][0]["message"]["content"] is None
    data, _ = chat_completion(message([{"type": "thinking", "thinking": "hmm", "signature": "s"}]), MODEL)
    assert json.loads(data)["choices"][0]["message"] == {"role": "assistant", "content": None}
    data, _ = chat_completion(message([{"type": "text", "text": "x"}]), MODEL)
    assert "tool_calls" not in json.loads(data)["choices"][0]["message"]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons(stop_reason: str | None, finish_reason: str) -> None:
    data, _ = chat_completion(message([{"type": "text", "text": "x"}], stop_reason), MODEL)
    assert json.loads(data)["choices"][0]["finish_reason"] == finish_reason


def test_the_model_argument_names_an_answer_without_one() -> None:
    answer = json.loads(message([{"type": "text", "text": "x"}]))
    del answer["model"]
    data, _ = chat_completion(json.dumps(answer).encode(), "fallback-model")
    assert json.loads(data)["model"] == "fallback-model"


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"<html>502</html>", b"[1, 2]", b'{"type": "message"}', b'{"content": "text"}', b'"\xff"']
)
def test_an_answer_that_is_not_a_message_is_a_502(data: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        chat_completion(data, MODEL)
    error = caught.value
    assert error.status == 502 and error.code == "upstream_invalid_json"
    assert "anthropic" in error.message and "invalid JSON" in error.message


# ---------------------------------------------------------------------------------------------------------------------
# Streams


def sse(event: str, data: dict[str, Any], newline: str = "\n") -> bytes:
    """One upstream event as Anthropic writes it (UTF-8 text unescaped)."""
    return f"event: {event}{newline}data: {json.dumps(data, ensure_ascii=False)}{newline}{newline}".encode()


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_01Stream",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000, "output_tokens": 1},
    },
}


def text_stream(newline: str = "\n") -> list[bytes]:
    """A realistic text answer, one event per item."""
    events = [
        ("message_start", MESSAGE_START),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ", wörld/ ☃"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 15},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return [sse(name, data, newline) for name, data in events]


def tool_stream() -> list[bytes]:
    """Thinking, text, then two tool calls whose arguments arrive in fragments."""
    events: list[dict[str, Any]] = [
        MESSAGE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Need the weather."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Checking."}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}},
        },
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": 'ris", "unit"'}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ': "c"}'}},
        {"type": "content_block_stop", "index": 2},
        {
            "type": "content_block_start",
            "index": 3,
            "content_block": {"type": "tool_use", "id": "toolu_01B", "name": "now", "input": {}},
        },
        {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        {"type": "content_block_stop", "index": 3},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 89}},
        {"type": "message_stop"},
    ]
    return [sse(event["type"], event) for event in events]


def chunks(output: bytes) -> list[Any]:
    """The data of each chat SSE event in ``output`` (``"[DONE]"`` as a string)."""
    assert output.endswith(b"\n\n") or not output
    out: list[Any] = []
    for event in output.decode().split("\n\n")[:-1]:
        assert event.startswith("data: ") and "\n" not in event
        data = event[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def run(events: list[bytes], include_usage: bool = False) -> tuple[ChatStream, list[bytes]]:
    """Feed each event as its own chunk; the output of each feed."""
    stream = ChatStream(MODEL, include_usage)
    outputs = [stream.feed(event) for event in events]
    assert stream.finish() == b""
    return stream, outputs


def test_a_text_stream() -> None:
    stream, outputs = run(text_stream())
    start, block_start, ping, hello, world, block_stop, delta, stop = outputs
    assert block_start == ping == block_stop == b""
    first = chunks(start)
    assert len(first) == 1
    created = first[0]["created"]
    assert isinstance(created, int)
    assert first == [
        {
            "id": "msg_01Stream",
            "object": "chat.completion.chunk",
            "created": created,
            "model": "claude-sonnet-4-5-20250929",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    ]
    assert chunks(hello)[0]["choices"] == [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]
    assert chunks(world)[0]["choices"][0]["delta"] == {"content": ", wörld/ ☃"}
    assert "wörld/ ☃".encode() in world  # UTF-8 and slashes written as they are
    last = chunks(delta)
    assert last[0]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert {chunk["id"] for chunk in chunks(b"".join(outputs)) if isinstance(chunk, dict)} == {"msg_01Stream"}
    assert chunks(stop) == ["[DONE]"]  # no usage chunk unless asked
    assert stream.usage == Usage(2125, 15, 2000, 100)


def test_usage_chunk_when_asked() -> None:
    stream, outputs = run(text_stream(), include_usage=True)
    final = chunks(outputs[-1])
    assert final[-1] == "[DONE]"
    usage_chunk = final[0]
    assert usage_chunk["choices"] == [] and usage_chunk["id"] == "msg_01Stream"
    assert usage_chunk["object"] == "chat.completion.chunk" and usage_chunk["model"] == "claude-sonnet-4-5-20250929"
    assert usage_chunk["usage"] == {
        "prompt_tokens": 2125,
        "completion_tokens": 15,
        "total_tokens": 2140,
        "prompt_tokens_details": {"cached_tokens": 2000},
    }


def test_usage_without_cache_fields_and_message_delta_replacing_counts() -> None:
    start = {
        "type": "message_start",
        "message": {"id": "msg_1", "model": "claude-haiku-4-5", "usage": {"input_tokens": 9, "output_tokens": 1}},
    }
    stream = ChatStream(MODEL, True)
    stream.feed(sse("message_start", start))
    assert stream.usage == Usage(9, 1, 0, 0)
    final = {"input_tokens": 40, "cache_read_input_tokens": 8, "cache_creation_input_tokens": None, "output_tokens": 30}
    stream.feed(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": final}))
    assert stream.usage == Usage(48, 30, 8, 0)
    out = chunks(stream.feed(sse("message_stop", {"type": "message_stop"})))
    assert out[0]["usage"] == {
        "prompt_tokens": 48,
        "completion_tokens": 30,
        "total_tokens": 78,
        "prompt_tokens_details": {"cached_tokens": 8},
    }


def test_a_stream_without_usage_reports_none() -> None:
    stream = ChatStream(MODEL, True)
    stream.feed(sse("message_start", {"type": "message_start", "message": {"id": "msg_1"}}))
    assert stream.usage is None
    assert chunks(stream.feed(sse("message_stop", {"type": "message_stop"}))) == ["[DONE]"]


def test_a_tool_stream() -> None:
    stream, outputs = run(tool_stream())
    events = chunks(b"".join(outputs))
    deltas = [event["choices"][0]["delta"] for event in events if isinstance(event, dict) and event["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": "Checking."}
    assert deltas[2] == {
        "tool_calls": [{"index": 0, "id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]
    }
    calls: dict[int, str] = {}
    for delta in deltas[3:]:
        for call in delta.get("tool_calls", []):
            calls[call["index"]] = calls.get(call["index"], "") + call["function"]["arguments"]
    assert json.loads(calls[0]) == {"city": "Paris", "unit": "c"}
    assert calls[1] == "{}"
    starts = [delta["tool_calls"][0] for delta in deltas if "tool_calls" in delta and "id" in delta["tool_calls"][0]]
    assert [(call["index"], call["id"], call["function"]["name"]) for call in starts] == [
        (0, "toolu_01A", "get_weather"),
        (1, "toolu_01B", "now"),
    ]
    assert all(
        set(delta["tool_calls"][0]) == {"index", "function"}
        for delta in deltas
        if "tool_calls" in delta and "id" not in delta["tool_calls"][0]
    )
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert events[-1] == "[DONE]"
    assert b"Need the weather" not in b"".join(outputs) and b"EqQBCgIYAhIM" not in b"".join(outputs)
    assert stream.usage == Usage(2125, 89, 2000, 100)


@pytest.mark.parametrize("events", [text_stream(), text_stream("\r\n"), tool_stream()], ids=["lf", "crlf", "tools"])
def test_byte_by_byte_equals_whole_and_each_event_is_out_when_complete(events: list[bytes]) -> None:
    whole = ChatStream(MODEL, True)
    expected = whole.feed(b"".join(events)) + whole.finish()
    stream = ChatStream(MODEL, True)
    got: list[bytes] = []
    for event in events:
        out = b""
        for position in range(len(event)):
            piece = stream.feed(event[position : position + 1])
            if position < len(event) - 1:
                assert piece == b"", "output before the event was complete"
            out += piece
        got.append(out)
    assert stream.finish() == b""
    # "created" may differ by a second between the two streams
    assert _without_created(b"".join(got)) == _without_created(expected)
    _, per_event = run(events, include_usage=True)
    assert [_without_created(out) for out in got] == [_without_created(out) for out in per_event]
    assert stream.usage == whole.usage


def _without_created(output: bytes) -> list[Any]:
    out = chunks(output)
    for chunk in out:
        if isinstance(chunk, dict):
            chunk.pop("created", None)
    return out


def test_arbitrary_splits_mid_line_and_mid_utf8() -> None:
    data = b"".join(text_stream())
    reference = _without_created(ChatStream(MODEL, False).feed(data))
    snowman = data.index("☃".encode())
    for cut in (1, 7, 20, snowman + 1, snowman + 2, len(data) - 1):
        stream = ChatStream(MODEL, False)
        out = stream.feed(data[:cut]) + stream.feed(data[cut:]) + stream.finish()
        assert _without_created(out) == reference


def test_several_events_in_one_chunk_come_out_together() -> None:
    events = text_stream()
    stream = ChatStream(MODEL, False)
    out = stream.feed(b"".join(events[:5]))
    assert [chunk["choices"][0]["delta"] for chunk in chunks(out)] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {"content": ", wörld/ ☃"},
    ]


def test_finish_translates_a_last_event_without_its_blank_line() -> None:
    stream = ChatStream(MODEL, False)
    events = text_stream()
    stream.feed(b"".join(events[:-1]))
    assert stream.feed(events[-1][:-1]) == b""  # "...}\n" with the blank line missing
    assert chunks(stream.finish()) == ["[DONE]"]
    assert stream.finish() == b""


def test_finish_of_a_message_that_never_stopped_is_an_error_event() -> None:
    stream = ChatStream(MODEL, True, mask=lambda text: text)
    events = text_stream()
    stopped = [event for event in events if b"message_stop" not in event]
    assert len(stopped) == len(events) - 1
    out = b"".join(stream.feed(event) for event in stopped)
    assert b"[DONE]" not in out
    assert chunks(stream.finish()) == [
        {"error": {"message": f"Error from anthropic API: {CUT_SHORT}", "type": "api_error", "param": None, "code": None}}
    ]
    assert stream.finish() == b""


def test_finish_after_an_error_event_or_before_any_message_adds_nothing() -> None:
    stream = ChatStream(MODEL, False)
    stream.feed(b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n')
    assert stream.finish() == b""
    assert ChatStream(MODEL, False).finish() == b""


def test_data_lines_without_event_lines() -> None:
    stream = ChatStream(MODEL, False)
    out = stream.feed(b"data: " + json.dumps(MESSAGE_START).encode() + b"\n\n: comment\n\n")
    assert chunks(out)[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_an_error_event() -> None:
    stream = ChatStream(MODEL, False)
    stream.feed(sse("message_start", MESSAGE_START))
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert chunks(stream.feed(sse("error", error))) == [
        {"error": {"message": "Error from anthropic API: Overloaded", "type": "overloaded_error", "param": None, "code": None}}
    ]


def test_chunks_before_message_start_still_have_the_chat_shape() -> None:
    stream = ChatStream("fallback-model", False)
    out = chunks(
        stream.feed(
            sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}})
        )
    )
    assert out[0]["model"] == "fallback-model" and out[0]["object"] == "chat.completion.chunk" and out[0]["id"]


def test_garbage_events_give_nothing() -> None:
    stream = ChatStream(MODEL, False)
    assert stream.feed(b'data: {not json\n\ndata: [1]\n\nevent: unknown\ndata: {"type": "mystery"}\n\n') == b""


def test_an_error_events_message_is_masked() -> None:
    stream = ChatStream(MODEL, False, mask=lambda text: text.replace("sk-ant-SECRET", "***"))
    stream.feed(sse("message_start", MESSAGE_START))
    error = {"type": "error", "error": {"type": "api_error", "message": "bad key sk-ant-SECRET"}}
    assert chunks(stream.feed(sse("error", error)))[0]["error"]["message"] == "Error from anthropic API: bad key ***"
