"""The Messages -> chat translator (utils.translate.messages_to_chat) as plain functions: requests, JSON answers, streams."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from models.errors import ApiError
from models.usage import Usage
from utils.translate import MessagesStream, chat_body, count_tokens_estimate, error_event, messages_answer
from utils.translate.common import CUT_SHORT

UPSTREAM_MODEL = "gpt-4o"
CLIENT_MODEL = "openai/gpt-4o"
BILLING = "x-anthropic-billing-header: cc_version=2.1.12.a1b; cc_entrypoint=cli; cch=3f2a9;"


def request(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": UPSTREAM_MODEL, "max_tokens": 1024, "messages": list(messages), **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def text(value: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": value, **extra}


def translate(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return chat_body(request(*messages, **fields))


def chat_messages(*messages: dict[str, Any], **fields: Any) -> list[dict[str, Any]]:
    return translate(*messages, **fields)["messages"]


def refused(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        chat_body(body)
    assert caught.value.status == 400
    assert caught.value.type == "invalid_request_error"
    return caught.value


EPHEMERAL = {"type": "ephemeral"}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


# ---------------------------------------------------------------------------------------------------------------------
# The request


def test_a_minimal_request() -> None:
    assert translate(user("Hello")) == {
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 1024,
    }


def test_a_system_string_is_the_first_message() -> None:
    assert chat_messages(user("hi"), system="Be brief.")[0] == {"role": "system", "content": "Be brief."}


def test_system_blocks_are_joined_with_a_blank_line_and_the_billing_tag_is_left_out() -> None:
    system = [text(BILLING), text("You are Claude Code.", cache_control=EPHEMERAL), text("Be brief.", cache_control=EPHEMERAL)]
    assert chat_messages(user("hi"), system=system) == [
        {"role": "system", "content": "You are Claude Code.\n\nBe brief."},
        {"role": "user", "content": "hi"},
    ]


@pytest.mark.parametrize("system", ["", [], [text(BILLING)], [text("")]])
def test_no_system_message_when_nothing_is_left(system: Any) -> None:
    assert chat_messages(user("hi"), system=system) == [{"role": "user", "content": "hi"}]


def test_a_lone_text_block_is_a_string_and_several_are_parts_without_cache_control() -> None:
    assert chat_messages(user([text("one", cache_control=EPHEMERAL)])) == [{"role": "user", "content": "one"}]
    assert chat_messages(user([text("<system-reminder>x</system-reminder>"), text("two", cache_control=EPHEMERAL)])) == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": "two"}],
        }
    ]


def test_image_blocks_become_image_url_parts() -> None:
    content = [
        text("What is in these?"),
        {"type": "image", "source": PNG, "cache_control": EPHEMERAL},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    assert chat_messages(user(content)) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


def test_assistant_string_content_stays_a_string() -> None:
    assert chat_messages(user("hi"), assistant("Hello!"), user("bye"))[1] == {"role": "assistant", "content": "Hello!"}


def test_assistant_tool_use_blocks_become_tool_calls_and_thinking_is_dropped() -> None:
    content = [
        {"type": "thinking", "thinking": "Let me look.", "signature": "EqQBCgIYAhIM"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p"},
        text("Let me check "),
        text("both."),
        {"type": "tool_use", "id": "toolu_01A", "name": "Read", "input": {"file_path": "/src/é.py", "limit": 20}},
        {"type": "tool_use", "id": "toolu_01B", "name": "Now", "input": {}, "cache_control": EPHEMERAL},
    ]
    assert chat_messages(user("hi"), assistant(content))[1] == {
        "role": "assistant",
        "content": "Let me check both.",
        "tool_calls": [
            {
                "id": "toolu_01A",
                "type": "function",
                "function": {"name": "Read", "arguments": '{"file_path":"/src/é.py","limit":20}'},
            },
            {"id": "toolu_01B", "type": "function", "function": {"name": "Now", "arguments": "{}"}},
        ],
    }


def test_an_assistant_with_only_tool_use_has_null_content() -> None:
    content = [{"type": "tool_use", "id": "toolu_01A", "name": "Now", "input": {}}]
    message = chat_messages(user("hi"), assistant(content))[1]
    assert message["content"] is None and len(message["tool_calls"]) == 1


def test_an_assistant_with_only_thinking_has_empty_content() -> None:
    content = [{"type": "thinking", "thinking": "hmm", "signature": "x"}]
    assert chat_messages(user("hi"), assistant(content))[1] == {"role": "assistant", "content": ""}


def tool_use_turn(*ids: str) -> dict[str, Any]:
    return assistant(
        [{"type": "tool_use", "id": call_id, "name": "Read", "input": {"n": index}} for index, call_id in enumerate(ids)]
    )


def test_tool_results_come_first_and_their_images_lead_the_user_message() -> None:
    turn = user(
        [
            text("Here you go."),
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01A",
                "content": [text("screenshot taken"), {"type": "image", "source": PNG}, text("size 10x10")],
                "cache_control": EPHEMERAL,
            },
            {"type": "image", "source": {"type": "url", "url": "https://example.com/mine.png"}},
            {"type": "tool_result", "tool_use_id": "toolu_01B", "content": "file contents"},
        ]
    )
    assert chat_messages(user("go"), tool_use_turn("toolu_01A", "toolu_01B"), turn)[2:] == [
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "screenshot taken\nsize 10x10"},
        {"role": "tool", "tool_call_id": "toolu_01B", "content": "file contents"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "text", "text": "Here you go."},
                {"type": "image_url", "image_url": {"url": "https://example.com/mine.png"}},
            ],
        },
    ]


def test_a_turn_of_tool_results_alone_makes_no_user_message() -> None:
    turn = user([{"type": "tool_result", "tool_use_id": "toolu_01A", "content": [text("42")]}])
    assert chat_messages(user("go"), tool_use_turn("toolu_01A"), turn, assistant("The answer is 42."))[2:] == [
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "42"},
        {"role": "assistant", "content": "The answer is 42."},
    ]


def test_a_result_image_alone_still_makes_a_user_message() -> None:
    turn = user([{"type": "tool_result", "tool_use_id": "toolu_01A", "content": [{"type": "image", "source": PNG}]}])
    assert chat_messages(user("go"), tool_use_turn("toolu_01A"), turn)[2:] == [
        {"role": "tool", "tool_call_id": "toolu_01A", "content": ""},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
    ]


def test_tool_reference_blocks_are_tool_lines() -> None:
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_01S",
        "content": [
            text("Found 2 tools:"),
            {"type": "tool_reference", "tool_name": "mcp__github__create_issue"},
            {"type": "tool_reference", "tool_name": "NotebookEdit"},
        ],
    }
    assert chat_messages(user("go"), tool_use_turn("toolu_01S"), user([result]))[2] == {
        "role": "tool",
        "tool_call_id": "toolu_01S",
        "content": "Found 2 tools:\ntool: mcp__github__create_issue\ntool: NotebookEdit",
    }


def test_an_error_result_is_prefixed() -> None:
    results = [
        {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "File not found", "is_error": True},
        {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [text("exit 1")], "is_error": True},
        {"type": "tool_result", "tool_use_id": "toolu_01C", "is_error": False},
    ]
    tools = chat_messages(user("go"), tool_use_turn("toolu_01A", "toolu_01B", "toolu_01C"), user(results))[2:]
    assert [message["content"] for message in tools] == ["Error: File not found", "Error: exit 1", ""]


def test_tools_become_functions() -> None:
    tools = [
        {
            "name": "Read",
            "description": "Reads a file.",
            "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]},
            "cache_control": EPHEMERAL,
        },
        {"name": "mcp__github__create_issue", "input_schema": {"type": "object"}, "defer_loading": True},
        {"type": "custom", "name": "Now", "description": "The time."},
    ]
    assert translate(user("hi"), tools=tools)["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "description": "Reads a file.",
                "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}}, "required": ["file_path"]},
            },
        },
        {"type": "function", "function": {"name": "mcp__github__create_issue", "parameters": {"type": "object"}}},
        {
            "type": "function",
            "function": {"name": "Now", "description": "The time.", "parameters": {"type": "object", "properties": {}}},
        },
    ]


TOOLS = [{"name": "Read", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    body = translate(user("hi"), tools=TOOLS, tool_choice=choice)
    assert body["tool_choice"] == expected and "parallel_tool_calls" not in body


def test_disable_parallel_tool_use() -> None:
    body = translate(user("hi"), tools=TOOLS, tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is False
    body = translate(user("hi"), tools=TOOLS, tool_choice={"type": "any", "disable_parallel_tool_use": False})
    assert body["tool_choice"] == "required" and "parallel_tool_calls" not in body


def test_tool_options_without_tools_are_dropped() -> None:
    body = translate(user("hi"), tools=[], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert "tools" not in body and "tool_choice" not in body and "parallel_tool_calls" not in body


def test_sampling_stop_stream_and_user() -> None:
    user_id = json.dumps({"device_id": "9f3c", "account_uuid": "", "session_id": "4e1b"})
    body = translate(
        user("hi"),
        stop_sequences=["\n\nHuman:", "END"],
        temperature=0.2,
        top_p=0.9,
        stream=True,
        metadata={"user_id": user_id},
    )
    assert body == {
        "model": UPSTREAM_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1024,
        "stop": ["\n\nHuman:", "END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": user_id,
    }


def test_stream_false_has_no_stream_options_and_empty_values_are_left_out() -> None:
    body = translate(user("hi"), stream=False, stop_sequences=[], metadata={})
    assert body["stream"] is False
    assert "stream_options" not in body and "stop" not in body and "user" not in body


def test_anthropic_only_fields_are_dropped() -> None:
    body = translate(
        user("hi"),
        thinking={"type": "adaptive"},
        top_k=5,
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        output_config={"effort": "high"},
        service_tier="auto",
        container="container_01",
        mcp_servers=[{"type": "url", "url": "https://mcp.example.com", "name": "x"}],
        fallbacks=["openai/gpt-4o-mini"],
        some_future_field={"a": 1},
    )
    assert body == {"model": UPSTREAM_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1024}


def claude_code_request() -> dict[str, Any]:
    """What Claude Code 2.1 sends for a second turn after a tool call."""
    return {
        "model": UPSTREAM_MODEL,
        "max_tokens": 32000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "medium"},
        "metadata": {"user_id": '{"device_id":"d41d8cd9","account_uuid":"","session_id":"5f1e"}'},
        "system": [
            text(BILLING),
            text("You are Claude Code, Anthropic's official CLI for Claude.", cache_control=EPHEMERAL),
            text("Use the tools available to you.", cache_control=EPHEMERAL),
        ],
        "tools": [
            {"name": "Bash", "description": "Run a command.", "input_schema": {"type": "object", "properties": {}}},
            {"name": "ToolSearch", "description": "Find tools.", "input_schema": {"type": "object"}},
            {
                "name": "mcp__linear__list_issues",
                "description": "List issues.",
                "input_schema": {"type": "object"},
                "defer_loading": True,
            },
        ],
        "messages": [
            user(
                [text("<system-reminder>Today is 2026-01-10.</system-reminder>"), text("list the files", cache_control=EPHEMERAL)]
            ),
            assistant(
                [
                    {"type": "thinking", "thinking": "I should run ls.", "signature": "Eo8C"},
                    {"type": "tool_use", "id": "toolu_01Bash", "name": "Bash", "input": {"command": "ls"}},
                ]
            ),
            user([{"type": "tool_result", "tool_use_id": "toolu_01Bash", "content": "a.py\nb.py", "cache_control": EPHEMERAL}]),
        ],
    }


def test_a_claude_code_request() -> None:
    body = claude_code_request()
    original = copy.deepcopy(body)
    out = chat_body(body)
    assert body == original  # the request is not changed
    assert out["messages"] == [
        {
            "role": "system",
            "content": "You are Claude Code, Anthropic's official CLI for Claude.\n\nUse the tools available to you.",
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>Today is 2026-01-10.</system-reminder>"},
                {"type": "text", "text": "list the files"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "toolu_01Bash", "type": "function", "function": {"name": "Bash", "arguments": '{"command":"ls"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01Bash", "content": "a.py\nb.py"},
    ]
    assert [tool["function"]["name"] for tool in out["tools"]] == ["Bash", "ToolSearch", "mcp__linear__list_issues"]
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert out["user"] == original["metadata"]["user_id"] and out["max_tokens"] == 32000
    assert set(out) == {"model", "messages", "tools", "max_tokens", "stream", "stream_options", "user"}
    assert "cache_control" not in json.dumps(out) and "x-anthropic-billing-header" not in json.dumps(out)


@pytest.mark.parametrize(
    ("messages", "param", "named"),
    [
        (
            [user([{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}])],
            "messages[0].content[0].type",
            "'document'",
        ),
        (
            [user([text("see"), {"type": "search_result", "source": "s", "title": "t", "content": [text("x")]}])],
            "messages[0].content[1].type",
            "'search_result'",
        ),
        (
            [
                user("search"),
                assistant([{"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "x"}}]),
            ],
            "messages[1].content[0].type",
            "'server_tool_use'",
        ),
        (
            [user("s"), assistant([{"type": "web_search_tool_result", "tool_use_id": "srvtoolu_01", "content": []}])],
            "messages[1].content[0].type",
            "'web_search_tool_result'",
        ),
        (
            [user([{"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "document", "source": {}}]}])],
            "messages[0].content[0].content[0].type",
            "'document'",
        ),
        (
            [user([{"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "search_result"}]}])],
            "messages[0].content[0].content[0].type",
            "'search_result'",
        ),
        ([user([{"type": "tool_reference", "tool_name": "Read"}])], "messages[0].content[0].type", "'tool_reference'"),
        ([user([{"type": "tool_use", "id": "t", "name": "n", "input": {}}])], "messages[0].content[0].type", "'tool_use'"),
        ([user("a"), assistant([{"type": "image", "source": PNG}])], "messages[1].content[0].type", "'image'"),
    ],
)
def test_untranslatable_blocks_are_a_400_naming_the_type_and_where(
    messages: list[dict[str, Any]], param: str, named: str
) -> None:
    error = refused(request(*messages))
    assert error.param == param
    assert named in error.message and param in error.message


@pytest.mark.parametrize("kind", ["web_search_20250305", "bash_20250124", "text_editor_20250728", "code_execution_20250825"])
def test_a_server_tool_is_a_400_naming_it(kind: str) -> None:
    tools = [{"name": "Read", "input_schema": {"type": "object"}}, {"type": kind, "name": "tool"}]
    error = refused(request(user("hi"), tools=tools))
    assert error.param == "tools[1].type" and repr(kind) in error.message and "server tool" in error.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"messages": [user([text("a"), "b"])]}, "messages[0].content[1]"),
        ({"messages": [user([{"text": "no type"}])]}, "messages[0].content[0].type"),
        ({"messages": [user([{"type": "text", "text": 5}])]}, "messages[0].content[0].text"),
        ({"messages": [user(None)]}, "messages[0].content"),
        ({"messages": [user({"type": "text", "text": "x"})]}, "messages[0].content"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [user([{"type": "image", "source": {"type": "file", "file_id": "file_01"}}])]},
            "messages[0].content[0].source.type",
        ),
        ({"messages": [user([{"type": "image", "source": "x"}])]}, "messages[0].content[0].source"),
        (
            {"messages": [user([{"type": "image", "source": {"type": "base64", "data": "x"}}])]},
            "messages[0].content[0].source.media_type",
        ),
        ({"messages": [user([{"type": "image", "source": {"type": "url"}}])]}, "messages[0].content[0].source.url"),
        ({"messages": [user([{"type": "tool_result", "content": "x"}])]}, "messages[0].content[0].tool_use_id"),
        ({"messages": [user([{"type": "tool_result", "tool_use_id": "t", "content": 5}])]}, "messages[0].content[0].content"),
        (
            {"messages": [user([{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}])]},
            "messages[0].content[0].is_error",
        ),
        (
            {"messages": [user([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "tool_reference"}]}])]},
            "messages[0].content[0].content[0].tool_name",
        ),
        ({"messages": [assistant([{"type": "tool_use", "name": "n", "input": {}}])]}, "messages[0].content[0].id"),
        ({"messages": [assistant([{"type": "tool_use", "id": "t", "input": {}}])]}, "messages[0].content[0].name"),
        (
            {"messages": [assistant([{"type": "tool_use", "id": "t", "name": "n", "input": "{}"}])]},
            "messages[0].content[0].input",
        ),
        ({"system": [text("a"), {"type": "image", "source": PNG}]}, "system[1].type"),
        ({"system": 5}, "system"),
        ({"system": [{"type": "text"}]}, "system[0].text"),
        ({"tools": {"name": "x"}}, "tools"),
        ({"tools": ["Read"]}, "tools[0]"),
        ({"tools": [{"input_schema": {}}]}, "tools[0].name"),
        ({"tools": [{"name": "x", "description": 1}]}, "tools[0].description"),
        ({"tools": [{"name": "x", "input_schema": []}]}, "tools[0].input_schema"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": {"type": "required"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}}, "tool_choice.disable_parallel_tool_use"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": True}, "top_p"),
        ({"stream": "yes"}, "stream"),
        ({"metadata": "user"}, "metadata"),
        ({"metadata": {"user_id": 42}}, "metadata.user_id"),
        ({"messages": {"role": "user"}}, "messages"),
    ],
)
def test_malformed_shapes_are_a_400_naming_the_field(fields: dict[str, Any], param: str) -> None:
    body = {**request(user("hi")), **fields}
    error = refused(body)
    assert error.param == param and f"'{param}'" in error.message


# ---------------------------------------------------------------------------------------------------------------------
# The JSON answer


def completion(
    content: Any = "Hello!",
    finish_reason: Any = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    answer: dict[str, Any] = {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }
    if usage is not None:
        answer["usage"] = usage
    return json.dumps(answer).encode()


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def openai_usage(prompt: int, completion_tokens: int, cached: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached, "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": 0, "audio_tokens": 0}
    return usage


def test_a_text_answer() -> None:
    data, usage = messages_answer(completion("Hello there/é", usage=openai_usage(19, 10)), CLIENT_MODEL)
    assert b"there/\xc3\xa9" in data  # slashes and UTF-8 as they are
    answer = json.loads(data)
    answer_id = answer.pop("id")
    assert answer_id.startswith("msg_") and len(answer_id) > 10
    assert answer == {
        "type": "message",
        "role": "assistant",
        "model": CLIENT_MODEL,
        "content": [{"type": "text", "text": "Hello there/é"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 19, "output_tokens": 10, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
    }
    assert usage == Usage(19, 10, 0, 0)


def test_answer_ids_are_unique() -> None:
    first, _ = messages_answer(completion(), CLIENT_MODEL)
    second, _ = messages_answer(completion(), CLIENT_MODEL)
    assert json.loads(first)["id"] != json.loads(second)["id"]


def test_a_tool_call_answer() -> None:
    calls = [call("call_A", "Read", '{"file_path": "/a.py"}'), call("call_B", "Now", "")]
    data, _ = messages_answer(completion("Reading.", "tool_calls", calls), CLIENT_MODEL)
    answer = json.loads(data)
    assert answer["stop_reason"] == "tool_use"
    assert answer["content"] == [
        {"type": "text", "text": "Reading."},
        {"type": "tool_use", "id": "call_A", "name": "Read", "input": {"file_path": "/a.py"}},
        {"type": "tool_use", "id": "call_B", "name": "Now", "input": {}},
    ]


def test_null_or_empty_content_makes_no_text_block() -> None:
    data, _ = messages_answer(completion(None, "tool_calls", [call("call_A", "Now", "{}")]), CLIENT_MODEL)
    assert [block["type"] for block in json.loads(data)["content"]] == ["tool_use"]
    data, _ = messages_answer(completion(""), CLIENT_MODEL)
    assert json.loads(data)["content"] == []


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("eos", "end_turn"),
    ],
)
def test_finish_reasons(finish_reason: Any, stop_reason: str) -> None:
    data, _ = messages_answer(completion("x", finish_reason), CLIENT_MODEL)
    assert json.loads(data)["stop_reason"] == stop_reason


def test_tool_calls_with_a_stop_finish_stop_for_tool_use() -> None:
    data, _ = messages_answer(completion(None, "stop", [call("call_A", "Now", "{}")]), CLIENT_MODEL)
    assert json.loads(data)["stop_reason"] == "tool_use"


def test_usage_with_cached_tokens() -> None:
    data, usage = messages_answer(completion(usage=openai_usage(2006, 300, cached=1920)), CLIENT_MODEL)
    assert json.loads(data)["usage"] == {
        "input_tokens": 86,
        "output_tokens": 300,
        "cache_read_input_tokens": 1920,
        "cache_creation_input_tokens": 0,
    }
    assert usage == Usage(2006, 300, 1920, 0)


def test_no_usage_is_zeros_and_none() -> None:
    data, usage = messages_answer(completion(), CLIENT_MODEL)
    assert usage is None
    assert json.loads(data)["usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


@pytest.mark.parametrize("arguments", ["[1, 2]", '"text"', "{not json", "42"])
def test_tool_arguments_that_are_not_an_object_are_a_502_naming_the_tool(arguments: str) -> None:
    with pytest.raises(ApiError) as caught:
        messages_answer(completion(None, "tool_calls", [call("call_A", "Read", arguments)]), CLIENT_MODEL, provider="groq")
    error = caught.value
    assert error.status == 502 and error.type == "api_error" and error.code == "upstream_invalid_response"
    assert error.message == "groq API answered tool call arguments for 'Read' that are not a JSON object"


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"choices": []}', b'{"choices": [{"index": 0}]}', b'{"object": "chat.completion"}', b""],
)
def test_a_body_that_is_not_a_chat_completion_is_a_502(data: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        messages_answer(data, CLIENT_MODEL)
    error = caught.value
    assert error.status == 502 and error.code == "upstream_invalid_json"
    assert error.message == "upstream API answered with invalid JSON"


# ---------------------------------------------------------------------------------------------------------------------
# The stream

CHUNK_HEAD = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion.chunk",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "service_tier": "default",
    "system_fingerprint": "fp_eb9dce56a8",
}


def chunk(delta: dict[str, Any] | None = None, finish_reason: str | None = None) -> bytes:
    """One chat.completion.chunk event as OpenAI sends it with include_usage (``usage: null`` until the last)."""
    event = {
        **CHUNK_HEAD,
        "choices": [{"index": 0, "delta": {} if delta is None else delta, "logprobs": None, "finish_reason": finish_reason}],
        "usage": None,
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def first() -> bytes:
    return chunk({"role": "assistant", "content": "", "refusal": None})


def content(value: str) -> bytes:
    return chunk({"content": value})


def tool_start(index: int, call_id: str, name: str) -> bytes:
    delta = {"tool_calls": [{"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}
    return chunk(delta)


def arguments(index: int, fragment: str) -> bytes:
    return chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})


def usage_chunk(prompt: int, completion_tokens: int, cached: int = 0) -> bytes:
    event = {**CHUNK_HEAD, "choices": [], "usage": openai_usage(prompt, completion_tokens, cached)}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def parse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """The (event, data) pairs of Messages SSE bytes, checking each event's framing."""
    out = []
    assert data == b"" or data.endswith(b"\n\n")
    for raw in data.split(b"\n\n")[:-1]:
        lines = raw.split(b"\n")
        assert len(lines) == 2 and lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), raw
        name, payload = lines[0][7:].decode(), json.loads(lines[1][6:])
        assert payload["type"] == name
        out.append((name, payload))
    return out


