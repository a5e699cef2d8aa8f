"""A small OpenAI- and Anthropic-compatible upstream for ``make demo``: canned answers, streamed at a readable pace.

It stands in for every provider (``anthropic/`` included, in Anthropic's
Messages API) so that the node can be tried on a machine with no provider key
and no network:

* ``POST /v1/chat/completions`` (also without ``/v1``): a ``chat.completion``
  with ``usage``; with ``"stream": true``, server-sent events that carry the
  reply one word at a time (``--words-per-second``, default 20), a final chunk
  (with ``usage`` when ``stream_options.include_usage`` is set) and
  ``data: [DONE]``.
* A request with ``tools`` gets a tool call instead of text: for the node's
  ``verify_statement`` tool the arguments are
  ``{"is_correct": true, "reason": "..."}``, so ``/v1/verify`` answers ``yes``.
* A conversation that asks for "yes or no" (an eval system prompt, say) is
  answered ``Yes.``; any other one gets a sentence that quotes the last user
  message.
* ``POST /v1/messages`` (also without ``/v1``): the same answers in
  Anthropic's Messages API: a ``message`` with ``text`` or ``tool_use``
  content, ``stop_reason`` and ``usage``; with ``"stream": true``, Anthropic's
  named events (``message_start``, ``content_block_start``, ``ping``, a
  ``text_delta`` per word at the same pace or ``input_json_delta`` fragments,
  ``content_block_stop``, ``message_delta``, ``message_stop``). The text read
  is ``system``, string content, ``text`` blocks and ``tool_result`` content.
  With ``tools`` the answer is a ``tool_use`` picked as for chat (whatever
  ``tool_choice`` says), except that ``{"type": "tool", "name": ...}`` gets
  that tool and ``{"type": "none"}`` gets text. Errors are Anthropic-shaped
  (``{"type": "error", "error": {...}}``): a body that is not a JSON object
  with ``messages`` and a positive integer ``max_tokens``, or a named tool
  not among ``tools``, is a 400. ``max_tokens``, ``stop_sequences`` and the
  sampling options are not applied, and the ``x-api-key`` and
  ``anthropic-version`` headers are not checked.
* ``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, N the words of
  the request's ``system`` and messages.
* ``POST /v1/responses`` (OpenAI's Responses API): ``instructions`` and
  ``input`` (a string, or message items whose content is a string or text
  parts) read as a chat conversation and answered with the same text: a
  ``response`` whose ``output`` is one assistant ``message`` with one
  ``output_text`` part, and ``usage`` (``input_tokens``, ``output_tokens``).
  With ``"stream": true``, named events: ``response.created``,
  ``response.in_progress``, ``response.output_item.added``,
  ``response.content_part.added``, a ``response.output_text.delta`` per word
  at the chat pace, ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done`` and
  ``response.completed`` (the whole response, with usage). ``tools`` are not
  called.
* ``POST /v1/embeddings``: one vector per input string, the same for the same
  text (from SHA-256 of it, scaled to length 1); 8 numbers, or ``dimensions``
  (up to 4096); ``encoding_format`` ``float`` (default) or ``base64``
  (little-endian float32, as OpenAI sends it); ``usage`` counts words.
* ``POST /v1/completions`` (legacy text completions): a ``text_completion``
  with one choice per prompt string, each answered as a user message would
  be in chat; with ``"stream": true``, ``text_completion`` chunks a word at a
  time at the chat pace, a last chunk per choice with ``finish_reason``, the
  usage chunk when ``stream_options.include_usage`` is set, ``data: [DONE]``.
* Errors on the OpenAI routes are OpenAI-shaped
  (``{"error": {"message", "type", "param", "code"}}``): a body that is not a
  JSON object with ``messages`` (chat), with a string or an array ``input``
  (responses), with a non-empty string or array of non-empty strings
  ``input`` (embeddings; token arrays are not read) or with a string or
  array of strings ``prompt`` (completions), or a bad ``dimensions`` or
  ``encoding_format``, is a 400.
* ``GET /v1/models``: the demo's model; anything else is an OpenAI-shaped 404.

Run: ``python tools/demo_upstream.py [--port 0] [--words-per-second 20]``. It
prints ``demo upstream listening on HOST:PORT`` once ready and stops on
SIGTERM/SIGINT or when the process that started it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import math
import struct
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python tools/demo_upstream.py``
    sys.path.insert(0, str(ROOT))

from tools.serving import stop_on_signals, wait_stopped  # noqa: E402

DEFAULT_WORDS_PER_SECOND = 20.0
MODEL_ID = "demo-model"
VERIFY_TOOL = "verify_statement"
VERIFY_ARGUMENTS = {"is_correct": True, "reason": "The demo upstream accepts every statement: no real model was asked."}
QUOTE_LIMIT = 200
EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 4096
PARENT_CHECK_SECONDS = 1.0

_ids = itertools.count(1)


def error_body(message: str, status: int) -> dict[str, Any]:
    """An OpenAI-shaped error object."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _text_of(message: Any) -> str:
    """The text of a message's ``content`` (a string or a list of text parts)."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def reply_text(messages: list[Any]) -> str:
    """The canned reply to a conversation."""
    if any("yes or no" in _text_of(message).lower() for message in messages):
        return "Yes."
    users = [_text_of(m) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    said = " ".join(users[-1].split()) if users else ""
    if len(said) > QUOTE_LIMIT:
        said = said[:QUOTE_LIMIT].rstrip() + "..."
    quote = f' You said: "{said}".' if said else ""
    return (
        f"Hello from the Mira demo upstream!{quote} No provider was called: this reply is canned, "
        "and a streamed one arrives word by word."
    )


def chosen_tool(tools: Any) -> str | None:
    """The function to call for a request with ``tools``: verify_statement if offered, else the first one."""
    if not isinstance(tools, list):
        return None
    names = [
        t["function"]["name"]
        for t in tools
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
    ]
    return _pick(names)


def _pick(names: list[str]) -> str | None:
    """The demo's tool among ``names``: verify_statement if there, else the first (None for none)."""
    if not names:
        return None
    return VERIFY_TOOL if VERIFY_TOOL in names else names[0]


