"""What ``GET /status.json`` reports: the node's figures, across its workers, and never a secret.

Cheap by design (the page asks every 2 s): nothing here walks the requests or
streams in flight. Two kinds of figures:

* the node's own, summed over its workers: requests and streams in flight and
  tokens (and, with PRICES_FILE, USD) since 00:00 UTC by provider. One process counts them itself
  (``NodeContext.in_flight``, :data:`utils.metrics.tally`); with WORKERS > 1
  every worker also keeps them in prometheus_client's multi-process files
  (the ``livesum`` gauges ``mira_requests_in_flight``, ``mira_streams_open``,
  ``mira_node_tokens_today``, ``mira_node_cost_today_usd``, which /metrics sums too), and the answer reads
  the live workers' files: a few small files, whatever the load. A worker that
  dies takes its figures with it (server.py removes its file).
* the state that decides calls: circuits, key cooling, limit windows. Without
  REDIS_URL it is per process by contract, so it is the answering worker's
  (``"state": "worker"``). With REDIS_URL the windows, day counts and key
  cooling are read from Redis in one round trip (``"state": "shared"``), and
  the circuits are this worker's copy of the shared ones; while Redis is away
  the node decides in process, and so the answer shows the worker's state.

Keys appear by position only (1, 2, ...), like ``mira_provider_key_cooling``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.mmap_dict import MmapedDict

from config import NODE_WIDE, Settings
from utils import metrics
from utils.context import NodeContext
from utils.upstream.ledger import DAY, WINDOW, LocalLedger

STARTED = time.time()  # the node's start: set on import, before server.py forks its workers

# The multi-process gauge samples this module reads, and the Worker field each goes to.
_SAMPLES = {"mira_requests_in_flight": "requests", "mira_streams_open": "streams"}
_TOKENS_TODAY = "mira_node_tokens_today"
_COST_TODAY = "mira_node_cost_today_usd"


@dataclass
class Worker:
    """One worker process's own figures."""

    pid: int
    requests: int = 0
    streams: int = 0
    tokens_today: dict[str, int] = field(default_factory=dict)
    usd_today: dict[str, float] = field(default_factory=dict)


def workers_from_files(folder: str, skip_pid: int) -> list[Worker]:
    """The figures of every live worker, from its file of ``livesum`` gauges in PROMETHEUS_MULTIPROC_DIR.

    ``skip_pid``: the supervisor, whose file holds the zeros the gauges had when it made them, before forking.
    The files are read as prometheus_client's own collector reads them (``MmapedDict.read_all_values_from_file``),
    with each sample's key parsed once per process: about 15 µs of CPU a worker.
    """
    workers = []
    for path in glob.glob(os.path.join(folder, "gauge_livesum_*.db")):
        try:
            pid = int(os.path.basename(path)[len("gauge_livesum_"):-len(".db")])
            if pid == skip_pid:
                continue
            values = list(MmapedDict.read_all_values_from_file(path))
        except (ValueError, FileNotFoundError):  # not a worker's file, or the worker died meanwhile
            continue
        worker = Worker(pid)
        for key, value, _, _ in values:
            name, provider = _sample(key)
            if name in _SAMPLES:
                setattr(worker, _SAMPLES[name], int(value))
            elif name == _TOKENS_TODAY and value:
                worker.tokens_today[provider] = int(value)
            elif name == _COST_TODAY and value:
                worker.usd_today[provider] = value
        workers.append(worker)
    workers.sort(key=lambda w: w.pid)
    return workers


_samples: dict[str, tuple[str, str]] = {}


def _sample(key: str) -> tuple[str, str]:
    """A sample's name and ``provider`` label, from its key in the file (JSON: metric, sample, labels, help)."""
    found = _samples.get(key)
    if found is None:
        _, name, labels, _ = json.loads(key)
        found = _samples[key] = (name, labels.get("provider", ""))
    return found


