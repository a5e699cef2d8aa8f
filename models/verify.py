"""Validation of ``POST /v1/verify`` bodies, and the model references verify and eval share.

A verify body names one model (``model``, defaulting to VERIFY_DEFAULT_MODEL)
or several (``models``, with ``min_yes``, a simple majority by default). Every
model is resolved to a :class:`ModelRef` before any upstream call is made, so
a bad name is a 400 and never a half-run request.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from models.chat import (
    CustomProvider,
    ProxyRequest,
    check_messages,
    check_type,
    is_unicode,
    parse_custom_provider,
    parse_json_object,
    split_model,
)
from models.errors import bad_request
from models.jsonbody import check_json_numbers

# Sampling fields a verify body may carry to every model call (all else is the node's own).
VERIFY_PASSTHROUGH: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "seed": (int,),
    "user": (str,),
}
MAX_VERIFY_MODELS = 32


@dataclass(frozen=True)
class ModelRef:
    """One model a request names: as the caller wrote it, and where it is sent."""

    id: str  # as given by the caller ("openai/gpt-4o"); names a result or a CSV column
    provider: str  # configured provider name, or the custom provider's name
    name: str  # the model name sent upstream
    custom: CustomProvider | None = None

    def chat_request(self, payload: dict[str, Any]) -> ProxyRequest:
        """A chat request for this model with ``payload`` as its body (``model`` set here)."""
        body = dict(payload, model=self.name)
        return ProxyRequest(body=body, provider=self.provider, model=self.name, stream=False, custom=self.custom)


def resolve_model(value: Any, providers: Collection[str], custom: CustomProvider | None, param: str) -> ModelRef:
    """Validate one model id; with a custom provider it is sent as is."""
    if custom is not None:
        if not isinstance(value, str) or not value or not is_unicode(value):
            raise bad_request(f"'{param}' must be a non-empty string", param=param)
        return ModelRef(id=value, provider=custom.provider_name, name=value, custom=custom)
    provider, name = split_model(value, providers, param=param)
    return ModelRef(id=value, provider=provider, name=name)


def resolve_models(
    value: Any,
    providers: Collection[str],
    custom: CustomProvider | None,
    param: str = "models",
    limit: int | None = None,
) -> list[ModelRef]:
    """Validate a non-empty array of model ids."""
    if value is None or value == []:
        raise bad_request(f"'{param}' must be a non-empty array of model ids", param=param)
    if not isinstance(value, list):
        raise bad_request(f"'{param}' must be an array of model ids", param=param)
    if limit is not None and len(value) > limit:
        raise bad_request(f"'{param}' may name at most {limit} models", param=param)
    return [resolve_model(item, providers, custom, f"{param}[{index}]") for index, item in enumerate(value)]


def default_min_yes(count: int) -> int:
    """A simple majority of ``count`` models."""
    return count // 2 + 1


@dataclass
class VerifyRequest:
    """A validated verify request."""

    messages: list[dict[str, Any]]
    models: list[ModelRef]
    consensus: bool  # ``models`` was given: answer with the consensus shape
    min_yes: int
    options: dict[str, Any]  # sampling fields passed to every call


def parse_verify_request(
    raw: bytes, providers: Collection[str], allow_custom: bool, default_model: str
) -> VerifyRequest:
    """Validate a ``/v1/verify`` body; raise :class:`ApiError` (400) when bad."""
    body = parse_json_object(raw)
    check_json_numbers(body)
    for name, types in VERIFY_PASSTHROUGH.items():
        check_type(body, name, types)
    check_type(body, "min_yes", (int,))
    custom = parse_custom_provider(body.get("model_provider"), allow_custom)
    messages = check_messages(body)
    options = {name: body[name] for name in VERIFY_PASSTHROUGH if body.get(name) is not None}

    if body.get("models") is not None:
        if body.get("model") is not None:
            raise bad_request("Give either 'model' (one model) or 'models' (a consensus), not both", param="model")
        models = resolve_models(body["models"], providers, custom, limit=MAX_VERIFY_MODELS)
        min_yes = body.get("min_yes")
        if min_yes is None:
            min_yes = default_min_yes(len(models))
        elif not 1 <= min_yes <= len(models):
            raise bad_request(f"'min_yes' must be between 1 and the number of models ({len(models)})", param="min_yes")
        return VerifyRequest(messages=messages, models=models, consensus=True, min_yes=min_yes, options=options)

    if body.get("min_yes") is not None:
        raise bad_request("'min_yes' applies only to a consensus ('models')", param="min_yes")
    model = body.get("model")
    model = default_model if model is None else model
    ref = resolve_model(model, providers, custom, "model")
    return VerifyRequest(messages=messages, models=[ref], consensus=False, min_yes=1, options=options)