def tool_arguments(name: str) -> str:
    """The JSON arguments of the demo's tool call."""
    return json.dumps(VERIFY_ARGUMENTS if name == VERIFY_TOOL else {})


def usage(messages: list[Any], completion: str) -> dict[str, int]:
    """Rough token counts: whitespace-separated words."""
    prompt = sum(len(_text_of(m).split()) for m in messages)
    done = len(completion.split())
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def words(text: str) -> list[str]:
    """``text`` cut into stream pieces: each word with the space before it."""
    parts = text.split(" ")
    return [parts[0], *(" " + part for part in parts[1:])]


# -- Anthropic's Messages API -----------------------------------------------------------------


def anthropic_error(message: str, status: int) -> dict[str, Any]:
    """An Anthropic-shaped error object."""
    kind = "api_error" if status >= 500 else "not_found_error" if status == 404 else "invalid_request_error"
    return {"type": "error", "error": {"type": kind, "message": message}}


def _blocks_text(content: Any) -> str:
    """The text of Messages content: a string, or the ``text`` blocks and ``tool_result`` contents of a block list."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            texts.append(_blocks_text(block.get("content")))
    return " ".join(text for text in texts if text)


def conversation(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Messages request's ``system`` and ``messages`` as chat messages with string content.

    That is what :func:`reply_text` and :func:`usage` read, so a Messages
    request is answered and counted as the same chat request would be.
    """
    system = _blocks_text(body.get("system"))
    turns = [
        {"role": message.get("role"), "content": _blocks_text(message.get("content"))}
        for message in body["messages"]
        if isinstance(message, dict)
    ]
    return [{"role": "system", "content": system}, *turns] if system else turns


