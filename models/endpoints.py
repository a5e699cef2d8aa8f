"""The proxied OpenAI endpoints: one table says where each goes upstream and how its streams end.

Every proxied route is routed the same way (``model`` as ``PROVIDER/MODEL``
or a ``model_provider``, fallbacks, retries, circuits, cancel on disconnect);
what differs is listed here: the upstream path, whether the chat rules apply
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
    path: str  # appended to the provider's base URL
    chat_rules: bool = False
    streams: bool = True
    event_format: str = "chat"  # "chat": data: {"error": ...}; "responses": event: error + data: {"type": "error", ...}

    def error_event(self, error: ApiError) -> bytes:
        """The SSE event that ends a begun stream with ``error``, in this API's own format."""
        if self.event_format == "responses":
            data = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
            return b"event: error\ndata: " + _json(data) + b"\n\n"
        return b"data: " + _json({"error": error.to_dict()}) + b"\n\n"


def _json(data: object) -> bytes:
    return ujson.dumps(data, escape_forward_slashes=False).encode()


CHAT = Endpoint("chat", "/chat/completions", chat_rules=True)
RESPONSES = Endpoint("responses", "/responses", event_format="responses")
EMBEDDINGS = Endpoint("embeddings", "/embeddings", streams=False)
COMPLETIONS = Endpoint("completions", "/completions")

ENDPOINTS = (CHAT, RESPONSES, EMBEDDINGS, COMPLETIONS)
