"""What both directions of the translator share: JSON bytes, the 400 naming a field, lists of typed items, SSE events."""

from __future__ import annotations

from typing import Any

import ujson

from models.errors import ApiError, bad_request

# What a translated stream says, as an error event, when its upstream's stream stopped after the answer began but
# before its end (chat: no finish_reason; Messages: no message_stop): never an end as if the answer were whole.
CUT_SHORT = "the stream ended before the answer was complete"


def to_json(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON; a string that cannot be UTF-8 (a lone surrogate) is written escaped."""
    try:
        return ujson.dumps(value, escape_forward_slashes=False, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return ujson.dumps(value, escape_forward_slashes=False).encode()


def bad(param: str, problem: str) -> ApiError:
    """A 400 naming the field: ``'messages[0].content' must be ...``."""
    return bad_request(f"'{param}' {problem}", param=param)


def typed_items(content: Any, where: str, noun: str) -> list[dict[str, Any]]:
    """``content`` as a list of objects with a string ``type`` (content parts or blocks: ``noun``); a 400 otherwise."""
    if not isinstance(content, list):
        raise bad(where, f"must be a string or an array of {noun}")
    for index, item in enumerate(content):
        if not isinstance(item, dict):
            raise bad(f"{where}[{index}]", "must be an object")
        if not isinstance(item.get("type"), str):
            raise bad(f"{where}[{index}].type", "must be a string")
    return content


def text_of(item: dict[str, Any], where: str, key: str = "text") -> str:
    """``item[key]``, which must be a string."""
    text = item.get(key)
    if not isinstance(text, str):
        raise bad(f"{where}.{key}", "must be a string")
    return text


def tool_parts(source: dict[str, Any], where: str, schema_key: str) -> tuple[str, str | None, dict[str, Any]]:
    """A tool definition's name, description (None when absent) and JSON schema (an empty object schema when absent),
    in either dialect (chat's ``function`` object with ``parameters``, a Messages tool with ``input_schema``)."""
    name = source.get("name")
    if not isinstance(name, str) or not name:
        raise bad(f"{where}.name", "must be a non-empty string")
    description = source.get("description")
    if description is not None and not isinstance(description, str):
        raise bad(f"{where}.description", "must be a string")
    schema = source.get(schema_key)
    if schema is None:
        schema = {"type": "object", "properties": {}}
    elif not isinstance(schema, dict):
        raise bad(f"{where}.{schema_key}", "must be an object")
    return name, description, schema


def last_boundary(data: bytes) -> int:
    """The index just past the last blank line of ``data`` (LF, CRLF or a mix), 0 when there is none."""
    end = data.rfind(b"\n\n")
    end = end + 2 if end >= 0 else 0
    crlf = data.rfind(b"\n\r\n")
    if crlf >= 0 and crlf + 3 > end:
        end = crlf + 3
    return end
