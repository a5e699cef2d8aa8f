"""The Claude Code harness (tests/claude_code.py) against the mock upstream's ``/v1/messages``, no node in between.

What Claude Code 2.1.328 sends, pinned here so that the node's ``/v1/messages`` can be held to it: one
``POST /v1/messages?beta=true`` a turn (no count_tokens, quota or title request with the harness's
settings), streamed, with ``anthropic-version``, an ``anthropic-beta`` list, ``X-Claude-Code-Session-Id``
and the bearer token; a body of model, messages, system (text blocks, some with ``cache_control``), tools,
metadata (``user_id``: a JSON string holding the session id), max_tokens, thinking, context_management,
output_config and ``stream: true``. The assertions pick the turns (requests with tools) so that an extra
request of a later version would not break them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.claude_code import VERSION, require_claude_code, run_claude
from tests.mock_upstream import Behavior, MockUpstream, Recorded

MODEL = "claude-sonnet-4-6"
TOKEN = "mira-claude-code-token-0001"

ANTHROPIC_VERSION = "2023-06-01"
ANTHROPIC_BETAS = [
    "claude-code-20250219",
    "interleaved-thinking-2025-05-14",
    "context-management-2025-06-27",
    "thinking-token-count-2026-05-13",
    "advanced-tool-use-2025-11-20",
    "effort-2025-11-24",
]
BODY_KEYS = {
    "model", "messages", "system", "tools", "metadata", "max_tokens", "thinking", "stream",
    "context_management", "output_config",
}  # fmt: skip


def base_url(upstream: MockUpstream) -> str:
    """The mock's root: Claude Code appends ``/v1/messages?beta=true`` itself."""
    return f"http://127.0.0.1:{upstream.port}"


def turns(upstream: MockUpstream) -> list[Recorded]:
    """The conversation's requests: ``/v1/messages`` with tools (not a side request of another kind)."""
    return [
        r
        for r in upstream.requests
        if r.method == "POST" and r.path == "/v1/messages" and isinstance(r.json, dict) and r.json.get("tools")
    ]


def text_of(content: Any) -> str:
    """A message's or a tool result's content as text: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def test_a_prompt_goes_to_v1_messages_and_the_answer_comes_back(
    upstream: MockUpstream, caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_claude_code()
    caplog.set_level(logging.INFO, logger="tornado.access")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's HOME, work and tmp directories go here

    run = run_claude(base_url(upstream), TOKEN, "Say hello", MODEL)

    assert run.returncode == 0, run.describe()
    assert run.data is not None, run.describe()
    assert run.data["type"] == "result" and run.data["subtype"] == "success"
    assert run.data["result"] == "Hello from mock"
    assert run.data["is_error"] is False
    assert run.data["num_turns"] == 1
    assert run.data["usage"]["output_tokens"] == 3  # the mock's message_delta: the words of its content
    assert list(tmp_path.iterdir()) == []  # the temporary directories are gone

    # Every request went to /v1/messages, with ?beta=true (the mock records the path only: the access log has it).
    assert all(r.path == "/v1/messages" for r in upstream.requests), [r.path for r in upstream.requests]
    logged = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
    assert any("POST /v1/messages?beta=true " in line for line in logged), logged
    [turn] = turns(upstream)

    headers = turn.headers
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert "x-api-key" not in headers
    assert headers["anthropic-version"] == ANTHROPIC_VERSION
    assert headers["anthropic-beta"].split(",") == ANTHROPIC_BETAS
    assert headers["x-claude-code-session-id"] == run.data["session_id"]
    assert headers["user-agent"].startswith(f"claude-cli/{VERSION} ")

    body = turn.json
    assert set(body) == BODY_KEYS
    assert body["model"] == MODEL
    assert body["stream"] is True
    assert body["max_tokens"] == 32000
    assert body["thinking"]["type"] == "adaptive"
    assert all(block["type"] == "text" and block["text"] for block in body["system"])
    assert any(block.get("cache_control") == {"type": "ephemeral"} for block in body["system"])
    assert all(tool["name"] and isinstance(tool["input_schema"], dict) for tool in body["tools"])
    assert "Bash" in {tool["name"] for tool in body["tools"]}
    assert any(tool.get("defer_loading") for tool in body["tools"])
    assert json.loads(body["metadata"]["user_id"])["session_id"] == run.data["session_id"]
    [message] = body["messages"]
    assert message["role"] == "user"
    assert text_of(message["content"]).endswith("Say hello")


def test_a_bash_tool_call_is_run_and_its_output_sent_back_as_a_tool_result(upstream: MockUpstream) -> None:
    require_claude_code()
    command = {"command": "echo mira-tool-ok", "description": "echo"}
    upstream.push(Behavior(content="", tool_call={"name": "Bash", "arguments": json.dumps(command)}))
    upstream.push(Behavior(content="The command printed mira-tool-ok."))

    run = run_claude(base_url(upstream), TOKEN, "Run echo mira-tool-ok", MODEL, allowed_tools="Bash(echo:*)")

    assert run.returncode == 0, run.describe()
    assert run.data is not None, run.describe()
    assert run.data["result"] == "The command printed mira-tool-ok."
    assert run.data["is_error"] is False
    assert run.data["num_turns"] == 2
    assert run.data["permission_denials"] == []

    first, second = turns(upstream)
    assert first.headers["x-claude-code-session-id"] == second.headers["x-claude-code-session-id"]
    # The second turn carries the first one's tool_use back, then the tool_result for it.
    assistant, result = second.json["messages"][-2:]
    assert assistant["role"] == "assistant" and result["role"] == "user"
    [tool_use] = [b for b in assistant["content"] if b["type"] == "tool_use"]
    assert tool_use["name"] == "Bash" and tool_use["input"] == command
    assert tool_use["id"].startswith("toolu_mock_")
    [tool_result] = [b for b in result["content"] if b["type"] == "tool_result"]
    assert tool_result["tool_use_id"] == tool_use["id"]
    assert not tool_result.get("is_error")
    assert "mira-tool-ok" in text_of(tool_result["content"])
