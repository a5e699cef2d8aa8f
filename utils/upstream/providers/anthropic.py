"""The Messages family: Anthropic's Messages API (the ``anthropic`` provider, or ``model_provider.api: "anthropic"``).

A call goes to ``{base_url}/messages`` with ``x-api-key: KEY`` and
``anthropic-version``. A Messages request (``/v1/messages``,
``/v1/messages/count_tokens``) is relayed as it came: the body with its
``model`` stripped of the prefix, the client's ``anthropic-version`` and
``anthropic-beta``, the answer byte for byte (usage read on the way). A chat
request (and verify and eval, which are chat calls) is translated to Messages
and its answer back to chat by the translator unit (:mod:`utils.translate`).
Responses, embeddings and completions have no Messages counterpart
(:meth:`MessagesFamily.path` is None: a 400 ``unsupported_endpoint``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.chat import ProxyRequest
from models.endpoints import CHAT, Endpoint
from models.jsonbody import json_bytes
from utils.translate import ChatStream, chat_completion, messages_body
from utils.upstream.providers.base import Family, Prepared
from utils.upstream.usage import MessagesUsage, Usage, read_messages_usage

ANTHROPIC_VERSION = "2023-06-01"  # the anthropic-version header of a call whose client sent none
_DEFAULT_HEADERS = (b"anthropic-version: " + ANTHROPIC_VERSION.encode(),)


class RelayedMessages:
    """The reader of a Messages answer to a Messages client: bytes as they came, usage read on the way."""

    __slots__ = ()

    def json(self, body: bytes) -> tuple[bytes, Usage | None]:
        return body, read_messages_usage(body)

    def stream(self) -> MessagesUsage:
        return MessagesUsage()


RELAYED = RelayedMessages()


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
        if endpoint.dialect == "anthropic":
            return endpoint.path  # /messages, /messages/count_tokens: relayed
        return "/messages" if endpoint is CHAT else None

    def headers(self, api_key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["x-api-key"] = api_key
        return headers  # anthropic-version is the call's own (Prepared.headers): the client's, or the default

    def prepare(self, request: ProxyRequest, additions: Mapping[str, Any]) -> Prepared:
        body = request.body
        if request.endpoint.dialect == "anthropic":
            headers = request.headers  # the client's anthropic-version and anthropic-beta (models.messages)
            lines = tuple(f"{name}: {value}".encode("latin-1") for name, value in headers.items())
            if "anthropic-version" not in headers:
                lines = _DEFAULT_HEADERS + lines
            return Prepared(json_bytes(body), RELAYED, lines, request.query)
        options = body.get("stream_options")
        include_usage = request.stream and isinstance(options, dict) and options.get("include_usage") is True
        reader = ChatFromMessages(request.model, include_usage, self.mask)
        return Prepared(json_bytes(messages_body(body, self.max_tokens)), reader, _DEFAULT_HEADERS)
