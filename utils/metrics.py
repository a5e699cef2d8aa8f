"""The node's Prometheus metrics.

All label values are bounded: routes are the app's route names, providers are
the configured provider names (a per-request custom provider is ``custom``),
outcomes come from a fixed set.
"""

from __future__ import annotations

import os
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
HEARTBEAT_FAILURES = Counter("mira_heartbeat_failures", "Liveness heartbeats that failed")
PROVIDER_UP = Gauge("mira_provider_up", "1 unless the provider's circuit is open", ["provider"], multiprocess_mode="min")
FALLBACKS = Counter("mira_fallbacks", "Switches from a failing provider to the next fallback", ["from", "to"])
TOKENS = Counter("mira_tokens", "Tokens upstream answers reported, by provider, model and kind", ["provider", "model", "kind"])


# Labelled children, looked up once: ``labels()`` costs a lock and a tuple per call.
_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


# What one request updates, per label set: the children's bound methods, looked up once.
_request_cells: dict[tuple[str, int], tuple[Any, Any]] = {}
_upstream_cells: dict[tuple[str, str], tuple[Any, Any]] = {}
_token_cells: dict[tuple[str, str], tuple[Any, Any]] = {}


def request_done(route: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration."""
    cells = _request_cells.get((route, status))
    if cells is None:
        cells = _request_cells[(route, status)] = (
            REQUESTS.labels(route, str(status)).inc, REQUEST_DURATION.labels(route).observe
        )
    cells[0]()
    cells[1](seconds)


def upstream_call(provider: str, outcome: str, seconds: float) -> None:
    """Count one upstream attempt and its duration."""
    cells = _upstream_cells.get((provider, outcome))
    if cells is None:
        cells = _upstream_cells[(provider, outcome)] = (
            UPSTREAM_CALLS.labels(provider, outcome).inc, UPSTREAM_DURATION.labels(provider).observe
        )
    cells[0]()
    cells[1](seconds)


def upstream_retry(provider: str) -> None:
    _child(UPSTREAM_RETRIES, provider).inc()


def stream_event(event: str) -> None:
    _child(STREAMS, event).inc()


def upstream_ttfb(provider: str, seconds: float) -> None:
    _child(UPSTREAM_TTFB, provider).observe(seconds)


def provider_up(provider: str, up: bool) -> None:
    _child(PROVIDER_UP, provider).set(1 if up else 0)


def fallback(from_provider: str, to_provider: str) -> None:
    _child(FALLBACKS, from_provider, to_provider).inc()


def tokens(provider: str, model: str, prompt: int, completion: int) -> None:
    """Count the tokens of one answer (``model``: a listed model id, ``other`` or ``custom``)."""
    cells = _token_cells.get((provider, model))
    if cells is None:
        cells = _token_cells[(provider, model)] = (
            TOKENS.labels(provider, model, "prompt").inc, TOKENS.labels(provider, model, "completion").inc
        )
    if prompt:
        cells[0](prompt)
    if completion:
        cells[1](completion)
