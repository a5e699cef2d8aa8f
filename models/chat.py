"""Parsing and validation of request bodies: JSON objects, chat requests.

Only what the node itself relies on is checked (the model name, the
messages, the types of the well-known OpenAI fields); every other field is
carried to the upstream untouched.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import ujson

from models.endpoints import CHAT, Endpoint
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
# The exact types a decoded JSON value of each field may have (a bool is never an int here): the usual body
# passes on one set look-up a field, and only a mismatch goes through check_type for its message.
_EXACT_TYPES = {name: frozenset(types) | {type(None)} for name, types in FIELD_TYPES.items()}
USER_MESSAGE_REQUIRED = "At least one user message is required"


# Bodies above this size are checked for absurd numbers of JSON values before they are parsed.
STRUCTURE_CHECK_SIZE = 64 * 1024
# Rough CPython costs (bytes) of what a parsed body is made of: a str, another scalar, a container.
_STRING_COST, _VALUE_COST, _CONTAINER_COST = 57, 36, 150
# A parsed body may cost at most this many times its size (the raw bytes and the copy sent upstream come on top).
MAX_PARSED_RATIO = 8


def check_structure(raw: bytes) -> None:
    """Refuse a large body whose parsed form would cost far more memory than its size.

    Twenty megabytes of ``[],[],...`` parse into seven million list objects
    (about 600 MB, seconds of CPU). Counting quotes, brackets and commas (a
    few milliseconds, no parse) bounds what the parse would build; bodies of
    text, images and token arrays stay far below the bound. Nesting deeper
    than 1,024 levels is refused by the JSON decoder itself.
    """
    if len(raw) < STRUCTURE_CHECK_SIZE:
        return
    strings = raw.count(b'"') // 2
    containers = raw.count(b"[") + raw.count(b"{")
    values = raw.count(b",") + containers
    estimate = _STRING_COST * strings + _VALUE_COST * max(values - strings, 0) + _CONTAINER_COST * containers
    if estimate > MAX_PARSED_RATIO * len(raw):
        raise bad_request(
            "Request body holds too many JSON values for its size (arrays or objects of tiny items)",
            code="body_too_complex",
        )


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object.

    Refused with 400: an empty body, invalid JSON, invalid UTF-8 (encoded
    surrogates included), absurd structure (:func:`check_structure`), and
    anything but an object. ``NaN``, ``Infinity`` and numbers out of range
    parse here but are refused when the body is encoded again
    (:func:`models.jsonbody.json_bytes`), before anything is sent.
    """
    if not raw.strip():
        raise bad_request("Request body is empty; a JSON object is required")
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise bad_request("Request body is not valid UTF-8") from None
    check_structure(raw)
    try:
        body = ujson.loads(raw)
    except (ValueError, OverflowError) as exc:
        detail = " (nested too deeply)" if "depth" in str(exc) else ""
        raise bad_request("Request body is not valid JSON" + detail) from None
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
    api: str = "openai"  # the dialect it speaks: "openai" (chat completions) or "anthropic" (Messages)

    def __repr__(self) -> str:  # never show the key
        return f"CustomProvider(base_url={self.base_url!r}, provider_name={self.provider_name!r}, api={self.api!r})"

    @property
    def host(self) -> str:
        """The host of ``base_url`` (a name, or an IP literal without brackets)."""
        return urlsplit(self.base_url).hostname or ""


CUSTOM_APIS = ("openai", "anthropic")  # what ``model_provider.api`` may name: the provider families
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
MAX_PROVIDER_NAME = 100


def forbidden(message: str, param: str = "model_provider.base_url") -> ApiError:
    """A 400 ``custom_provider_forbidden``: the node will not call that address."""
    return ApiError(400, message, param=param, code="custom_provider_forbidden")


