"""The proxied endpoints: one table says where each goes upstream, in which dialect, and how its streams end.

Every proxied route is routed the same way (``model`` as ``PROVIDER/MODEL``
or a ``model_provider``, fallbacks, retries, circuits, cancel on disconnect);
what differs is listed here: the upstream path, the dialect its clients
speak (OpenAI's, or Anthropic's Messages API), whether the chat rules apply
(the user-message check, the types of the chat fields, OpenRouter's
additions), whether the route can stream, and the format of the one error
event that ends a stream which failed after its first byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import ujson

from models.errors import ApiError


@dataclass(frozen=True)
class Endpoint:
    """One proxied route."""

    route: str  # the node's route name (metrics, logs)
    path: str  # appended to the provider's base URL (a provider of the other dialect: its family says)
    chat_rules: bool = False
    streams: bool = True
    # "chat": data: {"error": ...}; "responses": event: error + data: {"type": "error", "code", ...};
    # "messages": event: error + data: {"type": "error", "error": {"type", "message"}}
    event_format: str = "chat"
    dialect: str = "openai"  # the API its clients speak: "openai", or "anthropic" (the Messages API)

    def error_event(self, error: ApiError) -> bytes:
        """The SSE event that ends a begun stream with ``error``, in this API's own format."""
        if self.event_format == "responses":
            data = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
            return b"event: error\ndata: " + _json(data) + b"\n\n"
        if self.event_format == "messages":
            return b"event: error\ndata: " + _json(anthropic_error(error)) + b"\n\n"
        return b"data: " + _json({"error": error.to_dict()}) + b"\n\n"


# Anthropic's error type for each status the node answers with on a Messages route.
ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error(error: ApiError) -> dict[str, object]:
    """``error`` in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``, the node's ``code`` kept."""
    status = error.status
    kind = ANTHROPIC_ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    body: dict[str, object] = {"type": kind, "message": error.message}
    if error.code:
        body["code"] = error.code
    return {"type": "error", "error": body}


def _json(data: object) -> bytes:
    return ujson.dumps(data, escape_forward_slashes=False).encode()


CHAT = Endpoint("chat", "/chat/completions", chat_rules=True)
RESPONSES = Endpoint("responses", "/responses", event_format="responses")
EMBEDDINGS = Endpoint("embeddings", "/embeddings", streams=False)
COMPLETIONS = Endpoint("completions", "/completions")
MESSAGES = Endpoint("messages", "/messages", event_format="messages", dialect="anthropic")
COUNT_TOKENS = Endpoint("count_tokens", "/messages/count_tokens", streams=False, dialect="anthropic")

ENDPOINTS = (CHAT, RESPONSES, EMBEDDINGS, COMPLETIONS, MESSAGES, COUNT_TOKENS)
