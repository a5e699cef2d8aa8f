"""Parsing and validation of request bodies: JSON objects, chat requests.

Only what the node itself relies on is checked (the model name, the
messages, the types of the well-known OpenAI fields); every other field is
carried to the upstream untouched.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import ujson

from models.errors import ApiError, bad_request

# Well-known OpenAI fields and the JSON types they must have when present.
_NUMBER = (int, float)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "frequency_penalty": _NUMBER,
    "presence_penalty": _NUMBER,
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "n": (int,),
    "seed": (int,),
    "top_logprobs": (int,),
    "stream": (bool,),
    "logprobs": (bool,),
    "parallel_tool_calls": (bool,),
    "stop": (str, list),
    "tools": (list,),
    "tool_choice": (str, dict),
    "response_format": (dict,),
    "stream_options": (dict,),
    "logit_bias": (dict,),
    "user": (str,),
    "metadata": (dict,),
}
_TYPE_NAMES = {int: "integer", float: "number", bool: "boolean", str: "string", list: "array", dict: "object"}
USER_MESSAGE_REQUIRED = "At least one user message is required"


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object."""
    if not raw.strip():
        raise bad_request("Request body is empty; a JSON object is required")
    try:
        body = ujson.loads(raw)
    except (ValueError, OverflowError):
        raise bad_request("Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


def check_type(body: dict[str, Any], name: str, types: tuple[type, ...]) -> None:
    """400 when ``body[name]`` is present, not null, and not of one of ``types``."""
    value = body.get(name)
    if value is None:
        return
    # bool is an int in Python, never in JSON.
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
        raise bad_request(f"'{name}' must be of type {expected}", param=name)


def check_messages(body: dict[str, Any], require_user: bool = True) -> list[dict[str, Any]]:
    """Validate ``messages``: a non-empty array of objects with a string role."""
    messages = body.get("messages")
    if messages is None or messages == []:
        raise bad_request(USER_MESSAGE_REQUIRED if require_user else "'messages' is required", param="messages")
    if not isinstance(messages, list):
        raise bad_request("'messages' must be an array", param="messages")
    has_user = False
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"'messages[{index}]' must be an object", param=f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise bad_request(f"'messages[{index}].role' must be a non-empty string", param=f"messages[{index}].role")
        if role == "user":
            has_user = True
    if require_user and not has_user:
        raise bad_request(USER_MESSAGE_REQUIRED, param="messages")
    return messages


@dataclass(frozen=True)
class CustomProvider:
    """A per-request ``model_provider``: where to send this one request."""

    base_url: str
    api_key: str
    provider_name: str

    def __repr__(self) -> str:  # never show the key
        return f"CustomProvider(base_url={self.base_url!r}, provider_name={self.provider_name!r})"


def parse_custom_provider(value: Any, allowed: bool) -> CustomProvider | None:
    """Validate a ``model_provider`` object (None when absent)."""
    if value is None:
        return None
    if not allowed:
        raise bad_request("Custom providers are disabled on this node (model_provider)", param="model_provider")
    if not isinstance(value, dict):
        raise bad_request("'model_provider' must be an object", param="model_provider")
    base_url = value.get("base_url")
    if not isinstance(base_url, str) or not base_url.strip():
        raise bad_request("'model_provider.base_url' is required", param="model_provider.base_url")
    parsed = urlparse(base_url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise bad_request("'model_provider.base_url' must be an http(s) URL", param="model_provider.base_url")
    api_key = value.get("api_key", "")
    if api_key is None:
        api_key = ""
    if not isinstance(api_key, str):
        raise bad_request("'model_provider.api_key' must be a string", param="model_provider.api_key")
    name = value.get("provider_name") or parsed.hostname or "custom"
    if not isinstance(name, str):
        raise bad_request("'model_provider.provider_name' must be a string", param="model_provider.provider_name")
    return CustomProvider(base_url=base_url.strip().rstrip("/"), api_key=api_key, provider_name=name)


def is_unicode(text: str) -> bool:
    """False when ``text`` holds a lone surrogate (legal as a JSON escape, not as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_model(model: Any, providers: Collection[str], param: str = "model") -> tuple[str, str]:
    """``"openrouter/a/b"`` → ``("openrouter", "a/b")``; 400 when it cannot be routed."""
    if model is None or model == "":
        raise bad_request(f"'{param}' is required", param=param)
    if not isinstance(model, str) or not is_unicode(model):
        raise bad_request(f"'{param}' must be a string", param=param)
    provider, sep, name = model.partition("/")
    if not sep or not provider or not name:
        raise bad_request(
            f"'{param}' must be PROVIDER/MODEL (for example openai/gpt-4o), got '{model[:100]}'", param=param
        )
    if provider not in providers:
        raise bad_request(
            f"Unknown provider '{provider[:50]}'; supported: {', '.join(sorted(providers))}",
            param=param,
            code="unknown_provider",
        )
    return provider, name


@dataclass
class ChatRequest:
    """A validated chat completion request, ready to be sent upstream."""

    body: dict[str, Any]  # the upstream body: model rewritten, model_provider removed
    provider: str  # provider name ("openai", ...) or the custom provider's name
    model: str  # the model name as sent upstream
    stream: bool
    custom: CustomProvider | None = None


def parse_chat_request(raw: bytes, providers: Collection[str], allow_custom: bool) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body; raise :class:`ApiError` (400) when bad."""
    body = parse_json_object(raw)
    for name in FIELD_TYPES.keys() & body.keys():
        check_type(body, name, FIELD_TYPES[name])
    custom = parse_custom_provider(body.pop("model_provider", None), allow_custom)
    model = body.get("model")
    if custom is not None:
        if not isinstance(model, str) or not model:
            raise bad_request("'model' is required", param="model")
        provider, upstream_model = custom.provider_name, model
    else:
        provider, upstream_model = split_model(model, providers)
        body["model"] = upstream_model
    check_messages(body)
    return ChatRequest(
        body=body, provider=provider, model=upstream_model, stream=body.get("stream") is True, custom=custom
    )


__all__ = [
    "ApiError",
    "ChatRequest",
    "CustomProvider",
    "USER_MESSAGE_REQUIRED",
    "check_messages",
    "check_type",
    "parse_chat_request",
    "parse_custom_provider",
    "parse_json_object",
    "split_model",
]