def _header_safe(value: Any, param: str) -> str:
    """A string that can go into an HTTP header: no control characters, Latin-1 only."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_request(f"'{param}' must be a string", param=param)
    if _CONTROL_CHARS.search(value):
        raise bad_request(f"'{param}' must not contain control characters", param=param)
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise bad_request(f"'{param}' must be printable ASCII or Latin-1 text (an HTTP header value)", param=param) from None
    return value


def parse_custom_provider(value: Any, allowed: bool) -> CustomProvider | None:
    """Validate a ``model_provider`` object (None when absent).

    The base URL must be plain ``http(s)://host[:port][/path]``: a query, a
    fragment or user info is refused (``custom_provider_forbidden``), since
    they would let a caller pick any path on any host. Which addresses the
    host may resolve to is checked later, where the connection is made
    (``utils.upstream.guard``).
    """
    if value is None:
        return None
    if not allowed:
        raise bad_request("Custom providers are disabled on this node (model_provider)", param="model_provider")
    if not isinstance(value, dict):
        raise bad_request("'model_provider' must be an object", param="model_provider")
    base_url = value.get("base_url")
    if not isinstance(base_url, str) or not base_url.strip():
        raise bad_request("'model_provider.base_url' is required", param="model_provider.base_url")
    base_url = base_url.strip()
    if _CONTROL_CHARS.search(base_url) or " " in base_url or not is_unicode(base_url):
        raise bad_request("'model_provider.base_url' must not contain spaces or control characters",
                          param="model_provider.base_url")
    parsed = urlsplit(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise bad_request("'model_provider.base_url' must be an http(s) URL", param="model_provider.base_url")
    if "?" in base_url or "#" in base_url or "@" in parsed.netloc:
        raise forbidden("'model_provider.base_url' must not carry a query, a fragment or user info")
    try:
        port_ok = parsed.port != 0
    except ValueError:
        port_ok = False
    if not port_ok:
        raise bad_request("'model_provider.base_url' has an invalid port", param="model_provider.base_url")
    api_key = _header_safe(value.get("api_key"), "model_provider.api_key")
    name = _header_safe(value.get("provider_name"), "model_provider.provider_name") or parsed.hostname or "custom"
    if len(name) > MAX_PROVIDER_NAME:
        raise bad_request(f"'model_provider.provider_name' must be at most {MAX_PROVIDER_NAME} characters",
                          param="model_provider.provider_name")
    api = value.get("api", "openai")
    if api is None:
        api = "openai"
    if api not in CUSTOM_APIS:
        raise bad_request(f"'model_provider.api' must be one of {', '.join(CUSTOM_APIS)}", param="model_provider.api")
    return CustomProvider(base_url=base_url.rstrip("/"), api_key=api_key, provider_name=name, api=api)


def is_unicode(text: str) -> bool:
    """False when ``text`` holds a lone surrogate (legal as a JSON escape, not as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ProviderNames(frozenset[str]):
    """The provider names a model may be prefixed with, DEFAULT_PROVIDER ("" when unset) for every other model,
    and MODEL_ALIASES_FILE's names (a name -> its target's provider and model)."""

    default: str
    aliases: Mapping[str, tuple[str, str]]

    def __new__(
        cls, names: Collection[str], default: str = "", aliases: Mapping[str, tuple[str, str]] | None = None
    ) -> ProviderNames:
        self = super().__new__(cls, names)
        self.default = default
        self.aliases = aliases or {}
        return self


def split_model(model: Any, providers: Collection[str], param: str = "model") -> tuple[str, str]:
    """``"openrouter/a/b"`` → ``("openrouter", "a/b")``; 400 when it cannot be routed.

    An alias (:class:`ProviderNames`) is its target's. With a default provider,
    a model whose first segment names no provider goes to it whole:
    ``("openrouter", "meta-llama/x")``.
    """
    if model is None or model == "":
        raise bad_request(f"'{param}' is required", param=param)
    if not isinstance(model, str) or not is_unicode(model):
        raise bad_request(f"'{param}' must be a string", param=param)
    aliases = getattr(providers, "aliases", None)
    if aliases and model in aliases:
        return aliases[model]
    provider, sep, name = model.partition("/")
    if sep and name and provider in providers:
        return provider, name
    default = getattr(providers, "default", "")
    if default and provider not in providers:
        return default, model
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


MAX_FALLBACKS = 8


@dataclass(frozen=True)
class Fallback:
    """A model to try when the one before it failed: ``openai/gpt-4o`` as provider, name and id."""

    provider: str
    name: str
    id: str


def parse_fallbacks(value: Any, providers: Collection[str]) -> list[Fallback] | None:
    """A request's ``fallbacks`` (None when absent: the node's MODEL_FALLBACKS_FILE decides)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise bad_request("'fallbacks' must be an array of model ids (PROVIDER/MODEL)", param="fallbacks")
    if len(value) > MAX_FALLBACKS:
        raise bad_request(f"'fallbacks' may name at most {MAX_FALLBACKS} models", param="fallbacks")
    return [fallback_of(item, providers, f"fallbacks[{i}]") for i, item in enumerate(value)]


def fallback_of(model: Any, providers: Collection[str], param: str = "model") -> Fallback:
    """A routable model as a :class:`Fallback`, its id the model it goes to (an alias's target)."""
    provider, name = split_model(model, providers, param)
    return Fallback(provider, name, model if model.startswith(provider + "/") else f"{provider}/{name}")


def route_model(
    body: dict[str, Any], providers: Collection[str], allow_custom: bool
) -> tuple[CustomProvider | None, str, str]:
    """A request body's ``model_provider`` (taken out of the body) and where its ``model`` goes: the custom
    provider and the model as given, or a configured provider and the model without its prefix (written back)."""
    custom = parse_custom_provider(body.pop("model_provider", None), allow_custom)
    model = body.get("model")
    if custom is not None:
        if not isinstance(model, str) or not model:
            raise bad_request("'model' is required", param="model")
        return custom, custom.provider_name, model
    provider, upstream_model = split_model(model, providers)
    body["model"] = upstream_model
    return None, provider, upstream_model


@dataclass
class ProxyRequest:
    """A validated chat completion request, ready to be sent upstream."""

    body: dict[str, Any]  # the upstream body: model rewritten, model_provider and fallbacks removed
    provider: str  # provider name ("openai", ...) or the custom provider's name
    model: str  # the model name as sent upstream
    stream: bool
    custom: CustomProvider | None = None
    fallbacks: list[Fallback] | None = None  # None: not given by the request
    endpoint: Endpoint = CHAT
    session: str = ""  # the session it names (a key pool keeps it on one key): see session_of
    client_model: str = ""  # the model as the client named it (a translated Messages answer's ``model``)
    headers: dict[str, str] = field(default_factory=dict)  # client headers relayed to a provider of its dialect
    query: str = ""  # the query relayed to a provider of its dialect ("?beta=true")


def parse_proxy_request(
    raw: bytes, providers: Collection[str], allow_custom: bool, endpoint: Endpoint = CHAT
) -> ProxyRequest:
    """Validate the body of a proxied request (chat by default); raise :class:`ApiError` (400) when bad.

    Every route needs a JSON object with a routable ``model``; the chat rules
    (the types of the chat fields, a user message) apply where the endpoint
    says so. Every other field passes through untouched.
    """
    body = parse_json_object(raw)
    if endpoint.chat_rules:
        for name in FIELD_TYPES.keys() & body.keys():
            if type(body[name]) not in _EXACT_TYPES[name]:
                check_type(body, name, FIELD_TYPES[name])
    elif endpoint.streams:
        check_type(body, "stream", (bool,))
    fallbacks = parse_fallbacks(body.pop("fallbacks", None), providers) if "fallbacks" in body else None
    client_model = body.get("model")
    custom, provider, upstream_model = route_model(body, providers, allow_custom)
    if endpoint.chat_rules:
        check_messages(body)
    session = body.get("prompt_cache_key") or body.get("user")
    return ProxyRequest(
        body=body, provider=provider, model=upstream_model, stream=endpoint.streams and body.get("stream") is True,
        custom=custom, fallbacks=fallbacks, endpoint=endpoint, session=session if isinstance(session, str) else "",
        client_model=client_model if isinstance(client_model, str) else "",
    )


__all__ = [
    "ApiError",
    "ProxyRequest",
    "CustomProvider",
    "ProviderNames",
    "USER_MESSAGE_REQUIRED",
    "check_messages",
    "check_type",
    "parse_proxy_request",
    "parse_custom_provider",
    "parse_json_object",
    "split_model",
]
