"""The node's Prometheus metrics.

All label values are bounded: routes are the app's route names, providers are
the configured provider names (a per-request custom provider is ``custom``),
outcomes come from a fixed set.
"""

from __future__ import annotations

import asyncio
import os
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# In multi-process mode each metric keeps its values in files in this folder, from its creation on.
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180)

REQUESTS = Counter("mira_requests", "HTTP requests answered, by route and status", ["route", "status"])
REQUEST_DURATION = Histogram(
    "mira_request_duration_seconds", "Time from request to its last byte, by route", ["route"], buckets=_LATENCY_BUCKETS
)
BUILD_INFO = Gauge(
    "mira_build_info", "1, labelled with the node's VERSION and the event loop it runs on", ["version", "event_loop"],
    multiprocess_mode="max",
)
IN_FLIGHT = Gauge("mira_requests_in_flight", "Requests being handled now", multiprocess_mode="livesum")
UPSTREAM_CALLS = Counter("mira_upstream_calls", "Upstream attempts by provider and outcome", ["provider", "outcome"])
UPSTREAM_DURATION = Histogram(
    "mira_upstream_duration_seconds", "Upstream attempt duration", ["provider"], buckets=_LATENCY_BUCKETS
)
UPSTREAM_TTFB = Histogram(
    "mira_upstream_ttfb_seconds", "Time to the first streamed byte from the upstream", ["provider"], buckets=_LATENCY_BUCKETS
)
UPSTREAM_RETRIES = Counter("mira_upstream_retries", "Upstream retries by provider", ["provider"])
STREAMS = Counter("mira_streams", "Streams by event: opened, completed, client_aborted, upstream_failed", ["event"])
HEARTBEAT_FAILURES = Counter(
    "mira_heartbeat_failures", "Liveness heartbeats that failed, by reason: status_NNN, timeout, connection", ["reason"]
)
PROVIDER_UP = Gauge("mira_provider_up", "1 unless the provider's circuit is open", ["provider"], multiprocess_mode="min")
FALLBACKS = Counter("mira_fallbacks", "Switches from a failing provider to the next fallback", ["from", "to"])
TOKENS = Counter("mira_tokens", "Tokens upstream answers reported, by provider, model and kind", ["provider", "model", "kind"])
LIMIT_REFUSALS = Counter(
    "mira_limit_refusals", "Calls the node refused itself: a provider limit reached (rpm, tpm, tokens_per_day)",
    ["provider", "limit"],
)
# Per process without REDIS_URL, the shared count with it: "max" shows the fullest worker either way.
TOKENS_TODAY = Gauge(
    "mira_tokens_today", "Tokens a provider with limits used since 00:00 UTC", ["provider"], multiprocess_mode="max"
)
KEY_COOLING = Gauge(
    "mira_provider_key_cooling", "1 while a key of a provider's pool cools (key: its position)", ["provider", "key"],
    multiprocess_mode="max",
)
# The status page's figures across workers (utils/status.py reads them): "livesum" adds up the live workers.
STREAMS_OPEN = Gauge("mira_streams_open", "Streams being relayed now", multiprocess_mode="livesum")
NODE_TOKENS_TODAY = Gauge(
    "mira_node_tokens_today", "Tokens answers reported since 00:00 UTC, by provider (every provider; the node's workers)",
    ["provider"], multiprocess_mode="livesum",
)
COST = Counter(
    "mira_cost_usd", "USD of the answers PRICES_FILE prices, by provider and model", ["provider", "model"]
)
UNPRICED = Counter(
    "mira_unpriced_calls", "Answers with usage whose model has no price in PRICES_FILE, by provider and model",
    ["provider", "model"],
)
# Per process without REDIS_URL, the shared figure with it, like mira_tokens_today.
COST_TODAY = Gauge(
    "mira_cost_today_usd", "USD since 00:00 UTC of a provider the ledger watches (limits), and of the node-wide \"*\"",
    ["provider"], multiprocess_mode="max",
)
BUDGET_USD = Gauge(
    "mira_budget_usd_per_day", "The usd_per_day budget of PROVIDER_LIMITS_FILE, by provider (\"*\": the node's)",
    ["provider"], multiprocess_mode="max",
)
NODE_COST_TODAY = Gauge(
    "mira_node_cost_today_usd", "USD of priced answers since 00:00 UTC, by provider (every provider; the node's workers)",
    ["provider"], multiprocess_mode="livesum",
)
STREAM_ENDS = frozenset(("completed", "client_aborted", "upstream_failed", "shutdown"))  # each ends an "opened" stream
DAY = 86400


