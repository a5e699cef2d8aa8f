"""Claude Code through the node: headless runs against ``/v1/messages``, relayed and translated, with a tool round trip each.

The node runs in process, every provider at the mock upstream, with an alias file that sends the Claude
model names Claude Code uses to a Messages provider (relayed) and to an OpenAI-chat one (translated).
Claude Code runs in a worker thread (tests/claude_code.py), so the node's event loop serves it meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.claude_code import ClaudeRun, require_claude_code, run_claude
from tests.conftest import SECRETS
from tests.mock_upstream import Behavior, MockUpstream, Recorded

pytestmark = pytest.mark.gen_test(timeout=180)

TOKEN = "mira-service-key-for-claude-code"
RELAYED = "claude-sonnet-4-6"  # -> anthropic/claude-sonnet-4-6: the request relayed as it is
TRANSLATED = "claude-haiku-4-5"  # -> openai/gpt-mock: translated to chat and back
ALIASES = {RELAYED: "anthropic/claude-sonnet-4-6", TRANSLATED: "openai/gpt-mock"}
ALIASES_FILE = Path(__file__).with_name("claude_code_aliases.json")
COMMAND = {"command": "echo mira-tool-ok", "description": "echo"}


@pytest.fixture
def aliases() -> Iterator[Path]:
    """MODEL_ALIASES_FILE for the node (ask for it before the node's fixtures)."""
    ALIASES_FILE.write_text(json.dumps(ALIASES))
    yield ALIASES_FILE
    ALIASES_FILE.unlink()


@pytest.fixture
def node_env(node_env: dict[str, str], aliases: Path) -> dict[str, str]:
    """The in-process node: the alias file, and the service key Claude Code sends as its bearer token."""
    return {**node_env, "MODEL_ALIASES_FILE": str(aliases), "SERVICE_API_KEY": TOKEN}


async def claude(node_url: str, prompt: str, model: str, allowed_tools: str | None = None) -> ClaudeRun:
    """One headless Claude Code run against the node, off the event loop the node serves on."""
    require_claude_code()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: run_claude(node_url, TOKEN, prompt, model, allowed_tools))


def calls(upstream: MockUpstream, path: str) -> list[Recorded]:
    """The upstream calls of the conversation's turns (requests with tools) at ``path``."""
    return [r for r in upstream.requests if r.path == path and isinstance(r.json, dict) and r.json.get("tools")]


def result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict))


async def test_claude_code_through_the_node_to_a_messages_provider(node_url: str, upstream: MockUpstream) -> None:
    run = await claude(node_url, "Say hello", RELAYED)
    assert run.returncode == 0, run.describe()
    assert run.data is not None and run.data["result"] == "Hello from mock" and run.data["is_error"] is False
    [call] = calls(upstream, "/v1/messages")
    assert call.headers["x-api-key"] == SECRETS["ANTHROPIC_API_KEY"]  # the provider's key, not the client's token
    assert "authorization" not in call.headers
    assert call.json["model"] == "claude-sonnet-4-6"
    assert call.json["thinking"]["type"] == "adaptive"  # relayed as it came
    assert call.headers["anthropic-beta"].startswith("claude-code-")


async def test_claude_code_through_the_node_to_a_chat_provider(node_url: str, upstream: MockUpstream) -> None:
    run = await claude(node_url, "Say hello", TRANSLATED)
    assert run.returncode == 0, run.describe()
    assert run.data is not None and run.data["result"] == "Hello from mock" and run.data["is_error"] is False
    assert run.data["usage"]["output_tokens"] == 3
    [call] = calls(upstream, "/v1/chat/completions")
    assert call.headers["authorization"] == "Bearer " + SECRETS["OPENAI_API_KEY"]
    body = call.json
    assert body["model"] == "gpt-mock" and body["stream"] is True
    assert body["messages"][0]["role"] == "system"
    assert "x-anthropic-billing-header" not in body["messages"][0]["content"]  # left out: the cache keeps hitting
    assert {tool["function"]["name"] for tool in body["tools"]} >= {"Bash"}
    assert "thinking" not in body and "context_management" not in body


async def test_a_tool_round_trip_relayed(node_url: str, upstream: MockUpstream) -> None:
    upstream.push(Behavior(content="", tool_call={"name": "Bash", "arguments": json.dumps(COMMAND)}))
    upstream.push(Behavior(content="The command printed mira-tool-ok."))
    run = await claude(node_url, "Run echo mira-tool-ok", RELAYED, allowed_tools="Bash(echo:*)")
    assert run.returncode == 0, run.describe()
    assert run.data is not None and run.data["result"] == "The command printed mira-tool-ok."
    first, second = calls(upstream, "/v1/messages")
    assistant, result = second.json["messages"][-2:]
    [tool_use] = [b for b in assistant["content"] if b["type"] == "tool_use"]
    assert tool_use["name"] == "Bash" and tool_use["input"] == COMMAND
    [tool_result] = [b for b in result["content"] if b["type"] == "tool_result"]
    assert tool_result["tool_use_id"] == tool_use["id"]
    assert "mira-tool-ok" in result_text(tool_result["content"])


async def test_a_tool_round_trip_translated(node_url: str, upstream: MockUpstream) -> None:
    upstream.push(Behavior(content="", tool_call={"name": "Bash", "arguments": json.dumps(COMMAND)}))
    upstream.push(Behavior(content="The command printed mira-tool-ok."))
    run = await claude(node_url, "Run echo mira-tool-ok", TRANSLATED, allowed_tools="Bash(echo:*)")
    assert run.returncode == 0, run.describe()
    assert run.data is not None and run.data["result"] == "The command printed mira-tool-ok."
    first, second = calls(upstream, "/v1/chat/completions")
    messages = second.json["messages"]
    [assistant] = [m for m in messages if m["role"] == "assistant" and m.get("tool_calls")]
    [call] = assistant["tool_calls"]
    assert call["function"]["name"] == "Bash" and json.loads(call["function"]["arguments"]) == COMMAND
    [tool] = [m for m in messages if m["role"] == "tool"]
    assert tool["tool_call_id"] == call["id"]
    assert "mira-tool-ok" in tool["content"]
