"""Chat client -> Messages provider: a chat request for the ``anthropic`` provider, and its answer back to chat.

:func:`messages_body` turns a validated chat body into a Messages request (system and developer
messages into ``system``, content parts into blocks, ``tool_calls`` into ``tool_use`` blocks, ``tool``
messages into ``tool_result`` blocks at the head of one user turn, tools and their options as
Anthropic names them); :func:`check_supported` refuses, before any call, what Anthropic cannot do.
Shapes the node's validation let through but that cannot be translated are a 400 naming the field,
never another exception.

Back to chat, :func:`chat_completion` rewrites a JSON answer, and :class:`ChatStream` an SSE stream
event by event: it runs once per upstream chunk, so each chunk's bytes are built by splicing the
delta's JSON between byte prefixes fixed at ``message_start``, and each event is decoded once.

Usage is read as the Usage accounting section says: prompt tokens are ``input_tokens`` plus the
cache read and cache creation tokens, completion tokens ``output_tokens``; in a stream
``message_start`` gives the counts and each ``message_delta`` replaces those it carries.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import ujson

from models.errors import ApiError, bad_request
from models.usage import Usage
from utils.translate.common import CUT_SHORT, bad, last_boundary, text_of, to_json, tool_parts, typed_items

PROVIDER = "anthropic"

# Anthropic's stop_reason -> chat's finish_reason (anything else, or none, is "stop").
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TOOL_CHOICES: dict[str, str] = {"auto": "auto", "required": "any", "none": "none"}
_DATA_URL = re.compile(r"data:([^;,]+)[^,]*;base64,(.*)", re.DOTALL)
# The four counts of an Anthropic usage object, in the order ChatStream keeps them.
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")

# Byte pieces of the chat chunks ChatStream writes.
_NO_FINISH = b',"finish_reason":null}]}\n\n'
_FINISH = {reason: b',"finish_reason":"' + reason.encode() + b'"}]}\n\n' for reason in set(FINISH_REASONS.values())}
_DONE = b"data: [DONE]\n\n"


def _unsupported(param: str, what: str) -> ApiError:
    return bad_request(f"The {PROVIDER} provider cannot take '{param}' ({what})", param=param)


def check_supported(body: dict[str, Any]) -> None:
    """Raise a 400 naming the first parameter of ``body`` that a Messages provider cannot take.

    ``n`` above 1, ``logprobs: true`` and a ``response_format`` other than ``{"type": "text"}``
    have no Messages equivalent; every other unknown field is merely dropped by :func:`messages_body`.
    """
    n = body.get("n")
    if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 1:
        raise _unsupported("n", "more than one choice per request")
    if body.get("logprobs") is True:
        raise _unsupported("logprobs", "log probabilities are not available")
    response_format = body.get("response_format")
    if response_format is not None:
        kind = response_format.get("type") if isinstance(response_format, dict) else None
        if kind != "text":
            raise _unsupported("response_format", f"type {kind!r}; only 'text' is possible")


# ---------------------------------------------------------------------------------------------------------------------
# The request


def messages_body(body: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    """The Messages request for the validated chat ``body`` (whose ``model`` is the upstream's name).

    ``max_tokens`` is the body's ``max_tokens``, else ``max_completion_tokens``, else
    ``default_max_tokens`` (Anthropic requires one). Fields without a Messages equivalent
    (``seed``, ``frequency_penalty``, ``stream_options``, ...) are dropped; those that cannot be
    honoured at all are refused by :func:`check_supported` first.
    """
    check_supported(body)
    system, turns = _turns(body.get("messages"))
    out: dict[str, Any] = {"model": body.get("model"), "messages": turns}
    if system:
        out["system"] = system
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_completion_tokens")
    out["max_tokens"] = default_max_tokens if max_tokens is None else max_tokens
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad("tools", "must be an array")
    if tools:  # without tools, tool_choice and parallel_tool_calls mean nothing and Anthropic refuses them
        out["tools"] = [_tool(tool, f"tools[{index}]") for index, tool in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls") is False)
        if choice is not None:
            out["tool_choice"] = choice
    stop = body.get("stop")
    if stop is not None:
        sequences = [stop] if isinstance(stop, str) else stop
        if not isinstance(sequences, list) or not all(isinstance(item, str) for item in sequences):
            raise bad("stop", "must be a string or an array of strings")
        if sequences:
            out["stop_sequences"] = sequences
    for name in ("temperature", "top_p", "stream"):
        value = body.get(name)
        if value is not None:
            out[name] = value
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


def _turns(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    """The ``system`` text and the user/assistant turns of chat ``messages``."""
    if not isinstance(messages, list):
        raise bad("messages", "must be an array")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    results: list[dict[str, Any]] | None = None  # the blocks of the user turn tool messages are going into
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad(where, "must be an object")
        role = message.get("role")
        if role == "tool":
            if results is None:
                results = []
                turns.append({"role": "user", "content": results})
            results.append(_tool_result(message, where))
        elif role == "system" or role == "developer":
            system.extend(text for text in _texts(message.get("content"), f"{where}.content") if text)
        elif role == "user":
            content = _user_content(message.get("content"), f"{where}.content")
            if results is None:
                turns.append({"role": "user", "content": content})
            else:  # the user's own words go after the tool results, in the same turn
                if isinstance(content, str):
                    if content:
                        results.append({"type": "text", "text": content})
                else:
                    results.extend(content)
                results = None
        elif role == "assistant":
            results = None
            turns.append({"role": "assistant", "content": _assistant_content(message, where)})
        else:
            raise bad(f"{where}.role", "must be one of system, developer, user, assistant or tool")
    return "\n\n".join(system), turns


def _texts(content: Any, where: str) -> list[str]:
    """The texts of a content that may only hold text: a string, or an array of ``text`` parts."""
    if isinstance(content, str):
        return [content]
    texts = []
    for index, part in enumerate(typed_items(content, where, "content parts")):
        if part["type"] != "text":
            raise bad(f"{where}[{index}].type", f"must be 'text' here, not {part['type']!r}")
        texts.append(text_of(part, f"{where}[{index}]"))
    return texts


def _text_block(text: str, part: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _user_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A user message's content: a string as it is, content parts as text and image blocks."""
    if isinstance(content, str):
        return content
    blocks = []
    for index, part in enumerate(typed_items(content, where, "content parts")):
        at = f"{where}[{index}]"
        kind = part["type"]
        if kind == "text":
            text = text_of(part, at)
            if text:  # Anthropic refuses empty text blocks
                blocks.append(_text_block(text, part))
        elif kind == "image_url":
            blocks.append(_image_block(part, at))
        else:
            raise bad(f"{at}.type", f"{kind!r} is not a content part the {PROVIDER} provider takes (text, image_url)")
    return blocks


def _image_block(part: dict[str, Any], where: str) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise bad(f"{where}.image_url.url", "must be a non-empty string")
    source: dict[str, Any]
    if url[:5].lower() == "data:":
        match = _DATA_URL.fullmatch(url)
        if match is None:
            raise bad(f"{where}.image_url.url", "must be a data:MEDIA;base64,DATA URL or an http(s) URL")
        source = {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
    else:
        source = {"type": "url", "url": url}
    block: dict[str, Any] = {"type": "image", "source": source}
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _assistant_content(message: dict[str, Any], where: str) -> str | list[dict[str, Any]]:
    """An assistant message's content: its text (a string stays one), then a ``tool_use`` block per tool call."""
    content = message.get("content")
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise bad(f"{where}.tool_calls", "must be an array")
    if not calls and isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif content is not None:
        for index, part in enumerate(typed_items(content, f"{where}.content", "content parts")):
            at = f"{where}.content[{index}]"
            if part["type"] == "text":
                text = text_of(part, at)
            elif part["type"] == "refusal":
                text = text_of(part, at, "refusal")
            else:
                raise bad(f"{at}.type", f"must be 'text' or 'refusal' in an assistant message, not {part['type']!r}")
            if text:
                blocks.append(_text_block(text, part))
    if not calls:
        return blocks if content is not None else ""
    blocks.extend(_tool_use(call, f"{where}.tool_calls[{index}]") for index, call in enumerate(calls))
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    """One chat tool call as a ``tool_use`` block (``input`` its parsed arguments)."""
    if not isinstance(call, dict):
        raise bad(where, "must be an object")
    if call.get("type", "function") != "function":
        raise bad(f"{where}.type", f"must be 'function' for the {PROVIDER} provider")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.id", "must be a non-empty string")
    function = call.get("function")
    if not isinstance(function, dict):
        raise bad(f"{where}.function", "must be an object")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.function.name", "must be a non-empty string")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        if not arguments.strip():  # a tool without parameters, as some clients write it
            arguments = {}
        else:
            try:
                arguments = ujson.loads(arguments)
            except (ValueError, OverflowError):
                arguments = None
    elif arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise bad(f"{where}.function.arguments", "must be a JSON object (as JSON text)")
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    """A ``tool`` message as a ``tool_result`` block (its text parts joined with a newline)."""
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise bad(f"{where}.tool_call_id", "must be a non-empty string")
    content = message.get("content")
    text = "" if content is None else "\n".join(_texts(content, f"{where}.content"))
    return {"type": "tool_result", "tool_use_id": call_id, "content": text}


def _tool(tool: Any, where: str) -> dict[str, Any]:
    """A chat function tool as a Messages tool (``input_schema`` an empty object schema when absent)."""
    if not isinstance(tool, dict):
        raise bad(where, "must be an object")
    if tool.get("type") != "function":
        raise bad(f"{where}.type", f"must be 'function' for the {PROVIDER} provider")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise bad(f"{where}.function", "must be an object")
    name, description, parameters = tool_parts(function, f"{where}.function", "parameters")
    out: dict[str, Any] = {"name": name}
    if description is not None:
        out["description"] = description
    out["input_schema"] = parameters
    return out


def _tool_choice(choice: Any, serial: bool) -> dict[str, Any] | None:
    """Chat's ``tool_choice`` (and ``parallel_tool_calls: false`` as ``serial``) as Anthropic's, or None."""
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif isinstance(choice, str):
        kind = _TOOL_CHOICES.get(choice)
        if kind is None:
            raise bad("tool_choice", "must be 'auto', 'required', 'none' or a function choice")
        out = {"type": kind}
    elif isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str) or not name:
            raise bad("tool_choice", 'must be {"type": "function", "function": {"name": NAME}} when an object')
        out = {"type": "tool", "name": name}
    else:
        raise bad("tool_choice", "must be a string or an object")
    if serial:
        if out is None:
            out = {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The answer


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if type(value) is int else 0


def _make_usage(fresh: int, output: int, read: int, write: int) -> Usage:
    """The :class:`Usage` of Anthropic's four counts (prompt tokens are all three kinds of input)."""
    return Usage(fresh + read + write, output, read, write)


def _usage(usage: Any) -> Usage | None:
    """The :class:`Usage` of an Anthropic usage object (None when there is none)."""
    if not isinstance(usage, dict):
        return None
    return _make_usage(*(_count(usage, name) for name in _USAGE_FIELDS))


def _chat_usage(usage: Usage) -> dict[str, Any]:
    """Chat's ``usage`` object for ``usage``."""
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt + usage.completion,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read},
    }