class _Batch:
    """Counter, gauge and histogram updates made in one loop turn, applied together at its end.

    Gauges set on a request's path (``mira_tokens_today``) go through it too: the turn's last value wins.

    A prometheus_client update takes a lock (and in multi-process mode writes
    its file); requests answered in the same turn mostly update the same
    samples, so each sample is updated once a turn: a counter or gauge with
    the sum of its changes, a histogram bucket with its count of observations.
    Updates made outside a running loop apply at once; :func:`flush` applies
    what waits (``/metrics`` calls it first, so a scrape sees every update
    made before it).
    """

    def __init__(self) -> None:
        self.incs: dict[Callable[[float], None], float] = {}
        self.sets: dict[Callable[[float], None], float] = {}  # a gauge's set: the turn's last value wins
        self.observed: dict[Any, list[float]] = {}
        self.armed = False

    def add(self, inc: Callable[[float], None], amount: float) -> None:
        incs = self.incs
        incs[inc] = incs.get(inc, 0) + amount
        if not self.armed:
            self._arm()

    def set(self, setter: Callable[[float], None], value: float) -> None:
        self.sets[setter] = value
        if not self.armed:
            self._arm()

    def observe(self, histogram: Any, value: float) -> None:
        values = self.observed.get(histogram)
        if values is None:
            self.observed[histogram] = [value]
        else:
            values.append(value)
        if not self.armed:
            self._arm()

    def _arm(self) -> None:
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:  # no loop running: apply now
            self.flush()
            return
        self.armed = True

    def flush(self) -> None:
        self.armed = False
        incs, self.incs = self.incs, {}
        for inc, amount in incs.items():
            if amount:
                inc(amount)
        sets, self.sets = self.sets, {}
        for setter, value in sets.items():
            setter(value)
        observed, self.observed = self.observed, {}
        for histogram, values in observed.items():
            _observe_all(histogram, values)


def _observe_all(histogram: Any, values: list[float]) -> None:
    """``histogram.observe`` each of ``values``, with one update of each bucket and of the sum.

    prometheus_client has no public call for this: it uses the histogram's
    ``_upper_bounds``, ``_buckets`` and ``_sum`` (what ``Histogram.observe``
    updates), checked by ``tests/test_metrics_batch.py``; without them it
    observes one value at a time.
    """
    try:
        bounds, buckets, total = histogram._upper_bounds, histogram._buckets, histogram._sum
    except AttributeError:
        for value in values:
            histogram.observe(value)
        return
    counts: dict[int, int] = {}
    for value in values:
        at = bisect_left(bounds, value)  # the first bucket with value <= its bound, as observe() picks
        counts[at] = counts.get(at, 0) + 1
    total.inc(sum(values))
    for at, count in counts.items():
        buckets[at].inc(count)


_batch = _Batch()
_add = _batch.add
_observe = _batch.observe


