"""The state one node process shares between its handlers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from config import Settings
from models.jsonbody import json_bytes
from utils import eventloop, metrics
from utils.cost import Prices, cost_of
from utils.deadlines import Deadlines
from utils.gate import ClientGate
from utils.netinfo import detect_local_ip
from utils.redact import PROCESS_REDACTOR
from utils.router_client import RouterStatus
from utils.upstream import SHUTDOWN, Cancel, ProviderRegistry, UpstreamClient
from utils.upstream.guard import Resolver, resolve_host
from utils.upstream.ledger import Ledger, LocalLedger
from utils.upstream.providers import Attempt
from utils.upstream.routing import Circuit, Routing
from utils.upstream.usage import Usage


def shared_state(settings: Settings, local: LocalLedger, circuits: Mapping[str, Circuit]) -> Any:
    """The Redis-backed ledger (circuits shared too); the module is imported only with REDIS_URL."""
    from utils.shared_state import RedisLink, SharedCircuits, SharedLedger

    link = RedisLink(settings)
    pools = {name: settings.providers[name].api_keys for name in local.books}
    return SharedLedger(link, local, pools, settings.provider_limits, SharedCircuits(link, circuits))


class NodeContext:
    """Settings, the upstream client and the counters of one process.

    Build it inside the running IOLoop (the curl client binds to it). ``clock``
    (monotonic: circuits), ``wall_clock`` (limits and key cooling) and
    ``resolve`` (the early look-up of a custom provider's host) are the
    system's unless a caller, a test, gives its own.
    """

    def __init__(
        self,
        settings: Settings,
        router_status: RouterStatus | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        resolve: Resolver = resolve_host,
    ) -> None:
        self.settings = settings
        self.resolve = resolve
        # The router state and machine name (shared by the workers: made before they fork).
        self.router_status = router_status or RouterStatus(routed=bool(settings.router_base_url), name=settings.machine_name)
        self.redactor = PROCESS_REDACTOR  # one per process: the log filter masks what this one knows
        for secret in settings.secrets():
            self.redactor.add(secret)
        self.gate = ClientGate(settings)
        self.registry = ProviderRegistry(settings, self.redactor)
        self.routing = Routing(settings, self.registry, clock)
        self.models = list(settings.supported_models)  # SUPPORTED_MODELS_FILE, read and checked by config
        self._listed = frozenset(self.models)
        # /v1/models: the supported models, then the aliases (owned by their target's provider); both shapes made once
        # (of configured providers only; an id whose first segment names no provider goes to DEFAULT_PROVIDER)
        configured, names = self.registry.configured, settings.providers
        listed = [(m, m.split("/", 1)[0]) for m in self.models]
        listed = [(m, owner) for m, owner in listed if owner in configured or owner not in names]
        listed += [(name, provider) for name, (provider, _) in settings.model_aliases.items()
                   if name not in self._listed and provider in configured]
        self.models_body = json_bytes(
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": owner} for m, owner in listed]}
        )
        self.anthropic_models_body = json_bytes({
            "data": [{"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"} for m, _ in listed],
            "has_more": False,
            "first_id": listed[0][0] if listed else None,
            "last_id": listed[-1][0] if listed else None,
        })
        self.machine_ip = settings.machine_ip or detect_local_ip()
        # key pools, limits and budgets: per process, or with REDIS_URL shared (circuits too)
        self.ledger: Ledger = LocalLedger(self.registry.pools, settings.provider_limits, wall_clock)
        self.shared: Any = None
        if settings.redis_url:
            self.shared = self.ledger = shared_state(settings, self.ledger, self.routing.circuits)
        # PRICES_FILE: the cost of every call (None without it: nothing is priced, nothing more runs per call)
        self.prices = Prices(settings.prices) if settings.prices_file else None
        self.upstream = UpstreamClient(
            settings, self.redactor, self.routing.circuit, self.count_tokens, self.ledger, self.prices
        )
        self.in_flight = 0
        self.body_deadlines = Deadlines()  # REQUEST_BODY_TIMEOUT of the bodies still arriving
        # A connection's time to send its next request's headers (server.NodeServer; None under another server)
        self.idle_connections: Deadlines | None = None
        self.idle_timeout = 0.0
        self.draining = False
        self._idle: list[asyncio.Future[None]] = []
        self._running: set[Cancel] = set()  # the cancel tokens of the requests in flight

    def count_tokens(self, attempt: Attempt, usage: Usage) -> float | None:
        """``mira_tokens_total``: the model label is the client's id when it is a listed model, else ``other``.

        With PRICES_FILE, the answer's cost too (``mira_cost_usd_total``, same labels), or, for a model without
        a price, ``mira_unpriced_calls_total``; the cost is returned (None: unpriced, or no PRICES_FILE).
        """
        provider = attempt.target.label
        if provider == "custom":
            model = "custom"
        else:
            model = attempt.model_id if attempt.model_id in self._listed else "other"
        metrics.tokens(provider, model, usage.prompt, usage.completion, usage.cache_read, usage.cache_write)
        prices = self.prices
        if prices is None:
            return None
        price = prices.of(provider, attempt.model_id)
        if price is None:
            metrics.unpriced(provider, model)
            return None
        cost = cost_of(price, usage)
        metrics.cost(provider, model, cost)
        return cost

    def admit(self, cancel: Cancel) -> None:
        """One more request in flight (the caller checked MAX_CONCURRENT_REQUESTS)."""
        self.in_flight += 1
        self._running.add(cancel)

    def cut_in_flight(self) -> int:
        """Cancel every request still running (the drain ran out of time); how many there were.

        Their upstream calls end at once; a stream then sends its client a
        ``node_shutting_down`` error event, a JSON request answers 503.
        """
        running = list(self._running)
        for cancel in running:
            cancel.cancel(SHUTDOWN)
        return len(running)

    def release(self, cancel: Cancel) -> None:
        """One request of the in-flight count has ended."""
        self._running.discard(cancel)
        self.in_flight -= 1
        if self.in_flight <= 0 and self._idle:
            for waiter in self._idle:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle.clear()

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        if self.in_flight <= 0:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        await waiter

    async def start(self) -> None:
        """Before the first request: ``mira_build_info`` (naming the loop this runs on); with REDIS_URL, one try at
        connecting (at most REDIS_TIMEOUT, or 1 s)."""
        metrics.build_info(self.settings.version, eventloop.name_of(asyncio.get_running_loop()))
        if self.shared is not None:
            await self.shared.start()

    async def aclose(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()
        await self.upstream.aclose()