def run(*events: bytes, finish: bool = True) -> tuple[MessagesStream, list[tuple[str, dict[str, Any]]]]:
    stream = MessagesStream(CLIENT_MODEL)
    data = stream.feed(b"".join(events))
    if finish:
        data += stream.finish()
    return stream, parse(data)


def message_start(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    name, payload = events[0]
    assert name == "message_start"
    message = payload["message"]
    assert message.pop("id").startswith("msg_")
    return payload


ZERO = {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}


def test_a_text_stream() -> None:
    stream, events = run(first(), content("Hello"), content(" there/é"), chunk({}, "stop"), usage_chunk(12, 3), DONE)
    assert message_start(events) == {
        "type": "message_start",
        "message": {
            "type": "message",
            "role": "assistant",
            "model": CLIENT_MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": ZERO,
        },
    }
    assert [payload for _, payload in events[1:]] == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there/é"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"input_tokens": 12, "output_tokens": 3, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0},
        },
        {"type": "message_stop"},
    ]
    assert stream.usage == Usage(12, 3, 0, 0) and stream.ended


TOOL_STREAM = (
    first(),
    content("Let me "),
    content("look."),
    tool_start(0, "call_A", "Read"),
    arguments(0, '{"file'),
    arguments(0, '_path": "/a'),
    arguments(0, '.py"}'),
    tool_start(1, "call_B", "Grep"),
    arguments(1, '{"pattern":'),
    arguments(1, ' "TODO"}'),
    chunk({}, "tool_calls"),
    usage_chunk(2006, 41, cached=1920),
    DONE,
)


