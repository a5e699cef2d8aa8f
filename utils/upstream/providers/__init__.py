"""The provider registry: where a model name is sent, and in which dialect.

Providers are data (``config.PROVIDERS``: URL and key variables, the family
each speaks); families are modules (:mod:`.openai`, :mod:`.anthropic`) behind
one interface (:mod:`.base`). The registry builds, once, a :class:`Target`
per configured provider and endpoint it offers (one per key of a pool), and
turns a validated request into its :class:`Attempt`: target, body, and the
reader of the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from config import NODE_WIDE, PROVIDERS, Settings
from models.chat import ProviderNames, ProxyRequest
from models.endpoints import CHAT, ENDPOINTS, Endpoint
from models.errors import ApiError
from utils.redact import Redactor
from utils.upstream.failures import MAX_ERROR_MESSAGE
from utils.upstream.providers.anthropic import MessagesFamily
from utils.upstream.providers.base import AnswerReader, Attempt, Family, Prepared, StreamWatcher, Target
from utils.upstream.providers.openai import OpenAICompatible
from utils.upstream.transport import header_lines

__all__ = [
    "AnswerReader", "Attempt", "Family", "Prepared", "ProviderRegistry", "StreamWatcher", "Target", "not_configured",
    "unconfigured_references", "unsupported_endpoint",
]

_NO_ADDITIONS: Mapping[str, Any] = {}


def not_configured(provider: str) -> ApiError:
    """The 400 for a request to a provider this node has no key for."""
    variable = PROVIDERS[provider].key_var
    return ApiError(
        400, f"{provider} is not configured on this node: set {variable}", param="model", code="provider_not_configured"
    )


def unsupported_endpoint(provider: str, api: str, endpoint: Endpoint) -> ApiError:
    """The 400 for a request to an endpoint that the provider's dialect does not have."""
    return ApiError(
        400,
        f"{provider} speaks the {'Messages' if api == 'anthropic' else api} API, which has no /v1{endpoint.path}:"
        " use /v1/chat/completions, or a model of another provider",
        param="model", code="unsupported_endpoint",
    )


def unconfigured_references(settings: Settings) -> list[str]:
    """Start-up warnings: MODEL_FALLBACKS_FILE and MODEL_ALIASES_FILE entries that name a provider without a key."""
    configured = {name for name, p in settings.providers.items() if p.configured}
    lines = []
    for name, (provider, model) in settings.model_aliases.items():
        if provider not in configured:
            lines.append(f"MODEL_ALIASES_FILE: {name!r} -> {provider}/{model}, but {provider} is not configured"
                         f" (set {PROVIDERS[provider].key_var}): requests for it get 400 provider_not_configured")
    for model, fallbacks in settings.model_fallbacks.items():
        for fallback in fallbacks:
            if fallback.provider not in configured:
                lines.append(f"MODEL_FALLBACKS_FILE: {model!r} falls back to {fallback.id}, but {fallback.provider} is not"
                             f" configured (set {PROVIDERS[fallback.provider].key_var}): that fallback is skipped")
    return lines


