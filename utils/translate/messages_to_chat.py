"""Messages client -> chat provider: a Messages request for an OpenAI-chat provider, and its answer back to Messages.

:func:`chat_body` turns a validated Messages body into a chat request (``system`` into a first
system message, blocks into content parts, ``tool_use`` blocks into ``tool_calls``, each
``tool_result`` block into a ``tool`` message ahead of the rest of its user turn, tools and their
options as chat names them). Claude Code 2.1 is the yardstick: its billing tag (the first system
block) is left out, ``cache_control``, thinking blocks and Anthropic-only fields are dropped, and
ToolSearch's ``tool_reference`` blocks become ``tool: NAME`` lines. What a chat provider cannot
take (a ``document`` block, a server tool, ...) and shapes that cannot be translated are a 400
naming the field, never another exception.

Back to Messages, :func:`messages_answer` rewrites a ``chat.completion`` JSON answer, and
:class:`MessagesStream` a chat SSE stream chunk by chunk: it runs once per upstream chunk, so each
event is decoded once and each output event is built by splicing the JSON of its few dynamic
parts between byte prefixes made when its block opens. :func:`error_event` is the ``event: error``
that ends a Messages stream which failed after it began.

Usage is the chat answer's: prompt tokens ``prompt_tokens`` (of which
``prompt_tokens_details.cached_tokens`` are cache reads), completion tokens ``completion_tokens``;
the Messages ``input_tokens`` are the prompt tokens less the cached ones.
:func:`count_tokens_estimate` answers ``/v1/messages/count_tokens`` for a chat provider.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from typing import Any

import ujson

from models.errors import ApiError
from models.usage import Usage
from utils.translate.common import CUT_SHORT, bad, last_boundary, text_of, to_json, tool_parts, typed_items

__all__ = ["MessagesStream", "chat_body", "count_tokens_estimate", "error_event", "messages_answer"]

PROVIDER = "upstream"  # the provider's name in messages when the caller gives none
TARGET = "an OpenAI-chat provider"  # what a refused block or tool cannot be sent to

BILLING_TAG = "x-anthropic-billing-header:"  # Claude Code's first system block, different on every run

# Chat's finish_reason -> Anthropic's stop_reason (anything else, or none, is "end_turn").
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_TOOL_CHOICES: dict[str, str] = {"auto": "auto", "any": "required", "none": "none"}
_DROPPED_BLOCKS = frozenset(("thinking", "redacted_thinking"))

# Byte pieces of the Messages events MessagesStream writes.
_DELTA_END = b"}}\n\n"
_STOP_HEAD = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":'
_DELTA_HEAD = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_START_HEAD = b'event: content_block_start\ndata: {"type":"content_block_start","index":'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_ZERO_USAGE = b'{"input_tokens":0,"output_tokens":0,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}'
_MESSAGE_DELTA = {
    reason: b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"'
    + reason.encode()
    + b'","stop_sequence":null},"usage":'
    for reason in ("end_turn", "max_tokens", "tool_use", "refusal")
}
_NO_BLOCK, _TEXT, _TOOL = 0, 1, 2  # the kind of MessagesStream's open block


def _untranslatable(param: str, kind: str, where: str) -> ApiError:
    return bad(param, f"is {kind!r}: a block type that cannot be sent to {TARGET} (in {where})")


# ---------------------------------------------------------------------------------------------------------------------
# The request


def chat_body(body: dict[str, Any]) -> dict[str, Any]:
    """The chat request for the validated Messages ``body`` (whose ``model`` is the upstream's name).

    ``max_tokens``, ``stop_sequences`` (as ``stop``), ``temperature``, ``top_p``, ``stream`` (with
    ``stream_options.include_usage``) and ``metadata.user_id`` (as ``user``) are carried over;
    ``thinking``, ``top_k``, ``context_management``, ``output_config``, ``service_tier``,
    ``container``, ``mcp_servers``, ``fallbacks`` and every unknown field are dropped.
    """
    messages: list[dict[str, Any]] = []
    system = _system(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    turns = body.get("messages")
    if not isinstance(turns, list):
        raise bad("messages", "must be an array")
    for index, turn in enumerate(turns):
        _turn(turn, f"messages[{index}]", messages)
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad("tools", "must be an array")
    choice, serial = _tool_choice(body.get("tool_choice"))
    if tools:  # without tools, tool_choice and parallel_tool_calls mean nothing and chat providers refuse them
        out["tools"] = [_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)]
        if choice is not None:
            out["tool_choice"] = choice
        if serial:
            out["parallel_tool_calls"] = False
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(item, str) for item in stop):
            raise bad("stop_sequences", "must be an array of strings")
        if stop:
            out["stop"] = stop
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(name, "must be a number")
            out[name] = value
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise bad("stream", "must be a boolean")
        out["stream"] = stream
        if stream:
            out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise bad("metadata", "must be an object")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise bad("metadata.user_id", "must be a string")
        if user:
            out["user"] = user
    return out


def _system(system: Any) -> str:
    """The text of ``system``: a string as it is, text blocks joined with a blank line, the billing tag left out."""
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    texts = []
    for index, block in enumerate(typed_items(system, "system", "content blocks")):
        at = f"system[{index}]"
        if block["type"] != "text":
            raise _untranslatable(f"{at}.type", block["type"], "system")
        text = text_of(block, at)
        if text and not text.startswith(BILLING_TAG):
            texts.append(text)
    return "\n\n".join(texts)


def _turn(turn: Any, where: str, messages: list[dict[str, Any]]) -> None:
    """Append the chat messages of one Messages turn to ``messages``."""
    if not isinstance(turn, dict):
        raise bad(where, "must be an object")
    role = turn.get("role")
    content = turn.get("content")
    if role == "user":
        if isinstance(content, str):
            messages.append({"role": "user", "content": content})
        else:
            _user_turn(typed_items(content, f"{where}.content", "content blocks"), f"{where}.content", messages)
    elif role == "assistant":
        if isinstance(content, str):
            messages.append({"role": "assistant", "content": content})
        else:
            messages.append(_assistant_turn(typed_items(content, f"{where}.content", "content blocks"), f"{where}.content"))
    else:
        raise bad(f"{where}.role", "must be 'user' or 'assistant'")


def _user_turn(blocks: list[dict[str, Any]], where: str, messages: list[dict[str, Any]]) -> None:
    """A user turn's blocks: a ``tool`` message per ``tool_result``, then one user message with the rest.

    The images of the tool results lead that user message, before the turn's own text and images;
    a turn of tool results alone makes no user message. A lone text part becomes a string.
    """
    parts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []  # the images of the turn's tool results
    results = 0
    for index, block in enumerate(blocks):
        at = f"{where}[{index}]"
        kind = block["type"]
        if kind == "text":
            parts.append({"type": "text", "text": text_of(block, at)})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            messages.append(_tool_message(block, at, images))
            results += 1
        elif kind not in _DROPPED_BLOCKS:
            raise _untranslatable(f"{at}.type", kind, "a user message")
    if images:
        parts[:0] = images
    if len(parts) == 1 and parts[0]["type"] == "text":
        messages.append({"role": "user", "content": parts[0]["text"]})
    elif parts:
        messages.append({"role": "user", "content": parts})
    elif not results:  # a turn of thinking blocks or nothing: still a user turn
        messages.append({"role": "user", "content": ""})


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An ``image`` block as an ``image_url`` part (a data URL for a base64 source, else the URL)."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise bad(f"{where}.source", "must be an object")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not media_type:
            raise bad(f"{where}.source.media_type", "must be a non-empty string")
        if not isinstance(data, str):
            raise bad(f"{where}.source.data", "must be a string")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        link = source.get("url")
        if not isinstance(link, str) or not link:
            raise bad(f"{where}.source.url", "must be a non-empty string")
        url = link
    else:
        raise bad(f"{where}.source.type", f"must be 'base64' or 'url' for {TARGET}, not {kind!r}")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_message(block: dict[str, Any], where: str, images: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``tool_result`` block as a ``tool`` message; its images are appended to ``images``."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.tool_use_id", "must be a non-empty string")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        lines = []
        for index, inner in enumerate(typed_items(content, f"{where}.content", "content blocks")):
            at = f"{where}.content[{index}]"
            kind = inner["type"]
            if kind == "text":
                lines.append(text_of(inner, at))
            elif kind == "tool_reference":
                lines.append("tool: " + text_of(inner, at, "tool_name"))
            elif kind == "image":
                images.append(_image_part(inner, at))
            else:
                raise _untranslatable(f"{at}.type", kind, "a tool_result")
        text = "\n".join(lines)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise bad(f"{where}.is_error", "must be a boolean")
    if is_error:
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _assistant_turn(blocks: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """An assistant turn's blocks as one message: its texts joined as ``content``, its ``tool_use`` blocks ``tool_calls``."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(blocks):
        at = f"{where}[{index}]"
        kind = block["type"]
        if kind == "text":
            texts.append(text_of(block, at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
        elif kind not in _DROPPED_BLOCKS:
            raise _untranslatable(f"{at}.type", kind, "an assistant message")
    text = "".join(texts)
    if not calls:
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": text or None, "tool_calls": calls}


def _tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``tool_use`` block as a chat tool call (``arguments`` its input as compact JSON text)."""
    call_id = block.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.id", "must be a non-empty string")
    name = block.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name", "must be a non-empty string")
    arguments = block.get("input")
    if arguments is None:
        arguments = {}
    elif not isinstance(arguments, dict):
        raise bad(f"{where}.input", "must be an object")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": to_json(arguments).decode()}}


def _tool(tool: Any, where: str) -> dict[str, Any]:
    """A Messages client tool as a chat function tool; a server tool is a 400 naming it."""
    if not isinstance(tool, dict):
        raise bad(where, "must be an object")
    kind = tool.get("type")
    if kind is not None and kind != "custom":
        raise bad(f"{where}.type", f"is {kind!r}: a server tool, which {TARGET} cannot run")
    name, description, schema = tool_parts(tool, where, "input_schema")
    function: dict[str, Any] = {"name": name}
    if description is not None:
        function["description"] = description
    function["parameters"] = schema
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> tuple[str | dict[str, Any] | None, bool]:
    """Anthropic's ``tool_choice`` as chat's (or None), and whether it disables parallel tool calls."""
    if choice is None:
        return None, False
    if not isinstance(choice, dict):
        raise bad("tool_choice", "must be an object")
    kind = choice.get("type")
    out: str | dict[str, Any]
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise bad("tool_choice.name", "must be a non-empty string")
        out = {"type": "function", "function": {"name": name}}
    elif isinstance(kind, str) and kind in _TOOL_CHOICES:
        out = _TOOL_CHOICES[kind]
    else:
        raise bad("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
    serial = choice.get("disable_parallel_tool_use")
    if serial is not None and not isinstance(serial, bool):
        raise bad("tool_choice.disable_parallel_tool_use", "must be a boolean")
    return out, serial is True


def count_tokens_estimate(body: dict[str, Any]) -> int:
    """The node's own ``input_tokens`` estimate for ``/v1/messages/count_tokens`` to a chat provider.

    The UTF-8 bytes of the request's text divided by 4, rounded up: the system texts (the billing
    tag left out, as :func:`chat_body` does), every text of the messages (string contents, text
    blocks, tool result texts, ``tool_use`` inputs as JSON text) and each tool definition as its
    compact JSON text. Shapes it does not know are skipped: it never raises.
    """
    size = 0
    system = body.get("system")
    if isinstance(system, str):
        size += len(system.encode(errors="replace"))
    elif isinstance(system, list):
        for block in system:
            text = block.get("text") if isinstance(block, dict) else None
            if isinstance(text, str) and not text.startswith(BILLING_TAG):
                size += len(text.encode(errors="replace"))
    messages = body.get("messages")
    for turn in messages if isinstance(messages, list) else ():
        if isinstance(turn, dict):
            size += _content_size(turn.get("content"))
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        size += len(to_json(tool))
    return math.ceil(size / 4)


def _content_size(content: Any) -> int:
    """The UTF-8 bytes of the text in a turn's (or a tool result's) content."""
    if isinstance(content, str):
        return len(content.encode(errors="replace"))
    if not isinstance(content, list):
        return 0
    size = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str):
                size += len(text.encode(errors="replace"))
        elif kind == "tool_use":
            size += len(to_json(block.get("input", {})))
        elif kind == "tool_result":
            size += _content_size(block.get("content"))
    return size


# ---------------------------------------------------------------------------------------------------------------------
# The answer


def _count(value: Any) -> int:
    return value if type(value) is int and value > 0 else 0


def _chat_usage(usage: dict[str, Any]) -> Usage:
    """The :class:`Usage` of a chat ``usage`` object."""
    details = usage.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if type(details) is dict else 0
    return Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), cached, 0)


def _usage_object(usage: Usage | None) -> dict[str, int]:
    """Anthropic's ``usage`` object for ``usage`` (zeros when unknown): input tokens are the prompt's uncached ones."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    return {
        "input_tokens": max(usage.prompt - usage.cache_read, 0),
        "output_tokens": usage.completion,
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation_input_tokens": 0,
    }