def test_text_then_two_tool_calls() -> None:
    stream, events = run(*TOOL_STREAM)
    message_start(events)
    assert [payload for _, payload in events[1:]] == [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "look."}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "call_A", "name": "Read", "input": {}},
        },
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"file'}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '_path": "/a'}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '.py"}'}},
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "call_B", "name": "Grep", "input": {}},
        },
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"pattern":'}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ' "TODO"}'}},
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"input_tokens": 86, "output_tokens": 41, "cache_read_input_tokens": 1920, "cache_creation_input_tokens": 0},
        },
        {"type": "message_stop"},
    ]
    assert stream.usage == Usage(2006, 41, 1920, 0)


def events_of(data: bytes) -> list[bytes]:
    """The upstream events of ``data``, each with its blank line."""
    return [event + b"\n\n" for event in data.split(b"\n\n")[:-1]]


def test_fed_byte_by_byte_each_event_comes_out_of_the_feed_that_completes_it() -> None:
    whole = b"".join(TOOL_STREAM)
    by_event = MessagesStream(CLIENT_MODEL)
    expected = [by_event.feed(event) for event in events_of(whole)]
    assert sum(1 for out in expected if not out) == 2  # the finish chunk and the usage chunk write nothing

    stream = MessagesStream(CLIENT_MODEL)
    outputs = [stream.feed(whole[at : at + 1]) for at in range(len(whole))]
    ends = [at for at in range(len(whole)) if whole[: at + 1].endswith(b"\n\n")]
    assert [at for at, out in enumerate(outputs) if out] == [at for at, out in zip(ends, expected, strict=True) if out]
    assert stream.finish() == b""

    def without_ids(data: bytes) -> list[tuple[str, dict[str, Any]]]:
        events = parse(data)
        for name, payload in events:
            if name == "message_start":
                payload["message"].pop("id")
        return events

    assert [without_ids(outputs[at]) for at in ends] == [without_ids(out) for out in expected]
    assert without_ids(b"".join(outputs)) == without_ids(MessagesStream(CLIENT_MODEL).feed(whole))