class ProviderRegistry:
    """The configured providers, with their request headers built once."""

    def __init__(self, settings: Settings, redact: Redactor) -> None:
        def mask(text: str) -> str:
            return redact.cut(text, MAX_ERROR_MESSAGE)

        self.families: dict[str, Family] = {
            "openai": OpenAICompatible(settings.stream_usage, mask),
            "anthropic": MessagesFamily(settings.anthropic_max_tokens, mask),
        }
        # provider name -> the node's endpoint path -> target, for every endpoint the provider's family offers
        self._targets: dict[str, dict[str, Target]] = {}
        self.configured = {name for name, p in settings.providers.items() if p.configured}
        limits = settings.provider_limits
        node = limits.get(NODE_WIDE)  # the node-wide entry: every provider counts toward it
        for name, p in settings.providers.items():
            family = self.families[p.api]
            limited = name in limits or node is not None
            own = limits.get(name)
            # whose dollar budget applies to the provider's calls ("": none): its own, else the node's
            usd_budget = (
                name if own is not None and own.usd_per_day is not None
                else 'the node ("*")' if node is not None and node.usd_per_day is not None else ""
            )
            self._targets[name] = {
                e.path: self._configured(name, family, p.base_url, p.api_keys, limited, e, usd_budget)
                for e in ENDPOINTS if family.path(e) is not None
            } if name in self.configured else {}
        self.apis = {name: p.api for name, p in settings.providers.items()}  # the family of each provider
        self.pools = {name: len(p.api_keys) for name, p in settings.providers.items()}  # keys per provider
        # what requests' models are split by: provider prefixes, DEFAULT_PROVIDER, MODEL_ALIASES_FILE
        self.routable = ProviderNames(self._targets, settings.default_provider, settings.model_aliases)
        # each provider's own body fields, added to a chat request that does not set them
        self._additions: dict[str, Mapping[str, Any]] = {}
        if settings.openrouter_ignored_providers:
            self._additions["openrouter"] = {"provider": {"ignore": list(settings.openrouter_ignored_providers)}}
        self._guard_custom = not settings.custom_provider_allow_private
        self.stream_usage = settings.stream_usage

    def make_target(
        self, provider: str, base_url: str, api_key: str, label: str = "", guarded: bool = False,
        endpoint: Endpoint = CHAT, api: str = "openai",
    ) -> Target:
        """A target for ``endpoint`` (chat completions by default) of a provider of family ``api``, with its headers."""
        family = self.families[api]
        path = family.path(endpoint)
        if path is None:
            raise unsupported_endpoint(provider, api, endpoint)
        return Target(
            provider=provider, url=base_url.rstrip("/") + path, api_key=api_key, family=family, label=label or provider,
            header_lines=header_lines(family.headers(api_key)), guarded=guarded,
        )

    def _configured(
        self, name: str, family: Family, base_url: str, keys: tuple[str, ...], limited: bool, endpoint: Endpoint,
        usd_budget: str = "",
    ) -> Target:
        """A configured provider's target; with a pool or limits, gated, with a target per key."""
        keyed = tuple(self.make_target(name, base_url, key, endpoint=endpoint, api=family.api) for key in keys or ("",))
        if len(keyed) == 1 and not limited:
            return keyed[0]
        if limited:
            keyed = tuple(replace(target, limited=True, usd_budget=usd_budget) for target in keyed)
        return replace(keyed[0], gated=True, pool=keyed if len(keyed) > 1 else ())

    @property
    def names(self) -> list[str]:
        """Names of every provider a model may be prefixed with."""
        return list(self._targets)

    def target_for(self, request: ProxyRequest) -> Target:
        """Where a validated request goes: its custom provider or a configured one, at its endpoint's path.

        A provider without a key: 400 ``provider_not_configured``; one whose dialect has no such
        endpoint: 400 ``unsupported_endpoint``.
        """
        if request.custom is not None:
            c = request.custom
            return self.make_target(
                c.provider_name, c.base_url, c.api_key, label="custom", guarded=self._guard_custom,
                endpoint=request.endpoint, api=c.api,
            )
        target = self._targets[request.provider].get(request.endpoint.path)
        if target is None:
            if request.provider not in self.configured:
                raise not_configured(request.provider)
            raise unsupported_endpoint(request.provider, self.apis[request.provider], request.endpoint)
        return target

    def attempt(self, request: ProxyRequest, model_id: str) -> Attempt:
        """The attempt of ``request`` at its provider: the target, the body prepared for its family, the answer's reader."""
        target = self.target_for(request)
        additions = self._additions.get(request.provider, _NO_ADDITIONS) if request.custom is None else _NO_ADDITIONS
        prepared = target.family.prepare(request, additions)
        return Attempt(model_id, target, *prepared, session=request.session)
