"""JSON encoding of bodies the node sends: UTF-8, slashes unescaped, never failing on odd strings."""

from __future__ import annotations

from typing import Any

import ujson


def json_bytes(data: Any) -> bytes:
    """``data`` as UTF-8 JSON bytes.

    Non-ASCII text is written as is, which is smaller and faster; a string
    that cannot be UTF-8 (a lone surrogate such as ``"\\ud800"`` in the
    caller's JSON) is written with ``\\u`` escapes instead, so the value still
    goes through unchanged rather than failing the request.
    """
    try:
        return ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False).encode()
    except UnicodeEncodeError:
        return ujson.dumps(data, escape_forward_slashes=False).encode()