def test_crlf_comments_and_reasoning_deltas() -> None:
    reasoning = chunk({"reasoning_content": "Thinking about it"}) + chunk({"reasoning": "more", "content": None})
    data = b": OPENROUTER PROCESSING\n\n" + first() + reasoning + content("Hi") + chunk({}, "stop") + DONE
    stream = MessagesStream(CLIENT_MODEL)
    out = b"".join(stream.feed(bytes([byte])) for byte in data.replace(b"\n", b"\r\n"))
    assert [name for name, _ in parse(out)] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_exactly_one_message_start_and_indexes_from_zero_in_order() -> None:
    stream, events = run(
        first(),
        first(),
        content("a"),
        tool_start(0, "call_A", "Now"),
        arguments(0, "{}"),
        content("b"),
        chunk({}, "stop"),
        DONE,
    )
    names = [name for name, _ in events]
    assert names.count("message_start") == 1 and names.count("message_stop") == 1
    starts = [(payload["index"], payload["content_block"]["type"]) for name, payload in events if name == "content_block_start"]
    assert starts == [(0, "text"), (1, "tool_use"), (2, "text")]
    stops = [payload["index"] for name, payload in events if name == "content_block_stop"]
    assert stops == [0, 1, 2]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"  # a provider that ends tool calls with "stop"