class Tally:
    """This process's streams open and tokens since 00:00 UTC, as plain numbers (read by utils/status.py).

    ``mira_streams_open`` and ``mira_node_tokens_today`` carry the same numbers, for the other workers to read.
    Whenever a count of today is not 0, a timer is set for the next 00:00 UTC, which sets it back to 0.
    """

    streams: int
    day: int  # days since the epoch that ``today`` and ``usd`` count
    day_end: float  # the wall-clock time that day ends (one comparison a count)
    today: dict[str, int]  # provider -> tokens
    usd: dict[str, float]  # provider -> USD of its priced answers
    timer: asyncio.TimerHandle | None

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Nothing counted (a forked worker starts so: its parent serves no request)."""
        self.streams, self.day, self.day_end, self.today, self.usd, self.timer = 0, -1, 0.0, {}, {}, None

    def tokens_today(self) -> dict[str, int]:
        """Tokens by provider since 00:00 UTC (nothing when the last count was on an earlier day)."""
        return dict(self.today) if self.day == int(time.time() // DAY) else {}

    def usd_today(self) -> dict[str, float]:
        """USD of priced answers by provider since 00:00 UTC (nothing when the last count was on an earlier day)."""
        return dict(self.usd) if self.day == int(time.time() // DAY) else {}


tally = Tally()


def _after_fork() -> None:
    # What the parent has not applied yet is the parent's; the child's loop has no flush queued.
    _batch.incs, _batch.sets, _batch.observed, _batch.armed = {}, {}, {}, False
    tally.reset()


os.register_at_fork(after_in_child=_after_fork)


def flush() -> None:
    """Apply the updates still waiting for the end of this loop turn."""
    _batch.flush()


def build_info(version: str, event_loop: str) -> None:
    """``mira_build_info{version, event_loop}`` is 1: set once at start-up, on the loop the process runs on."""
    BUILD_INFO.labels(version, event_loop).set(1)


def in_flight(change: int) -> None:
    """One more request in flight (+1), or one fewer (-1)."""
    _add(_in_flight_inc, change)


_in_flight_inc = IN_FLIGHT.inc

# Labelled children, looked up once: ``labels()`` costs a lock and a tuple per call.
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


# What one request updates, per label set: a counter's bound inc and a histogram child, looked up once.
_request_cells: dict[tuple[str, int], tuple[Any, Any]] = {}
_upstream_cells: dict[tuple[str, str], tuple[Any, Any]] = {}
_token_cells: dict[tuple[str, str], tuple[Any, Any]] = {}


def request_done(route: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration."""
    cells = _request_cells.get((route, status))
    if cells is None:
        cells = _request_cells[(route, status)] = (
            REQUESTS.labels(route, str(status)).inc, REQUEST_DURATION.labels(route)
        )
    _add(cells[0], 1)
    _observe(cells[1], seconds)


def upstream_call(provider: str, outcome: str, seconds: float) -> None:
    """Count one upstream attempt and its duration."""
    cells = _upstream_cells.get((provider, outcome))
    if cells is None:
        cells = _upstream_cells[(provider, outcome)] = (
            UPSTREAM_CALLS.labels(provider, outcome).inc, UPSTREAM_DURATION.labels(provider)
        )
    _add(cells[0], 1)
    _observe(cells[1], seconds)


def upstream_retry(provider: str) -> None:
    _child(UPSTREAM_RETRIES, provider).inc()


def stream_event(event: str) -> None:
    _add(_child(STREAMS, event).inc, 1)
    if event == "opened":
        tally.streams += 1
        _add(_streams_open_inc, 1)
    elif event in STREAM_ENDS:
        tally.streams -= 1
        _add(_streams_open_inc, -1)


_streams_open_inc = STREAMS_OPEN.inc


def upstream_ttfb(provider: str, seconds: float) -> None:
    _observe(_child(UPSTREAM_TTFB, provider), seconds)


def provider_up(provider: str, up: bool) -> None:
    _child(PROVIDER_UP, provider).set(1 if up else 0)


def fallback(from_provider: str, to_provider: str) -> None:
    _child(FALLBACKS, from_provider, to_provider).inc()


def tokens(provider: str, model: str, prompt: int, completion: int, cache_read: int = 0, cache_write: int = 0) -> None:
    """Count the tokens of one answer (``model``: a listed model id, ``other`` or ``custom``).

    ``cache_read`` and ``cache_write`` are parts of ``prompt``, counted under their own kinds as well.
    """
    cells = _token_cells.get((provider, model))
    if cells is None:
        cells = _token_cells[(provider, model)] = (
            TOKENS.labels(provider, model, "prompt").inc, TOKENS.labels(provider, model, "completion").inc
        )
    if prompt:
        _add(cells[0], prompt)
    if completion:
        _add(cells[1], completion)
    if cache_read:
        _add(_child(TOKENS, provider, model, "cache_read").inc, cache_read)
    if cache_write:
        _add(_child(TOKENS, provider, model, "cache_write").inc, cache_write)
    if prompt or completion:
        _count_today(provider, prompt + completion)