def _finish_reason(stop_reason: Any) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_completion(data: bytes, model: str) -> tuple[bytes, Usage | None]:
    """A Messages JSON answer (the upstream's 2xx body) as the ``chat.completion`` bytes for the client, and its usage.

    ``model`` names the answer when the upstream's does not. Text blocks make ``content`` (None
    when there are none), ``tool_use`` blocks ``tool_calls``; thinking and every other block are
    dropped. A body that is not a Messages object is a 502 ``upstream_invalid_json``.
    """
    try:
        answer = ujson.loads(data)
    except (ValueError, OverflowError):
        answer = None
    content = answer.get("content") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or not isinstance(content, list):
        raise ApiError(502, f"{PROVIDER} API answered with invalid JSON", code="upstream_invalid_json")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
        elif kind == "tool_use":
            arguments = block.get("input")
            function = {"name": block.get("name"), "arguments": to_json({} if arguments is None else arguments).decode()}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    answer_id, answer_model = answer.get("id"), answer.get("model")
    usage = _usage(answer.get("usage"))
    out: dict[str, Any] = {
        "id": answer_id if isinstance(answer_id, str) and answer_id else _new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer_model if isinstance(answer_model, str) and answer_model else model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": _finish_reason(answer.get("stop_reason")), "logprobs": None}
        ],
    }
    if usage is not None:
        out["usage"] = _chat_usage(usage)
    return to_json(out), usage