def test_done_without_chunks_still_makes_one_whole_message() -> None:
    _, events = run(DONE)
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert events[1][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": ZERO}


def test_nothing_after_done() -> None:
    stream = MessagesStream(CLIENT_MODEL)
    stream.feed(first() + content("a") + chunk({}, "length") + DONE)
    assert stream.ended
    assert stream.feed(content("more")) == b"" and stream.finish() == b""


def test_a_whole_tool_call_in_one_delta_and_arguments_before_the_name() -> None:
    whole = chunk(
        {"tool_calls": [{"index": 0, "id": "call_A", "type": "function", "function": {"name": "Read", "arguments": '{"a":1}'}}]}
    )
    early = chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"b":'}}]}) + chunk(
        {"tool_calls": [{"index": 1, "id": "call_B", "function": {"name": "Grep", "arguments": "2}"}}]}
    )
    _, events = run(first(), whole, early, chunk({}, "tool_calls"), DONE)
    blocks = [payload for name, payload in events if name.startswith("content_block")]
    assert blocks == [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "call_A", "name": "Read", "input": {}},
        },
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a":1}'}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "call_B", "name": "Grep", "input": {}},
        },
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"b":2}'}},
        {"type": "content_block_stop", "index": 1},
    ]


def test_the_usage_chunk_after_the_finish_chunk_is_in_message_delta() -> None:
    stream = MessagesStream(CLIENT_MODEL)
    out = stream.feed(first() + content("ok") + chunk({}, "stop"))
    assert [name for name, _ in parse(out)] == ["message_start", "content_block_start", "content_block_delta"]
    assert stream.usage is None
    assert stream.feed(usage_chunk(100, 7, cached=64)) == b""
    assert stream.usage == Usage(100, 7, 64, 0)
    events = parse(stream.feed(DONE))
    assert [name for name, _ in events] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[1][1]["usage"] == {
        "input_tokens": 36,
        "output_tokens": 7,
        "cache_read_input_tokens": 64,
        "cache_creation_input_tokens": 0,
    }


