"""The Messages family: Anthropic's Messages API (the ``anthropic`` provider, or ``model_provider.api: "anthropic"``).

A call goes to ``{base_url}/messages`` with ``x-api-key: KEY`` and
``anthropic-version``. Only chat (and verify and eval, which are chat calls)
reaches it: responses, embeddings and completions have no Messages
counterpart (:meth:`MessagesFamily.path` is None, the request a 400
``unsupported_endpoint``). A chat request is translated to Messages and its
answer back to chat by the translator unit (:mod:`utils.translate`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.chat import ProxyRequest
from models.endpoints import CHAT, Endpoint
from models.jsonbody import json_bytes
from utils.translate import ChatStream, chat_completion, messages_body
from utils.upstream.providers.base import AnswerReader, Family
from utils.upstream.usage import Usage

ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version header of every call the node makes itself


class ChatFromMessages:
    """The reader of a Messages answer to a chat client: translated to chat, JSON or stream."""

    __slots__ = ("model", "include_usage", "mask")

    def __init__(self, model: str, include_usage: bool, mask: Callable[[str], str]) -> None:
        self.model = model
        self.include_usage = include_usage  # the client asked for the usage chunk (stream_options.include_usage)
        self.mask = mask

    def json(self, body: bytes) -> tuple[bytes, Usage | None]:
        return chat_completion(body, self.model)

    def stream(self) -> ChatStream:
        return ChatStream(self.model, self.include_usage, self.mask)


class MessagesFamily(Family):
    """Anthropic's Messages API."""

    api = "anthropic"

    def __init__(self, max_tokens: int, mask: Callable[[str], str]) -> None:
        self.max_tokens = max_tokens  # ANTHROPIC_MAX_TOKENS: a chat request that sets no max_tokens gets it
        self.mask = mask  # masks upstream text the node puts in a translated answer (a stream's error event)

    def path(self, endpoint: Endpoint) -> str | None:
        return "/messages" if endpoint is CHAT else None

    def headers(self, api_key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def prepare(self, request: ProxyRequest, additions: Mapping[str, Any]) -> tuple[bytes, AnswerReader]:
        body = request.body
        options = body.get("stream_options")
        include_usage = request.stream and isinstance(options, dict) and options.get("include_usage") is True
        return json_bytes(messages_body(body, self.max_tokens)), ChatFromMessages(request.model, include_usage, self.mask)