def _usage_json(usage: Usage | None) -> bytes:
    """:func:`_usage_object` as JSON bytes."""
    return _ZERO_USAGE if usage is None else to_json(_usage_object(usage))


def _stop_reason(finish_reason: Any, has_tools: bool) -> str:
    """Anthropic's stop_reason for chat's ``finish_reason``.

    A reply with tool calls that a provider ended with ``stop`` (or none) stops for ``tool_use``,
    so a client's agent loop runs the tools.
    """
    reason = STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"
    return "tool_use" if has_tools and reason == "end_turn" else reason


def _new_id(prefix: str = "msg_") -> str:
    return prefix + uuid.uuid4().hex


def _text(content: Any) -> str:
    """The text of a chat message's (or delta's) ``content``: a string, or the texts of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def messages_answer(data: bytes, model: str, provider: str = PROVIDER) -> tuple[bytes, Usage | None]:
    """A ``chat.completion`` answer (the upstream's 2xx body) as the Messages bytes for the client, and its usage.

    ``model`` is the client's name for the model. The first choice's text makes a text block
    (none when empty; a ``refusal`` stands in for empty content), each tool call a ``tool_use``
    block. A body that is not a chat completion is a 502 ``upstream_invalid_json``; tool call
    arguments that are not a JSON object a 502 ``upstream_invalid_response`` naming the tool.
    """
    try:
        answer = ujson.loads(data)
    except (ValueError, OverflowError):
        answer = None
    choices = answer.get("choices") if isinstance(answer, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(answer, dict) or not isinstance(choice, dict) or not isinstance(message, dict):
        raise ApiError(502, f"{provider} API answered with invalid JSON", code="upstream_invalid_json")
    text = _text(message.get("content"))
    if not text and isinstance(message.get("refusal"), str):
        text = message["refusal"]
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        legacy = message.get("function_call")  # the deprecated single function call
        calls = [{"function": legacy}] if isinstance(legacy, dict) else []
    tool_uses = [_tool_use(call, provider) for call in calls if isinstance(call, dict)]
    usage_in = answer.get("usage")
    usage = _chat_usage(usage_in) if isinstance(usage_in, dict) else None
    out = {
        "id": _new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": ([{"type": "text", "text": text}] if text else []) + tool_uses,
        "stop_reason": _stop_reason(choice.get("finish_reason"), bool(tool_uses)),
        "stop_sequence": None,
        "usage": _usage_object(usage),
    }
    return to_json(out), usage


def _tool_use(call: dict[str, Any], provider: str) -> dict[str, Any]:
    """One chat tool call as a ``tool_use`` block (``input`` its parsed arguments)."""
    function = call.get("function")
    if not isinstance(function, dict):
        function = {}
    name = function.get("name")
    call_id = call.get("id")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        if not arguments.strip():  # a tool without parameters, as some providers write it
            arguments = {}
        else:
            try:
                arguments = ujson.loads(arguments)
            except (ValueError, OverflowError):
                arguments = None
    elif arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ApiError(
            502,
            f"{provider} API answered tool call arguments for {name!r} that are not a JSON object",
            type="api_error",
            code="upstream_invalid_response",
        )
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else _new_id("toolu_"),
        "name": name if isinstance(name, str) else "",
        "input": arguments,
    }


def error_event(error_type: str, message: str) -> bytes:
    """One Messages SSE ``event: error`` (``error_type`` e.g. ``api_error``, ``overloaded_error``)."""
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return b"event: error\ndata: " + to_json(body) + b"\n\n"


class _Call:
    """One streamed chat tool call: its ``tool_use`` block's head until it opens, then its delta prefix."""

    __slots__ = ("id", "name", "pending", "prefix")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.pending: list[str] = []  # argument fragments that came before the name
        self.prefix = b""  # the bytes that open its input_json_delta events, once its block is open


class MessagesStream:
    """One chat SSE stream translated to Messages events as it arrives.

    :meth:`feed` takes the upstream's bytes in any split and returns the Messages SSE bytes of every
    event the chunk completes (b"" when none); only the bytes of an incomplete event are kept
    between calls. :meth:`finish` translates a last event that lacked its blank line, and closes
    the message when a finish_reason came but ``data: [DONE]`` did not; a stream that ended with
    neither, after its message began, ends with an ``api_error`` event instead of ``message_stop``. ``usage`` is the usage
    chunk's (None until one came); ``ended`` is True once ``message_stop`` or an error event has
    been written, after which nothing more is.

    The first chunk writes ``message_start``; each run of text is a ``text`` block, each tool call
    (told apart by its chat ``index``) a ``tool_use`` block, opened when its name arrives; reasoning
    deltas are dropped. ``mask`` (the node's redactor) cleans the message of an upstream error
    event, which ends the stream as ``event: error``.
    """

    __slots__ = (
        "model",
        "mask",
        "provider",
        "usage",
        "ended",
        "_tail",
        "_started",
        "_reason",
        "_next",
        "_kind",
        "_stop",
        "_text_prefix",
        "_calls",
        "_last_key",
        "_has_tools",
    )

    def __init__(self, model: str, mask: Callable[[str], str] = str, provider: str = PROVIDER) -> None:
        self.model = model
        self.mask = mask
        self.provider = provider
        self.usage: Usage | None = None
        self.ended = False
        self._tail = b""  # the incomplete event so far
        self._started = False  # message_start written
        self._reason: str | None = None  # the finish_reason, once it came
        self._next = 0  # the index of the next block
        self._kind = _NO_BLOCK  # the kind of the open block
        self._stop = b""  # the content_block_stop event of the open block
        self._text_prefix = b""  # the bytes that open the open text block's text_delta events
        self._calls: dict[Any, _Call] = {}  # a tool call's chat index -> its state
        self._last_key: Any = 0  # the key of the last tool call seen (for deltas without an index)
        self._has_tools = False  # a tool_use block was written

    def feed(self, chunk: bytes) -> bytes:
        """The Messages bytes for the events ``chunk`` completes."""
        if self.ended:
            return b""
        data = self._tail + chunk if self._tail else chunk
        end = last_boundary(data)
        if not end:
            self._tail = data
            return b""
        if end == len(data):
            self._tail = b""
            return self._events(data)
        self._tail = data[end:]
        return self._events(data[:end])

    def finish(self) -> bytes:
        """At the end of the upstream: a last event that lacked its blank line, and the message's end if it is due."""
        tail, self._tail = self._tail, b""
        if self.ended:
            return b""
        out = self._events(tail) if tail.strip() else b""
        if not self.ended:
            if self._reason is not None:
                out += self._end()
            elif self._started:  # cut short: said as an error, never ended as if the answer were whole
                self.ended = True
                out += error_event("api_error", f"Error from {self.provider} API: {CUT_SHORT}")
        return out

    def _events(self, data: bytes) -> bytes:
        """The Messages bytes of the whole events in ``data``."""
        out: list[bytes] = []
        lines: list[bytes] = []  # the current event's data lines
        for line in data.splitlines():
            if not line:
                if lines:
                    out.append(self._event(lines[0] if len(lines) == 1 else b"\n".join(lines)))
                    lines = []
                    if self.ended:
                        break
            elif line.startswith(b"data:"):
                lines.append(line[5:])  # the JSON decoder skips the space after the colon
        if lines and not self.ended:
            out.append(self._event(lines[0] if len(lines) == 1 else b"\n".join(lines)))
        return out[0] if len(out) == 1 else b"".join(out)

    def _event(self, payload: bytes) -> bytes:
        """The Messages bytes of one chat event's data (b"" for an event that writes nothing)."""
        if payload[-1:] != b"}" and payload.strip() == b"[DONE]":
            return self._end()
        try:
            event = ujson.loads(payload)
        except (ValueError, OverflowError):
            return b""
        if type(event) is not dict:
            return b""
        error = event.get("error")
        if error is not None:
            return self._error(error)
        out = b"" if self._started else self._message_start()
        choices = event.get("choices")
        if choices and type(choices) is list:
            choice = choices[0]
            if type(choice) is dict:
                delta = choice.get("delta")
                if type(delta) is dict:
                    content = delta.get("content")
                    if content:
                        text = content if type(content) is str else _text(content)
                        if text:
                            out += self._text(text)
                    calls = delta.get("tool_calls")
                    if calls and type(calls) is list:
                        out += self._tool_calls(calls)
                    refusal = delta.get("refusal")
                    if refusal and type(refusal) is str:
                        out += self._text(refusal)
                reason = choice.get("finish_reason")
                if reason and type(reason) is str:
                    self._reason = reason
        usage = event.get("usage")
        if usage is None:
            groq = event.get("x_groq")  # Groq reports a stream's usage there
            usage = groq.get("usage") if type(groq) is dict else None
        if type(usage) is dict:
            self.usage = _chat_usage(usage)
        return out

    def _message_start(self) -> bytes:
        self._started = True
        return b"".join(
            (
                b'event: message_start\ndata: {"type":"message_start","message":{"id":',
                to_json(_new_id()),
                b',"type":"message","role":"assistant","model":',
                to_json(self.model),
                b',"content":[],"stop_reason":null,"stop_sequence":null,"usage":',
                _ZERO_USAGE,
                b"}}\n\n",
            )
        )

    def _open(self, kind: int, block: bytes) -> bytes:
        """Close the open block and open the next, ``block`` its ``content_block`` JSON; its index in bytes too."""
        out = self._stop if self._kind else b""
        index = str(self._next).encode()
        self._next += 1
        self._kind = kind
        self._stop = _STOP_HEAD + index + b"}\n\n"
        self._text_prefix = b""
        return out + _START_HEAD + index + b',"content_block":' + block + b"}\n\n"

    def _text(self, text: str) -> bytes:
        if self._kind != _TEXT:
            out = self._open(_TEXT, b'{"type":"text","text":""}')
            self._text_prefix = _DELTA_HEAD + str(self._next - 1).encode() + b',"delta":{"type":"text_delta","text":'
            return out + self._text_prefix + to_json(text) + _DELTA_END
        return self._text_prefix + to_json(text) + _DELTA_END

    def _tool_calls(self, calls: list[Any]) -> bytes:
        out: list[bytes] = []
        for delta in calls:
            if type(delta) is not dict:
                continue
            key = delta.get("index")
            if type(key) is not int:
                call_id = delta.get("id")
                key = call_id if isinstance(call_id, str) and call_id else self._last_key
            self._last_key = key
            call = self._calls.get(key)
            if call is None:
                call = self._calls[key] = _Call()
            function = delta.get("function")
            if type(function) is not dict:
                function = {}
            arguments = function.get("arguments")
            if arguments and type(arguments) is str:
                if call.prefix:
                    out.append(call.prefix + to_json(arguments) + _DELTA_END)
                    continue
                call.pending.append(arguments)
            if call.prefix:
                continue
            call_id = delta.get("id")
            if not call.id and isinstance(call_id, str):
                call.id = call_id
            name = function.get("name")
            if not call.name and isinstance(name, str):
                call.name = name
            if call.name:
                out.append(self._open_tool(call))
        return out[0] if len(out) == 1 else b"".join(out)

    def _open_tool(self, call: _Call) -> bytes:
        """Open ``call``'s ``tool_use`` block, with the arguments that came before its name."""
        block = {"type": "tool_use", "id": call.id or _new_id("toolu_"), "name": call.name, "input": {}}
        out = self._open(_TOOL, to_json(block))
        self._has_tools = True
        call.prefix = _DELTA_HEAD + str(self._next - 1).encode() + b',"delta":{"type":"input_json_delta","partial_json":'
        if call.pending:
            out += call.prefix + to_json("".join(call.pending)) + _DELTA_END
            call.pending = []
        return out

    def _end(self) -> bytes:
        """Close the open block, then ``message_delta`` (stop reason and final usage) and ``message_stop``."""
        self.ended = True
        out = b"" if self._started else self._message_start()
        if self._kind:
            out += self._stop
            self._kind = _NO_BLOCK
        reason = _stop_reason(self._reason, self._has_tools)
        return out + _MESSAGE_DELTA[reason] + _usage_json(self.usage) + b"}\n\n" + _MESSAGE_STOP

    def _error(self, error: Any) -> bytes:
        self.ended = True
        if type(error) is not dict:
            error = {"message": error} if isinstance(error, str) else {}
        message = error.get("message")
        code, kind = error.get("code"), error.get("type")
        overloaded = code in (529, "529") or any(isinstance(text, str) and "overloaded" in text.lower() for text in (code, kind))
        text = self.mask(message) if isinstance(message, str) and message else "unknown error"
        return error_event("overloaded_error" if overloaded else "api_error", f"Error from {self.provider} API: {text}")