def test_finish_without_done_closes_the_message() -> None:
    stream = MessagesStream(CLIENT_MODEL)
    stream.feed(first() + content("ok") + chunk({}, "length") + usage_chunk(5, 1)[:-2])  # the last event lacks its blank line
    events = parse(stream.finish())
    assert [name for name, _ in events] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[1][1]["delta"]["stop_reason"] == "max_tokens" and events[1][1]["usage"]["input_tokens"] == 5
    assert stream.ended and stream.finish() == b""


def test_finish_without_a_finish_reason_is_an_error_not_a_whole_answer() -> None:
    stream = MessagesStream(CLIENT_MODEL, provider="groq")
    stream.feed(first() + content("cut off"))
    assert parse(stream.finish()) == [  # as an upstream error event ends it: the error alone, no message_stop
        ("error", {"type": "error", "error": {"type": "api_error", "message": f"Error from groq API: {CUT_SHORT}"}}),
    ]
    assert stream.ended and stream.finish() == b"" and stream.feed(content("late")) == b""


def test_finish_of_a_stream_that_never_began_writes_nothing() -> None:
    stream = MessagesStream(CLIENT_MODEL)
    stream.feed(b": keep-alive\n\n")
    assert stream.finish() == b"" and not stream.ended


def error_chunk(error: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


def test_an_upstream_error_event_ends_the_stream() -> None:
    stream = MessagesStream(CLIENT_MODEL, mask=lambda text: text.replace("sk-secret-123", "sk-...123"), provider="openrouter")
    error = error_chunk({"message": "Provider returned error with key sk-secret-123", "code": 502})
    out = stream.feed(first() + content("partial") + error + content("after") + DONE)
    events = parse(out)
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "api_error", "message": "Error from openrouter API: Provider returned error with key sk-...123"},
        },
    )
    assert [name for name, _ in events].count("message_stop") == 0 and b"after" not in out
    assert stream.ended and stream.feed(content("x")) == b"" and stream.finish() == b""


