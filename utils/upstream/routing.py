"""Which targets one request is tried on, in order, and each configured provider's health.

A request's plan is its primary model, then its fallbacks (the request's own
``fallbacks``, else MODEL_FALLBACKS_FILE's list for the model). A fallback's
body is built only when it is reached, so a request that never falls back
pays nothing for the feature.

:class:`Circuit`: CIRCUIT_FAILURES consecutive failed attempts (connection
failure, timeout, 5xx) open a provider's circuit for CIRCUIT_COOLDOWN
seconds; while open, requests skip it at once. After the cooldown one request
(the probe) goes through: success closes the circuit, failure opens it again.
Per-request custom providers have no circuit. The state is per process.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from time import monotonic, time
from urllib.parse import quote

from config import Settings
from models.chat import Fallback, ProxyRequest
from models.errors import ApiError
from utils import metrics
from utils.upstream.providers import Attempt, ProviderRegistry, Target

log = logging.getLogger("mira.upstream")


class Circuit:
    """One configured provider's health (see the module docstring).

    ``on_change(circuit, opened)`` (set by the shared state, when REDIS_URL is
    set) hears this process's own openings and closings; :meth:`open_for` and
    :meth:`close` apply another process's, without calling it back.
    """

    __slots__ = (
        "name", "threshold", "cooldown", "failures", "opened_at", "opened_wall", "probe_until", "on_change", "clock"
    )

    def __init__(self, name: str, threshold: int, cooldown: float, clock: Callable[[], float] = monotonic) -> None:
        self.clock = clock  # the monotonic clock cooldowns are measured on
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self.opened_wall = 0.0  # the wall-clock time of the last opening (shared state compares it)
        self.probe_until = 0.0  # while a probe is out, no other request goes through
        self.on_change: Callable[[Circuit, bool], None] | None = None
        metrics.provider_up(name, True)

    @property
    def up(self) -> bool:
        return self.opened_at is None

    def allow(self) -> bool:
        """Whether a request may try this provider now (a probe, once the cooldown is over)."""
        if self.opened_at is None:
            return True
        now = self.clock()
        if now - self.opened_at < self.cooldown or now < self.probe_until:
            return False
        self.probe_until = now + self.cooldown  # this request is the probe (a lost probe frees the slot later)
        return True

    def retry_after(self) -> int:
        """Whole seconds until a probe may go through."""
        if self.opened_at is None:
            return 0
        left = max(self.opened_at + self.cooldown, self.probe_until) - self.clock()
        return max(1, math.ceil(left))

    def success(self) -> None:
        self.failures = 0
        if self.opened_at is not None:
            self.close()
            if self.on_change is not None:
                self.on_change(self, False)

    def failure(self) -> None:
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.threshold:
            self.open_for(self.cooldown)
            if self.on_change is not None:
                self.on_change(self, True)

    def open_for(self, seconds: float) -> None:
        """Open (or open again) for ``seconds`` from now."""
        was_up = self.opened_at is None
        self.opened_at = self.clock() - (self.cooldown - seconds)
        self.opened_wall = time()
        self.probe_until = 0.0
        if was_up:
            metrics.provider_up(self.name, False)

    def close(self) -> None:
        self.failures = 0
        if self.opened_at is not None:
            self.opened_at = None
            self.probe_until = 0.0
            metrics.provider_up(self.name, True)


def header_safe(model_id: str) -> str:
    """A model id fit for the X-Mira-Model header: as it is when printable ASCII, else percent-encoded."""
    if model_id.isascii() and model_id.isprintable():
        return model_id
    return quote(model_id, safe="/:@!$&'()*+,;=-._~", errors="surrogatepass")


def provider_unavailable(circuit: Circuit) -> ApiError:
    seconds = circuit.retry_after()
    return ApiError(
        503, f"{circuit.name} API is failing; the node is not calling it for {seconds}s", code="provider_unavailable",
        headers={"Retry-After": str(seconds)},
    )


class Routing:
    """The plans of requests and the circuits of the configured providers."""

    def __init__(self, settings: Settings, registry: ProviderRegistry, clock: Callable[[], float] = monotonic) -> None:
        self.registry = registry
        self.fallbacks = settings.model_fallbacks  # MODEL_FALLBACKS_FILE, read and checked by config
        self.circuits: dict[str, Circuit] = {}
        if settings.circuit_failures > 0:
            for name in registry.names:
                self.circuits[name] = Circuit(name, settings.circuit_failures, settings.circuit_cooldown, clock)

    def circuit(self, target: Target) -> Circuit | None:
        """The circuit of a configured provider's target (None for a custom provider, or when off)."""
        return self.circuits.get(target.label)

    def health(self) -> dict[str, str]:
        """``{provider: "up" | "down"}`` for /health."""
        return {name: ("up" if self.circuits[name].up else "down") if name in self.circuits else "up"
                for name in self.registry.names if name in self.registry.configured}

    def plan(self, request: ProxyRequest) -> Plan:
        """The request's attempts in order: the primary (its body prepared now: a 400 is raised here), then each fallback."""
        primary_id = header_safe(request.model if request.custom is not None else f"{request.provider}/{request.model}")
        primary = self.registry.attempt(request, primary_id)
        fallbacks = request.fallbacks if request.fallbacks is not None else self.fallbacks.get(primary_id, ())
        return Plan(primary, request, fallbacks, self.registry)


class Plan:
    """A request's attempts: :attr:`primary`, then each fallback, its body built when it is reached.

    A fallback that cannot take the request (an endpoint or a parameter its
    provider's dialect does not have) is skipped. The parsed request is kept
    for the fallbacks' bodies until :meth:`settle`.
    """

    __slots__ = ("primary", "_request", "_fallbacks", "_registry")

    def __init__(
        self, primary: Attempt, request: ProxyRequest, fallbacks: Sequence[Fallback], registry: ProviderRegistry
    ) -> None:
        self.primary = primary
        self._request: ProxyRequest | None = request
        self._fallbacks = fallbacks
        self._registry = registry

    def settle(self) -> None:
        """An attempt has answered for good (a stream's first byte went to the client): no fallback comes after it.

        The parsed request is let go: a held stream keeps only what it relays (bench/PERFORMANCE.md, issue 34).
        """
        self._request = None
        self._fallbacks = ()

    def __iter__(self) -> Iterator[Attempt]:
        yield self.primary
        for fallback in self._fallbacks:
            request = self._request
            if request is None:
                return  # settled meanwhile
            other = dataclasses.replace(
                request, provider=fallback.provider, model=fallback.name, custom=None,
                body=dict(request.body, model=fallback.name),
            )
            try:
                yield self._registry.attempt(other, header_safe(fallback.id))
            except ApiError as error:
                log.info("skipping fallback %s: %s", fallback.id, error.message)
