"""The node's Prometheus metrics.

All label values are bounded: routes are the app's route names, providers are
the configured provider names (a per-request custom provider is ``custom``),
outcomes come from a fixed set.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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


def upstream_call(provider: str, outcome: str, seconds: float) -> None:
    """Count one upstream attempt and its duration."""
    UPSTREAM_CALLS.labels(provider, outcome).inc()
    UPSTREAM_DURATION.labels(provider).observe(seconds)


def upstream_retry(provider: str) -> None:
    UPSTREAM_RETRIES.labels(provider).inc()


def stream_event(event: str) -> None:
    STREAMS.labels(event).inc()


def upstream_ttfb(provider: str, seconds: float) -> None:
    UPSTREAM_TTFB.labels(provider).observe(seconds)