@pytest.mark.parametrize(
    "error",
    [
        {"message": "Overloaded", "type": "overloaded_error"},
        {"message": "busy", "code": "model_overloaded"},
        {"message": "x", "code": 529},
    ],
)
def test_an_overloaded_error(error: dict[str, Any]) -> None:
    _, events = run(first(), error_chunk(error))
    assert events[-1][1]["error"]["type"] == "overloaded_error"


def test_error_event() -> None:
    assert error_event("api_error", "Error from groq API: timed out/é") == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
        b'"message":"Error from groq API: timed out/\xc3\xa9"}}\n\n'
    )


# ---------------------------------------------------------------------------------------------------------------------
# count_tokens


def test_count_tokens_estimate() -> None:
    tool = {"name": "Read", "input_schema": {"type": "object"}}
    body = request(
        user("héllo"),  # 6 bytes
        assistant([text("abc"), {"type": "tool_use", "id": "t", "name": "Read", "input": {"a": 1}}]),  # 3 + 7
        user([{"type": "tool_result", "tool_use_id": "t", "content": [text("1234")]}, {"type": "image", "source": PNG}]),  # 4
        system=[text(BILLING), text("sys")],  # 3
        tools=[tool],
    )
    size = 6 + 3 + len(b'{"a":1}') + 4 + 3 + len(json.dumps(tool, separators=(",", ":")).encode())
    assert count_tokens_estimate(body) == math.ceil(size / 4)
    assert count_tokens_estimate(request(user("abcd"))) == 1
    assert count_tokens_estimate(request(user("abcde"))) == 2
    assert count_tokens_estimate({"messages": [None, user(5), {"content": [1, {"type": "text"}]}]}) == 0
