"""The provider registry: which URL and key a model name is sent to."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from config import Settings
from models.chat import ProviderNames, ProxyRequest
from models.endpoints import CHAT, ENDPOINTS
from models.jsonbody import json_bytes
from utils.upstream.transport import header_lines
from utils.upstream.usage import wants_injection


@dataclass(frozen=True)
class Target:
    """One upstream endpoint: the provider's name, its chat URL and its key."""

    provider: str  # shown in error messages
    url: str
    api_key: str = field(repr=False)
    label: str = ""  # bounded metrics label: the configured name, or "custom"
    header_lines: list[bytes] = field(default_factory=list, repr=False)  # as libcurl takes them
    guarded: bool = False  # connect only to public addresses (a custom provider, see utils.upstream.guard)
    # Keys, limits and budgets (utils.upstream.ledger): a provider with a key pool or limits asks the ledger
    # before each call (gated); ``pool`` holds the target of each key of a pool of two or more.
    gated: bool = False
    limited: bool = False  # its answers' tokens are counted against its limits
    pool: tuple[Target, ...] = field(default=(), repr=False)


class ProviderRegistry:
    """The configured providers, with their request headers built once."""

    def __init__(self, settings: Settings) -> None:
        # provider name -> upstream path -> target, for every proxied endpoint
        self._targets: dict[str, dict[str, Target]] = {
            name: {e.path: self._configured(name, p.base_url, p.api_keys, name in settings.provider_limits, e.path)
                   for e in ENDPOINTS}
            for name, p in settings.providers.items()
        }
        self.pools = {name: len(p.api_keys) for name, p in settings.providers.items()}  # keys per provider
        self.routable = ProviderNames(self._targets, settings.default_provider)  # what requests' models are split by
        self._openrouter_ignore = list(settings.openrouter_ignored_providers)
        self._guard_custom = not settings.custom_provider_allow_private
        self.stream_usage = settings.stream_usage

    @staticmethod
    def make_target(
        provider: str, base_url: str, api_key: str, label: str = "", guarded: bool = False, path: str = CHAT.path
    ) -> Target:
        """A target for ``{base_url}{path}`` (chat completions by default) with its headers."""
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = "Bearer " + api_key
        url = base_url.rstrip("/") + path
        lines = header_lines(headers)
        return Target(
            provider=provider, url=url, api_key=api_key, label=label or provider, header_lines=lines, guarded=guarded
        )

    @classmethod
    def _configured(cls, name: str, base_url: str, keys: tuple[str, ...], limited: bool, path: str) -> Target:
        """A configured provider's target; with a pool or limits, gated, with a target per key."""
        keyed = tuple(cls.make_target(name, base_url, key, path=path) for key in keys or ("",))
        if len(keyed) == 1 and not limited:
            return keyed[0]
        if limited:
            keyed = tuple(replace(target, limited=True) for target in keyed)
        return replace(keyed[0], gated=True, pool=keyed if len(keyed) > 1 else ())

    @property
    def names(self) -> list[str]:
        """Names of every provider a model may be prefixed with."""
        return list(self._targets)

    def target_for(self, request: ProxyRequest) -> Target:
        """Where a validated request goes: its custom provider or a configured one, at its endpoint's path."""
        path = request.endpoint.path
        if request.custom is not None:
            c = request.custom
            return self.make_target(
                c.provider_name, c.base_url, c.api_key, label="custom", guarded=self._guard_custom, path=path
            )
        return self._targets[request.provider][path]

    def upstream_body(self, request: ProxyRequest) -> bytes:
        """The JSON body sent upstream, with provider-specific additions and, where the node wants it, usage asked for."""
        body: dict[str, Any] = request.body
        if wants_injection(request, self.stream_usage):
            options = body.get("stream_options")
            body = dict(body, stream_options={**(options if isinstance(options, dict) else {}), "include_usage": True})
        if (
            request.custom is None
            and request.endpoint.chat_rules
            and request.provider == "openrouter"
            and self._openrouter_ignore
            and "provider" not in body
        ):
            body = dict(body, provider={"ignore": self._openrouter_ignore})
        return json_bytes(body)
