"""``utils.metrics``: updates batched per loop turn give the same samples as updates made one by one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from utils import metrics

BOUNDS = (0.001, 0.01, 0.1, 1.0)
# Below, on and between the bounds, and past the last one (the +Inf bucket).
VALUES = [0.0, 0.0005, 0.001, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 30.0]


def pair() -> tuple[CollectorRegistry, Any, Any, Any]:
    registry = CollectorRegistry()
    counter = Counter("t_requests", "requests", ["route"], registry=registry)
    gauge = Gauge("t_in_flight", "in flight", registry=registry)
    histogram = Histogram("t_seconds", "seconds", ["route"], buckets=BOUNDS, registry=registry)
    return registry, counter, gauge, histogram


def exposition(registry: CollectorRegistry) -> bytes:
    # The _created samples carry each metric's creation time: not what is compared.
    return b"\n".join(line for line in generate_latest(registry).splitlines() if b"_created" not in line)


def test_a_batch_applied_at_once_gives_the_samples_of_one_update_at_a_time() -> None:
    one_by_one, counter, gauge, histogram = pair()
    for value in VALUES:
        counter.labels("chat").inc()
        gauge.inc()
        histogram.labels("chat").observe(value)
    gauge.dec()
    counter.labels("verify").inc(3)

    batched, counter_b, gauge_b, histogram_b = pair()
    batch = metrics._Batch()
    for value in VALUES:
        batch.add(counter_b.labels("chat").inc, 1)
        batch.add(gauge_b.inc, 1)
        batch.observe(histogram_b.labels("chat"), value)
    batch.add(gauge_b.inc, -1)
    batch.add(counter_b.labels("verify").inc, 3)
    batch.flush()
    assert exposition(batched) == exposition(one_by_one)
    assert b't_seconds_bucket{le="0.001",route="chat"} 4.0' in exposition(batched)


def test_the_batched_histogram_path_uses_prometheus_clients_own_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a prometheus_client upgrade renamed them, _observe_all would fall back to observe(): this says so."""
    _, _, _, histogram = pair()
    child = histogram.labels("chat")

    def refuse(value: float) -> None:
        raise AssertionError("observe() called: _upper_bounds, _buckets or _sum is gone from prometheus_client")

    monkeypatch.setattr(child, "observe", refuse)
    metrics._observe_all(child, VALUES)
    assert child._sum.get() == pytest.approx(sum(VALUES))


def test_updates_made_in_a_loop_turn_apply_at_its_end_and_without_a_loop_at_once() -> None:
    registry, counter, _, histogram = pair()
    batch = metrics._Batch()
    child = counter.labels("chat")

    def total() -> float:
        return registry.get_sample_value("t_requests_total", {"route": "chat"}) or 0.0

    batch.add(child.inc, 1)  # no loop running: applied now
    assert total() == 1

    async def turn() -> tuple[float, float]:
        batch.add(child.inc, 1)
        batch.add(child.inc, 1)
        batch.observe(histogram.labels("chat"), 0.5)
        during = total()
        await asyncio.sleep(0)  # one loop turn: the batch's call_soon runs first
        return during, total()

    during, after = asyncio.run(turn())
    assert (during, after) == (1, 3)
    assert registry.get_sample_value("t_seconds_count", {"route": "chat"}) == 1


def test_flush_applies_what_waits_at_once() -> None:
    registry, counter, _, _ = pair()
    batch = metrics._Batch()

    async def scrape() -> float | None:
        batch.add(counter.labels("chat").inc, 2)
        batch.flush()
        return registry.get_sample_value("t_requests_total", {"route": "chat"})

    assert asyncio.run(scrape()) == 2
