"""The OpenAI-compatible family: openai, openrouter, groq, mira, ollama, and a custom ``model_provider``.

Every endpoint of the node goes to the same path under the provider's base
URL with ``Authorization: Bearer KEY``. A request is relayed as it came, with
two changes the node makes itself: ``stream_options.include_usage`` asked for
(STREAM_USAGE=inject; the usage-only event is then kept from the client), and
the provider's additions (OpenRouter's ``provider.ignore``) on chat requests
that do not set them. Answers pass through byte for byte; usage is read on the
way (:mod:`utils.upstream.usage`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.chat import ProxyRequest
from models.endpoints import CHAT, COUNT_TOKENS, Endpoint
from models.jsonbody import json_bytes
from utils.translate import MessagesStream, chat_body, messages_answer
from utils.upstream.providers.base import Family, Prepared
from utils.upstream.usage import StreamUsage, Usage, read_usage, wants_injection


class Relayed:
    """The reader of an answer in the client's own dialect: bytes as they came, usage read on the way."""

    __slots__ = ("strip",)

    def __init__(self, strip: bool) -> None:
        self.strip = strip  # the node asked for stream usage: the usage-only event is not the client's

    def json(self, body: bytes) -> tuple[bytes, Usage | None]:
        return body, read_usage(body)

    def stream(self) -> StreamUsage:
        return StreamUsage(self.strip)


RELAYED = Relayed(False)
RELAYED_USAGE_ASKED = Relayed(True)


class MessagesFromChat:
    """The reader of a chat answer to a Messages client: translated to Messages, JSON or stream."""

    __slots__ = ("model", "provider", "mask")

    def __init__(self, model: str, provider: str, mask: Callable[[str], str]) -> None:
        self.model = model  # the model as the client named it
        self.provider = provider
        self.mask = mask

    def json(self, body: bytes) -> tuple[bytes, Usage | None]:
        return messages_answer(body, self.model, self.provider)

    def stream(self) -> MessagesStream:
        return MessagesStream(self.model, self.mask, self.provider)


class OpenAICompatible(Family):
    """OpenAI's API as most providers offer it."""

    api = "openai"

    def __init__(self, stream_usage: str, mask: Callable[[str], str]) -> None:
        self.stream_usage = stream_usage  # STREAM_USAGE
        self.mask = mask  # masks upstream text the node puts in a translated answer (a stream's error event)

    def path(self, endpoint: Endpoint) -> str | None:
        if endpoint.dialect == "anthropic":  # a Messages client: translated to chat; count_tokens is the node's own
            return None if endpoint is COUNT_TOKENS else CHAT.path
        return endpoint.path

    def headers(self, api_key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = "Bearer " + api_key
        return headers

    def prepare(self, request: ProxyRequest, additions: Mapping[str, Any]) -> Prepared:
        body: dict[str, Any] = request.body
        if request.endpoint.dialect == "anthropic":
            translated = chat_body(body)
            if additions:
                translated = {**{n: v for n, v in additions.items() if n not in translated}, **translated}
            return Prepared(json_bytes(translated), MessagesFromChat(request.client_model, request.provider, self.mask))
        inject = wants_injection(request, self.stream_usage)
        if inject:
            options = body.get("stream_options")
            body = dict(body, stream_options={**(options if isinstance(options, dict) else {}), "include_usage": True})
        if additions and request.endpoint.chat_rules:
            missing = {name: value for name, value in additions.items() if name not in body}
            if missing:
                body = {**body, **missing}
        return Prepared(json_bytes(body), RELAYED_USAGE_ASKED if inject else RELAYED)
