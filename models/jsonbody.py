"""JSON encoding of bodies the node sends: UTF-8, slashes unescaped, never failing on odd strings."""

from __future__ import annotations

from typing import Any

import ujson

from models.errors import bad_request

NOT_JSON_NUMBER = "Request body is not valid JSON: NaN, Infinity and numbers out of range are not JSON numbers"


def json_bytes(data: Any) -> bytes:
    """``data`` as UTF-8 JSON bytes.

    Non-ASCII text is written as is, which is smaller and faster; a string
    that cannot be UTF-8 (a lone surrogate such as ``"\\ud800"`` in the
    caller's JSON) is written with ``\\u`` escapes instead, so the value still
    goes through unchanged rather than failing the request.

    A non-finite float (the decoder reads ``NaN``, ``Infinity`` and ``1e400``
    as such) has no JSON form: that is the caller's body, so a 400.
    """
    try:
        try:
            return ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False, allow_nan=False).encode()
        except UnicodeEncodeError:
            return ujson.dumps(data, escape_forward_slashes=False, allow_nan=False).encode()
    except OverflowError:
        raise bad_request(NOT_JSON_NUMBER) from None


def check_json_numbers(data: Any) -> None:
    """400 when ``data`` holds a number JSON cannot carry (for bodies not re-encoded whole)."""
    json_bytes(data)