def messages_tool(tools: Any, choice: Any) -> str | None:
    """The tool to call for a Messages request: none for ``{"type": "none"}``, the named one for
    ``{"type": "tool"}``, else (``auto``, ``any`` or no choice) as :func:`chosen_tool` picks for chat."""
    if not isinstance(tools, list):
        tools = []
    names = [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "none":
        return None
    if kind == "tool" and choice.get("name") in names:
        return choice["name"]
    return _pick(names)


def messages_problem(body: Any) -> str | None:
    """What makes ``body`` an invalid Messages request, or None when it is fine."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return "The body must be a JSON object with a 'messages' array"
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        return "max_tokens: a positive integer is required"
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        tools = body.get("tools") if isinstance(body.get("tools"), list) else []
        if not any(isinstance(t, dict) and t.get("name") == choice.get("name") for t in tools):
            return f"tool_choice.name: tool {choice.get('name')!r} is not one of the request's tools"
    return None


# -- the rest of the OpenAI surface: responses, embeddings, completions -----------------------


def responses_problem(body: Any) -> str | None:
    """What makes ``body`` an invalid Responses request, or None when it is fine."""
    if not isinstance(body, dict):
        return "The body must be a JSON object"
    if not isinstance(body.get("input"), (str, list)):
        return "input: a string or an array of input items is required"
    return None


def responses_conversation(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A Responses request's ``instructions`` and ``input`` as chat messages with string content.

    A string ``input`` is one user message; an array's items with a ``role``
    are messages (content a string or text parts, as :func:`_text_of` reads
    them); other items (tool outputs, reasoning) are skipped.
    """
    said: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        said.append({"role": "system", "content": instructions})
    given = body["input"]
    if isinstance(given, str):
        return [*said, {"role": "user", "content": given}]
    for item in given:
        if isinstance(item, dict) and isinstance(item.get("role"), str):
            said.append({"role": item["role"], "content": _text_of(item)})
    return said


def response_object(
    number: int, body: dict[str, Any], text: str, status: str, counts: dict[str, int] | None
) -> dict[str, Any]:
    """A Responses ``response``: one assistant message with one ``output_text`` part (none while ``text`` is None)."""
    message: dict[str, Any] = {
        "type": "message",
        "id": f"msg_demo_{number}",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    usage_block = None
    if counts is not None:
        usage_block = {
            "input_tokens": counts["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": counts["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts["total_tokens"],
        }
    instructions = body.get("instructions")
    return {
        "id": f"resp_demo_{number}",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "model": body.get("model") or MODEL_ID,
        "output": [message] if status == "completed" else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "text": {"format": {"type": "text"}},
        "usage": usage_block,
        "metadata": {},
    }


def embeddings_problem(body: Any) -> str | None:
    """What makes ``body`` an invalid embeddings request, or None when it is fine."""
    if not isinstance(body, dict):
        return "The body must be a JSON object"
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(text, str) and text for text in texts):
        return "input: a non-empty string or a non-empty array of non-empty strings is required (token arrays are not read here)"
    dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
    if type(dimensions) is not int or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS:
        return f"dimensions: an integer from 1 to {MAX_EMBEDDING_DIMENSIONS} is required"
    if body.get("encoding_format", "float") not in ("float", "base64"):
        return "encoding_format: 'float' or 'base64' is required"
    return None


def embedding(text: str, dimensions: int) -> list[float]:
    """A vector of length 1 made from SHA-256 of ``text``: the same text always gets the same vector."""
    values: list[float] = []
    block = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        values.extend(byte / 127.5 - 1.0 for byte in digest)
        block += 1
    del values[dimensions:]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [round(value / norm, 6) for value in values]


def encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    """``vector`` as ``encoding_format`` asks: the list, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def completion_prompts(body: Any) -> list[str] | None:
    """The prompt strings of a completions request (one choice each), or None when ``body`` is not one."""
    if not isinstance(body, dict):
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(text, str) for text in prompt):
        return prompt
    return None


class JsonHandler(tornado.web.RequestHandler):
    """A handler of JSON requests and answers."""

    def json_body(self) -> Any:
        """The request's body as JSON (None when it is empty or not JSON)."""
        try:
            return json.loads(self.request.body or b"null")
        except ValueError:
            return None

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class PacedHandler(JsonHandler):
    """What the streaming handlers share: the stream's pace, noticing the client leave."""

    def initialize(self, words_per_second: float) -> None:
        self.interval = 1.0 / words_per_second if words_per_second > 0 else 0.0
        self.gone = asyncio.Event()

    def on_connection_close(self) -> None:
        self.gone.set()

    def start_stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.request.connection.stream.set_nodelay(True)  # type: ignore[attr-defined]

    async def client_left(self, seconds: float) -> bool:
        """Wait ``seconds``; True if the client closed the connection meanwhile."""
        try:
            await asyncio.wait_for(self.gone.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def paced(self, text: str) -> AsyncIterator[str]:
        """The words of ``text`` (see :func:`words`), each after a pause at the configured pace; none once the client left."""
        for piece in words(text):
            if self.interval and await self.client_left(self.interval):
                return
            yield piece


class OpenAIHandler(PacedHandler):
    """What the OpenAI routes share: OpenAI-shaped errors and ``data:`` events."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send_json(status_code, error_body(self._reason, status_code))

    def refuse(self, message: str) -> None:
        """A 400 with an OpenAI-shaped error."""
        self.send_json(400, error_body(message, 400))

    async def event(self, data: dict[str, Any]) -> None:
        self.write(f"data: {json.dumps(data)}\n\n")
        await self.flush()

    def done(self) -> None:
        """The end of an OpenAI stream: ``data: [DONE]``."""
        self.write("data: [DONE]\n\n")
        self.finish()


class ChatHandler(OpenAIHandler):
    """``POST /v1/chat/completions``: JSON or SSE."""

    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self.send_json(400, error_body("The body must be a JSON object with a 'messages' array", 400))
            return
        base = {
            "id": f"chatcmpl-demo-{next(_ids)}",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_ID,
        }
        tool = chosen_tool(body.get("tools"))
        text = "" if tool else reply_text(body["messages"])
        if body.get("stream") is True:
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and options.get("include_usage") is True
            try:
                await self.stream(base, text, tool, usage(body["messages"], text) if with_usage else None)
            except tornado.iostream.StreamClosedError:
                pass
            return
        self.send_json(200, self.completion(base, text, tool, usage(body["messages"], text)))

    def completion(self, base: dict[str, Any], text: str, tool: str | None, counts: dict[str, int]) -> dict[str, Any]:
        """A whole ``chat.completion``."""
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "stop"
        if tool:
            call = {"id": "call_demo_1", "type": "function", "function": {"name": tool, "arguments": tool_arguments(tool)}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish}
        return {**base, "object": "chat.completion", "choices": [choice], "usage": counts}

    async def stream(self, base: dict[str, Any], text: str, tool: str | None, counts: dict[str, int] | None) -> None:
        """SSE: the role, then one word per event at the configured pace, a final chunk, ``[DONE]``."""
        self.start_stream()
        if tool:
            call = {"index": 0, "id": "call_demo_1", "type": "function",
                    "function": {"name": tool, "arguments": tool_arguments(tool)}}
            await self.event(self.chunk(base, {"role": "assistant", "content": None, "tool_calls": [call]}, None))
            finish = "tool_calls"
        else:
            await self.event(self.chunk(base, {"role": "assistant", "content": ""}, None))
            for piece in words(text):
                if self.interval and await self.client_left(self.interval):
                    return
                await self.event(self.chunk(base, {"content": piece}, None))
            finish = "stop"
        await self.event(self.chunk(base, {}, finish))
        if counts is not None:
            await self.event({**base, "object": "chat.completion.chunk", "choices": [], "usage": counts})
        self.done()

    @staticmethod
    def chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {**base, "object": "chat.completion.chunk", "choices": [choice]}


class MessagesHandler(PacedHandler):
    """``POST /v1/messages``: Anthropic's Messages API, JSON or SSE."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send_json(status_code, anthropic_error(self._reason, status_code))

    async def post(self) -> None:
        body = self.json_body()
        problem = messages_problem(body)
        if problem:
            self.send_json(400, anthropic_error(problem, 400))
            return
        number = next(_ids)
        said = conversation(body)
        tool = messages_tool(body.get("tools"), body.get("tool_choice"))
        text = "" if tool else reply_text(said)
        counts = usage(said, text)
        message: dict[str, Any] = {
            "id": f"msg_demo_{number}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model") or MODEL_ID,
            "content": [],
            "stop_reason": "tool_use" if tool else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": counts["prompt_tokens"],
                "output_tokens": counts["completion_tokens"],
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
        tool_id = f"toolu_demo_{number}"
        if body.get("stream") is True:
            try:
                await self.stream(message, text, tool, tool_id)
            except tornado.iostream.StreamClosedError:
                pass
            return
        if tool:
            message["content"] = [{"type": "tool_use", "id": tool_id, "name": tool, "input": json.loads(tool_arguments(tool))}]
        else:
            message["content"] = [{"type": "text", "text": text}]
        self.send_json(200, message)

    async def stream(self, message: dict[str, Any], text: str, tool: str | None, tool_id: str) -> None:
        """Anthropic's SSE: ``message_start``, one content block (a word per ``text_delta``, at the configured
        pace, or the tool's arguments in ``input_json_delta`` fragments), ``message_delta``, ``message_stop``."""
        self.start_stream()
        output = message["usage"]["output_tokens"]
        start = {
            **message,
            "stop_reason": None,
            "usage": {**message["usage"], "output_tokens": min(output, 1)},
        }
        await self.event("message_start", {"type": "message_start", "message": start})
        if tool:
            block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": tool, "input": {}}
        else:
            block = {"type": "text", "text": ""}
        await self.event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        await self.event("ping", {"type": "ping"})
        if tool:
            for fragment in words(tool_arguments(tool)):
                delta = {"type": "input_json_delta", "partial_json": fragment}
                await self.event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        else:
            for piece in words(text):
                if self.interval and await self.client_left(self.interval):
                    return
                delta = {"type": "text_delta", "text": piece}
                await self.event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        await self.event("content_block_stop", {"type": "content_block_stop", "index": 0})
        delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
        await self.event("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output}})
        await self.event("message_stop", {"type": "message_stop"})
        self.finish()

    async def event(self, name: str, data: dict[str, Any]) -> None:
        self.write(f"event: {name}\ndata: {json.dumps(data)}\n\n")
        await self.flush()


class CountTokensHandler(JsonHandler):
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, N the words of ``system`` and the messages."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.send_json(status_code, anthropic_error(self._reason, status_code))

    def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self.send_json(400, anthropic_error("The body must be a JSON object with a 'messages' array", 400))
            return
        self.send_json(200, {"input_tokens": usage(conversation(body), "")["prompt_tokens"]})


class ResponsesHandler(OpenAIHandler):
    """``POST /v1/responses``: OpenAI's Responses API, JSON or SSE with named events."""

    async def post(self) -> None:
        body = self.json_body()
        problem = responses_problem(body)
        if problem:
            self.refuse(problem)
            return
        number = next(_ids)
        said = responses_conversation(body)
        text = reply_text(said)
        counts = usage(said, text)
        if body.get("stream") is True:
            try:
                await self.stream(number, body, text, counts)
            except tornado.iostream.StreamClosedError:
                pass
            return
        self.send_json(200, response_object(number, body, text, "completed", counts))

    async def stream(self, number: int, body: dict[str, Any], text: str, counts: dict[str, int]) -> None:
        """The Responses events around one message: a ``response.output_text.delta`` per word, at the configured pace."""
        self.start_stream()
        self.sequence = 0
        started = response_object(number, body, "", "in_progress", None)
        await self.named("response.created", {"response": started})
        await self.named("response.in_progress", {"response": started})
        whole = response_object(number, body, text, "completed", counts)
        message = whole["output"][0]
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": message["id"], "output_index": 0}
        await self.named("response.output_item.added",
                         {"output_index": 0, "item": {**message, "status": "in_progress", "content": []}})
        await self.named("response.content_part.added", {**where, "content_index": 0, "part": part})
        async for piece in self.paced(text):
            await self.named("response.output_text.delta", {**where, "content_index": 0, "delta": piece, "logprobs": []})
        if self.gone.is_set():
            return
        await self.named("response.output_text.done", {**where, "content_index": 0, "text": text, "logprobs": []})
        await self.named("response.content_part.done", {**where, "content_index": 0, "part": {**part, "text": text}})
        await self.named("response.output_item.done", {"output_index": 0, "item": message})
        await self.named("response.completed", {"response": whole})
        self.finish()

    async def named(self, name: str, data: dict[str, Any]) -> None:
        """An ``event:`` line and its data (with ``type`` and the stream's ``sequence_number``)."""
        data = {"type": name, "sequence_number": self.sequence, **data}
        self.sequence += 1
        self.write(f"event: {name}\ndata: {json.dumps(data)}\n\n")
        await self.flush()


class EmbeddingsHandler(OpenAIHandler):
    """``POST /v1/embeddings``: a deterministic vector per input string."""

    def post(self) -> None:
        body = self.json_body()
        problem = embeddings_problem(body)
        if problem:
            self.refuse(problem)
            return
        texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
        dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
        encoding_format = body.get("encoding_format", "float")
        data = [
            {"object": "embedding", "index": index, "embedding": encoded(embedding(text, dimensions), encoding_format)}
            for index, text in enumerate(texts)
        ]
        tokens = sum(len(text.split()) for text in texts)
        self.send_json(200, {"object": "list", "data": data, "model": body.get("model") or MODEL_ID,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


class CompletionsHandler(OpenAIHandler):
    """``POST /v1/completions``: legacy text completions, JSON or SSE."""

    async def post(self) -> None:
        body = self.json_body()
        prompts = completion_prompts(body)
        if prompts is None:
            self.refuse("The body must be a JSON object with a 'prompt' string or array of strings")
            return
        base = {
            "id": f"cmpl-demo-{next(_ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_ID,
        }
        asked = [{"role": "user", "content": prompt} for prompt in prompts]
        texts = [reply_text([message]) for message in asked]
        counts = usage(asked, " ".join(texts))
        if body.get("stream") is True:
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and options.get("include_usage") is True
            try:
                await self.stream(base, texts, counts if with_usage else None)
            except tornado.iostream.StreamClosedError:
                pass
            return
        choices = [self.choice(index, text, "stop") for index, text in enumerate(texts)]
        self.send_json(200, {**base, "choices": choices, "usage": counts})

    async def stream(self, base: dict[str, Any], texts: list[str], counts: dict[str, int] | None) -> None:
        """SSE: each choice's words in turn at the configured pace, its last chunk, the usage chunk, ``[DONE]``."""
        self.start_stream()
        for index, text in enumerate(texts):
            async for piece in self.paced(text):
                await self.event({**base, "choices": [self.choice(index, piece, None)]})
            if self.gone.is_set():
                return
            await self.event({**base, "choices": [self.choice(index, "", "stop")]})
        if counts is not None:
            await self.event({**base, "choices": [], "usage": counts})
        self.done()

    @staticmethod
    def choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}


class ModelsHandler(tornado.web.RequestHandler):
    """``GET /v1/models``: the demo's one model."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "mira-demo"}
        self.finish(json.dumps({"object": "list", "data": [model]}))


class NotFoundHandler(tornado.web.RequestHandler):
    """Anything else: an OpenAI-shaped 404."""

    def prepare(self) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(f"Unknown path {self.request.path}", 404)))


def make_app(words_per_second: float) -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/(?:v1/)?chat/completions", ChatHandler, {"words_per_second": words_per_second}),
            (r"/(?:v1/)?messages", MessagesHandler, {"words_per_second": words_per_second}),
            (r"/(?:v1/)?messages/count_tokens", CountTokensHandler),
            (r"/(?:v1/)?models", ModelsHandler),
            (r"/(?:v1/)?responses", ResponsesHandler, {"words_per_second": words_per_second}),
            (r"/(?:v1/)?embeddings", EmbeddingsHandler, {"words_per_second": words_per_second}),
            (r"/(?:v1/)?completions", CompletionsHandler, {"words_per_second": words_per_second}),
        ],
        default_handler_class=NotFoundHandler,
    )


async def serve(host: str, port: int, words_per_second: float) -> None:
    """Serve until SIGTERM/SIGINT or until the parent process is gone."""
    stop = stop_on_signals()
    sockets = tornado.netutil.bind_sockets(port, host)
    server = tornado.httpserver.HTTPServer(make_app(words_per_second))
    server.add_sockets(sockets)
    bound = sockets[0].getsockname()
    print(f"demo upstream listening on {bound[0]}:{bound[1]} ({words_per_second:g} words/s)", flush=True)
    await wait_stopped(stop, watch_parent=True, check_every=PARENT_CHECK_SECONDS)
    server.stop()
    try:
        await asyncio.wait_for(server.close_all_connections(), 2)
    except TimeoutError:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI- and Anthropic-compatible demo upstream with canned, paced answers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--words-per-second", type=float, default=DEFAULT_WORDS_PER_SECOND,
                        help=f"pace of streamed replies (default {DEFAULT_WORDS_PER_SECOND:g}; 0: no pause)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.words_per_second))


if __name__ == "__main__":
    main()