def _count_today(provider: str, count: int) -> None:
    if time.time() >= tally.day_end:
        _new_day()
    value = tally.today[provider] = tally.today.get(provider, 0) + count
    _batch.set(_child(NODE_TOKENS_TODAY, provider).set, value)


def _new_day() -> None:
    """At 00:00 UTC (and at the first count of a process): the counts of today start from 0 (the timer's callback)."""
    now = time.time()
    day = int(now // DAY)
    if day != tally.day:
        for provider in tally.today:
            _batch.set(_child(NODE_TOKENS_TODAY, provider).set, 0)
        for provider in tally.usd:
            _batch.set(_child(NODE_COST_TODAY, provider).set, 0)
        tally.today.clear()
        tally.usd.clear()
        tally.day, tally.day_end = day, (day + 1) * DAY
    if tally.timer is not None:
        tally.timer.cancel()
        tally.timer = None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop: the counts are read with their day (Tally.tokens_today)
        return
    tally.timer = loop.call_later((day + 1) * DAY - now, _new_day)  # early by the loop clock's drift: set again


_cost_cells: dict[tuple[str, str], tuple[Any, Any]] = {}


def cost(provider: str, model: str, usd: float) -> None:
    """The cost of one priced answer (``model`` labelled as in :func:`tokens`), and the node's cost of the day."""
    cells = _cost_cells.get((provider, model))
    if cells is None:
        cells = _cost_cells[(provider, model)] = (COST.labels(provider, model).inc, NODE_COST_TODAY.labels(provider).set)
    _add(cells[0], usd)
    if time.time() >= tally.day_end:
        _new_day()
    value = tally.usd[provider] = tally.usd.get(provider, 0.0) + usd
    _batch.set(cells[1], value)


def unpriced(provider: str, model: str) -> None:
    """One answer with usage whose model PRICES_FILE does not price."""
    _add(_child(UNPRICED, provider, model).inc, 1)


def cost_today(provider: str, usd: float) -> None:
    _batch.set(_child(COST_TODAY, provider).set, usd)


def cost_today_setter(provider: str) -> Callable[[float], None]:
    """``mira_cost_today_usd{provider}``'s setter, applied at the end of the loop turn (see :class:`_Batch`)."""
    setter = _child(COST_TODAY, provider).set
    return lambda usd: _batch.set(setter, usd)


def budget_usd(provider: str, usd: float) -> None:
    """``mira_budget_usd_per_day{provider}``: set once at start-up for each dollar budget."""
    _child(BUDGET_USD, provider).set(usd)


def limit_refusal(provider: str, limit: str) -> None:
    _child(LIMIT_REFUSALS, provider, limit).inc()


def tokens_today(provider: str, count: int) -> None:
    tokens_today_setter(provider)(count)


def tokens_today_setter(provider: str) -> Callable[[float], None]:
    """``mira_tokens_today{provider}``'s setter, applied at the end of the loop turn (see :class:`_Batch`)."""
    setter = _child(TOKENS_TODAY, provider).set
    return lambda count: _batch.set(setter, count)


def key_cooling(provider: str, position: int, cooling: bool) -> None:
    """``position``: the key's place in the pool, from 1."""
    _child(KEY_COOLING, provider, str(position)).set(1 if cooling else 0)


_redis_up: Gauge | None = None


def redis_up(up: bool) -> None:
    """``mira_redis_up``: made on first use, so that a node without REDIS_URL does not export it."""
    global _redis_up
    if _redis_up is None:
        _redis_up = Gauge("mira_redis_up", "1 while the shared-state Redis (REDIS_URL) answers", multiprocess_mode="min")
    _redis_up.set(1 if up else 0)
