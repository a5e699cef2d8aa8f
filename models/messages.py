"""Validation of Anthropic Messages requests: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Only what the node relies on is checked: a JSON object, a routable ``model``
(``PROVIDER/MODEL``, an alias, DEFAULT_PROVIDER, or a ``model_provider``),
a non-empty ``messages`` array, and on ``/v1/messages`` a positive integer
``max_tokens`` and a boolean ``stream``. Everything else is the provider's
business: relayed as it is to a Messages provider, translated for the others.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import ujson

from models.chat import ProxyRequest, parse_json_object, route_model
from models.endpoints import MESSAGES, Endpoint
from models.errors import bad_request

SESSION_HEADER = "X-Claude-Code-Session-Id"
RELAYED_HEADERS = ("anthropic-version", "anthropic-beta")  # the client headers a Messages provider gets as they are
MAX_SESSION = 200  # characters of a session id kept


def session_of(body: dict[str, Any], headers: Mapping[str, str]) -> str:
    """The session a Messages request names: the ``X-Claude-Code-Session-Id`` header, else the ``session_id``
    inside a JSON ``metadata.user_id`` (as Claude Code writes it); "" when none."""
    session = headers.get(SESSION_HEADER)
    if session:
        return session[:MAX_SESSION]
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user, str) and user.startswith("{"):
        try:
            data = ujson.loads(user)
        except (ValueError, OverflowError):
            return ""
        found = data.get("session_id") if isinstance(data, dict) else None
        if isinstance(found, str):
            return found[:MAX_SESSION]
    return ""


def parse_messages_request(
    raw: bytes,
    providers: Collection[str],
    allow_custom: bool,
    headers: Mapping[str, str],
    query: str = "",
    endpoint: Endpoint = MESSAGES,
) -> ProxyRequest:
    """Validate a Messages request body; raise :class:`~models.errors.ApiError` (400) naming the field when bad.

    ``headers`` are the request's (``anthropic-version`` and ``anthropic-beta`` are kept for a Messages
    provider, the session header read); ``query`` is passed on to a Messages provider (``?beta=true``).
    """
    body = parse_json_object(raw)
    model = body.get("model")
    custom, provider, upstream_model = route_model(body, providers, allow_custom)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{index}]' must be an object", param=f"messages[{index}]")
    stream = False
    if endpoint is MESSAGES:
        max_tokens = body.get("max_tokens")
        if type(max_tokens) is not int or max_tokens < 1:
            raise bad_request("'max_tokens' is required and must be a positive integer", param="max_tokens")
        stream = body.get("stream", False)
        if type(stream) is not bool:
            raise bad_request("'stream' must be a boolean", param="stream")
    relayed = {name: headers[name] for name in RELAYED_HEADERS if name in headers}
    return ProxyRequest(
        body=body, provider=provider, model=upstream_model, stream=stream, custom=custom, endpoint=endpoint,
        session=session_of(body, headers), client_model=model if isinstance(model, str) else "", headers=relayed,
        query=query,
    )