def node_workers(ctx: NodeContext) -> list[Worker]:
    """The figures of each worker: this process's own, or every live worker's from their files."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        tally = metrics.tally
        return [Worker(os.getpid(), ctx.in_flight, tally.streams, tally.tokens_today(), tally.usd_today())]
    metrics.flush()  # this worker's updates of the current loop turn, into its file first
    return workers_from_files(folder, os.getppid())


# -- the state that decides calls --------------------------------------------------------------


@dataclass
class Usage:
    """A provider's use of its limits and its keys' cooling, wherever they were read."""

    used: dict[str, float]  # rpm, tpm, tokens_per_day, usd_per_day
    cooling_until: list[float]  # wall-clock time each key (by position) is free again


def local_usage(ledger: LocalLedger, provider: str, now: float) -> Usage:
    """What this process's ledger holds (read only: the windows are not slid); ``"*"``: the node-wide book."""
    book = ledger.node if provider == NODE_WIDE else ledger.books[provider]
    if book is None:
        return Usage({}, [])
    oldest = int(now) - WINDOW
    calls = tokens = 0
    for second, step_calls, step_tokens in book.steps:
        if second > oldest:
            calls += step_calls
            tokens += step_tokens
    current = book.day == int(now // DAY)
    today, usd = (book.today, book.usd) if current else (0, 0.0)
    return Usage({"rpm": calls, "tpm": tokens, "tokens_per_day": today, "usd_per_day": usd}, list(book.cool_until))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def shared_usage(ctx: NodeContext, providers: list[str], now: float) -> dict[str, Usage] | None:
    """The shared windows, day counts and key cooling, in one pipelined round trip; None when Redis does not answer.

    The keys are those utils/shared_state.py writes: ``win:P`` (fields ``c:SECOND`` calls, ``t:SECOND``
    tokens), ``day:P:DAY``, ``usd:P:DAY`` (the day's cost) and ``cool:P`` (a key's id, never the key, to the time
    it is free again); ``P`` is ``*`` for the node-wide budgets.
    """
    from utils.shared_state import key_id  # only with REDIS_URL

    link = ctx.shared.link
    if not link.up:
        return None
    if not providers:
        return {}
    day, oldest = int(now // DAY), int(now) - WINDOW
    pipe = link.client.pipeline(transaction=False)
    for name in providers:
        pipe.hgetall(link.key("win", name))
        pipe.get(link.key("day", name, str(day)))
        pipe.hgetall(link.key("cool", name))
        pipe.get(link.key("usd", name, str(day)))
    try:
        async with asyncio.timeout(link.timeout):
            answers = await pipe.execute()
    except Exception:  # noqa: BLE001 (a status read never fails for Redis: it shows the worker's state)
        return None
    found = {}
    for at, name in enumerate(providers):
        window, today, cooling, usd = answers[4 * at : 4 * at + 4]
        used: dict[str, float] = {"rpm": 0, "tpm": 0, "tokens_per_day": int(today or 0), "usd_per_day": float(usd or 0)}
        for raw_field, raw_count in (window or {}).items():
            kind, _, second = _text(raw_field).partition(":")
            if second.isdigit() and int(second) > oldest:
                used["rpm" if kind == "c" else "tpm"] += int(raw_count)
        free = {_text(k): float(v) for k, v in (cooling or {}).items()}
        keys = ctx.settings.providers[name].api_keys if name in ctx.settings.providers else ()
        found[name] = Usage(used, [free.get(key_id(key), 0.0) for key in keys])
    return found


def limits_of(settings: Settings, provider: str, used: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each limit PROVIDER_LIMITS_FILE sets for the provider, with what is used of it (None: not known here)."""
    limits = settings.provider_limits.get(provider)
    if limits is None:
        return {}
    return {
        f.name: {"limit": getattr(limits, f.name), "used": used.get(f.name)}
        for f in dataclasses.fields(limits) if getattr(limits, f.name) is not None
    }


def circuit_of(ctx: NodeContext, provider: str) -> dict[str, Any]:
    circuit = ctx.routing.circuits.get(provider)
    if circuit is None:
        return {"state": "off", "probe_in": 0}  # CIRCUIT_FAILURES=0
    return {"state": "up" if circuit.up else "down", "probe_in": circuit.retry_after()}


async def status(ctx: NodeContext) -> dict[str, Any]:
    """The body of ``/status.json``."""
    settings = ctx.settings
    local = ctx.shared.local if ctx.shared is not None else ctx.ledger
    assert isinstance(local, LocalLedger)
    now = local.clock()
    names = list(settings.providers)
    node_wide = NODE_WIDE in settings.provider_limits  # the node's own budgets: one more row, "*"
    shared: dict[str, Usage] | None = None
    if ctx.shared is not None:
        watched = [n for n in names if n in settings.provider_limits or len(settings.providers[n].api_keys) > 1]
        shared = await shared_usage(ctx, watched + [NODE_WIDE] * node_wide, now)
    workers = node_workers(ctx)
    tokens_today: dict[str, int] = {}
    usd_today: dict[str, float] = {}
    for worker in workers:
        for provider, count in worker.tokens_today.items():
            tokens_today[provider] = tokens_today.get(provider, 0) + count
        for provider, usd in worker.usd_today.items():
            usd_today[provider] = usd_today.get(provider, 0.0) + usd
    priced = ctx.prices is not None  # with PRICES_FILE, each row says what its calls cost today
    providers: list[dict[str, Any]] = []
    for name in names:
        usage = shared[name] if shared is not None and name in shared else local_usage(local, name, now)
        keys = len(settings.providers[name].api_keys)
        providers.append({
            "name": name,
            "configured": name in ctx.registry.configured,
            "circuit": circuit_of(ctx, name),
            "keys": [
                {"position": at + 1, "cooling": max(0, math.ceil(usage.cooling_until[at] - now))}
                for at in range(min(keys, len(usage.cooling_until)))
            ],
            "limits": limits_of(settings, name, usage.used),
            "tokens_today": tokens_today.get(name, 0),
        })
        if priced:
            providers[-1]["usd_today"] = round(usd_today.get(name, 0.0), 10)
    if tokens_today.get("custom"):
        providers.append({"name": "custom", "configured": settings.allow_custom_providers, "circuit": None, "keys": [],
                          "limits": {}, "tokens_today": tokens_today["custom"]})
        if priced:
            providers[-1]["usd_today"] = None  # never priced: the caller's own key
    if node_wide:
        usage = shared[NODE_WIDE] if shared is not None and NODE_WIDE in shared else local_usage(local, NODE_WIDE, now)
        providers.append({"name": NODE_WIDE, "configured": True, "circuit": None, "keys": [],
                          "limits": limits_of(settings, NODE_WIDE, usage.used), "tokens_today": sum(tokens_today.values())})
        if priced:
            providers[-1]["usd_today"] = round(sum(usd_today.values()), 10)
    redis = "off" if ctx.shared is None else ("up" if ctx.shared.link.up else "down")
    return {
        "version": settings.version,
        "started": round(STARTED, 3),
        "uptime": round(max(0.0, time.time() - STARTED), 1),
        "mode": "router" if settings.router_base_url else "standalone",
        "router": ctx.router_status.state,
        "redis": redis,
        "state": "shared" if shared is not None else "worker",  # whose limits, key cooling and circuits these are
        "pid": os.getpid(),  # the worker that answered
        "workers": settings.workers,
        "in_flight": {
            "requests": sum(w.requests for w in workers),
            "streams": sum(w.streams for w in workers),
            "by_worker": [{"pid": w.pid, "requests": w.requests, "streams": w.streams} for w in workers],
        },
        "providers": providers,
    }