_WAITING, _STARTED, _ENDED = 0, 1, 2  # a ChatStream's message: not begun, begun, stopped (or an error)


class ChatStream:
    """One Messages SSE stream translated to chat chunks as it arrives.

    :meth:`feed` takes the upstream's bytes in any split and returns the chat SSE bytes of every
    event the chunk completes (b"" when none); only the bytes of an incomplete event are kept
    between calls. :meth:`finish` translates a last event that lacked its blank line. ``usage``
    follows the stream: ``message_start``'s counts, each replaced by a later ``message_delta``'s.

    Each chunk is ``data: {"id", "object": "chat.completion.chunk", "created", "model", "choices":
    [{"index": 0, "delta", "finish_reason"}]}``; its bytes around the delta are made once, at
    ``message_start``, and the delta's JSON is spliced in. ``mask`` (the node's redactor) cleans the
    message of an upstream error event before it reaches the client.
    """

    __slots__ = (
        "model", "include_usage", "mask", "usage", "_tail", "_tokens", "_tools", "_head", "_open", "_content", "_state"
    )

    def __init__(self, model: str, include_usage: bool, mask: Callable[[str], str] = str) -> None:
        self.model = model
        self.include_usage = include_usage
        self.mask = mask
        self.usage: Usage | None = None
        self._tail = b""  # the incomplete event so far
        self._tokens = [0, 0, 0, 0]  # the counts of _USAGE_FIELDS
        self._tools: dict[Any, bytes] = {}  # a tool_use block's index -> the bytes that open its arguments chunks
        self._head = b""  # 'data: {"id":...,"model":...,'
        self._open = b""  # the head and '"choices":[{"index":0,"delta":'
        self._content = b""  # the open bytes and '{"content":'
        self._state = _WAITING  # _STARTED at message_start, _ENDED at message_stop or an error event
        self._begin(_new_id(), model)

    def _begin(self, message_id: str, model: str) -> None:
        self._head = b"".join(
            (
                b'data: {"id":',
                to_json(message_id),
                b',"object":"chat.completion.chunk","created":',
                str(int(time.time())).encode(),
                b',"model":',
                to_json(model),
                b",",
            )
        )
        self._open = self._head + b'"choices":[{"index":0,"delta":'
        self._content = self._open + b'{"content":'

    def feed(self, chunk: bytes) -> bytes:
        """The chat bytes for the events ``chunk`` completes."""
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
        """At the end of the upstream: the chat bytes of a last event that lacked its blank line; and, for a
        stream whose message began but never stopped, an error event (never an end as if the answer were whole)."""
        tail, self._tail = self._tail, b""
        out = self._events(tail) if tail.strip() else b""
        if self._state == _STARTED:
            out += self._error({"error": {"message": CUT_SHORT, "type": "api_error"}})
        return out

    def _events(self, data: bytes) -> bytes:
        """The chat bytes of the whole events in ``data``."""
        out: list[bytes] = []
        lines: list[bytes] = []  # the current event's data lines
        for line in data.splitlines():
            if not line:
                if lines:
                    out.append(self._event(lines[0] if len(lines) == 1 else b"\n".join(lines)))
                    lines = []
            elif line.startswith(b"data:"):
                lines.append(line[5:])  # the JSON decoder skips the space after the colon
        if lines:
            out.append(self._event(lines[0] if len(lines) == 1 else b"\n".join(lines)))
        return out[0] if len(out) == 1 else b"".join(out)

    def _event(self, payload: bytes) -> bytes:
        """The chat bytes of one event's data (b"" for an event chat has nothing for)."""
        try:
            event = ujson.loads(payload)
        except (ValueError, OverflowError):
            return b""
        if type(event) is not dict:
            return b""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if type(delta) is not dict:
                return b""
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                text = delta.get("text")
                return self._content + to_json(text) + b"}" + _NO_FINISH if text and type(text) is str else b""
            if delta_kind == "input_json_delta":
                opener = self._tools.get(event.get("index"))
                partial = delta.get("partial_json")
                if opener is None or not partial or type(partial) is not str:
                    return b""
                return opener + to_json(partial) + b"}}]}" + _NO_FINISH
            return b""  # thinking_delta, signature_delta, citations_delta
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "message_delta":
            return self._message_delta(event)
        if kind == "message_start":
            return self._message_start(event)
        if kind == "message_stop":
            self._state = _ENDED
            if self.include_usage and self.usage is not None:
                return self._head + b'"choices":[],"usage":' + to_json(_chat_usage(self.usage)) + b"}\n\n" + _DONE
            return _DONE
        if kind == "error":
            return self._error(event)
        return b""  # content_block_stop, ping, and events chat has no use for

    def _message_start(self, event: dict[str, Any]) -> bytes:
        if self._state == _WAITING:
            self._state = _STARTED
        message = event.get("message")
        if type(message) is not dict:
            message = {}
        message_id, model = message.get("id"), message.get("model")
        self._begin(
            message_id if isinstance(message_id, str) and message_id else _new_id(),
            model if isinstance(model, str) and model else self.model,
        )
        usage = message.get("usage")
        if type(usage) is dict:
            self._tokens = [_count(usage, name) for name in _USAGE_FIELDS]
            self._set_usage()
        return self._open + b'{"role":"assistant","content":""}' + _NO_FINISH

    def _block_start(self, event: dict[str, Any]) -> bytes:
        block = event.get("content_block")
        if type(block) is not dict:
            return b""
        kind = block.get("type")
        if kind == "tool_use":
            position = len(self._tools)
            self._tools[event.get("index")] = (
                self._open + b'{"tool_calls":[{"index":' + str(position).encode() + b',"function":{"arguments":'
            )
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return self._open + b'{"tool_calls":[' + to_json(call) + b"]}" + _NO_FINISH
        if kind == "text":
            text = block.get("text")
            return self._content + to_json(text) + b"}" + _NO_FINISH if text and type(text) is str else b""
        return b""  # thinking, redacted_thinking, server tool blocks

    def _message_delta(self, event: dict[str, Any]) -> bytes:
        usage = event.get("usage")
        if type(usage) is dict:
            tokens = self._tokens
            for position, name in enumerate(_USAGE_FIELDS):
                value = usage.get(name)
                if type(value) is int:
                    tokens[position] = value
            self._set_usage()
        delta = event.get("delta")
        reason = _finish_reason(delta.get("stop_reason") if type(delta) is dict else None)
        return self._open + b"{}" + _FINISH[reason]

    def _set_usage(self) -> None:
        self.usage = _make_usage(*self._tokens)

    def _error(self, event: dict[str, Any]) -> bytes:
        self._state = _ENDED
        error = event.get("error")
        if type(error) is not dict:
            error = {}
        message, kind = error.get("message"), error.get("type")
        body = {
            "error": {
                "message": f"Error from {PROVIDER} API: " + (self.mask(message) if isinstance(message, str) else "unknown error"),
                "type": kind if isinstance(kind, str) and kind else "upstream_error",
                "param": None,
                "code": None,
            }
        }
        return b"data: " + to_json(body) + b"\n\n"
