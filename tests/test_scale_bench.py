"""bench/: the scale curve (issue 24): cost per stream against streams held, its table and its chart panels.

The figures are derived from what ``hold_streams`` records (CPU time and events while opening and in the
window); these tests pin that arithmetic on fabricated results, without starting anything.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture()
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ModuleType]]:
    monkeypatch.syspath_prepend(str(BENCH))
    import chart
    import load
    import phases
    import plan
    import report

    yield {"chart": chart, "load": load, "phases": phases, "plan": plan, "report": report}
    for name in ("chart", "load", "phases", "plan", "report", "clients", "procs", "readings"):
        sys.modules.pop(name, None)  # bench/ is not a package: leave no module of it behind for other tests


def hold(load: ModuleType, count: int, open_cpu: float, opening_events: int, window_cpu: float, window_events: int,
         first_ms: list[float], rss: float | None = None) -> Any:
    result = load.HoldResult(count, "node", first_event_ms=first_ms, ok=count, rss_mb=rss)
    result.open_cpu_seconds = open_cpu
    result.opening_events = opening_events
    result.window_cpu_seconds = window_cpu
    result.window_events = window_events
    return result


def test_per_stream_figures(bench: dict[str, ModuleType]) -> None:
    load = bench["load"]
    # 1,000 streams opened with 1.0 s of CPU, 1,500 events received meanwhile (1,000 of them first events);
    # in the window 3,000 events cost 0.15 s.
    result = hold(load, 1000, 1.0, 1500, 0.15, 3000, [5.0] * 1000)
    assert result.event_cpu_us == pytest.approx(50.0)
    assert result.open_cpu_ms == pytest.approx(1.0)
    assert result.relayed_while_opening == 500
    # less the 500 relayed events at 50 µs each: (1.0 - 0.025) s over 1,000 streams
    assert result.open_net_cpu_ms == pytest.approx(0.975)


def test_figures_missing_without_a_window(bench: dict[str, ModuleType]) -> None:
    load = bench["load"]
    result = load.HoldResult(1000, "node")
    assert result.event_cpu_us is None
    assert result.open_cpu_ms is None
    assert result.open_net_cpu_ms is None


def test_scale_table_and_verdicts(bench: dict[str, ModuleType]) -> None:
    load, phases, plan, report = bench["load"], bench["phases"], bench["plan"], bench["report"]
    m = phases.Measurements(plan.FULL, fd_limit=20_000)
    m.rss_idle.append(("limits 1,050", 41.0, True))
    m.relay_cpu_us["node"] = 40.0
    for count in plan.FULL.holds:
        m.holds[("node", count)] = hold(load, count, count * 1e-3, count, count * 3 * 50e-6, count * 3, [10.0] * count,
                                        rss=41.0 + count * 36 / 1024)
        m.holds[("direct", count)] = hold(load, count, count * 2e-4, count, count * 3 * 20e-6, count * 3, [4.0] * count)
    # the largest hold costs 1.5x per stream to open and 1.2x per event
    largest = m.holds[("node", plan.FULL.holds[-1])]
    largest.open_cpu_seconds *= 1.5
    largest.window_cpu_seconds *= 1.2
    text = report.scale_table(m)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(plan.FULL.holds)
    assert "1.00 ms / 0.20 ms" in rows[1] and "50.0 µs / 20.0 µs" in rows[1] and "36.0 KB" in rows[1]
    assert "CPU to open one stream, 1,000 → 10,000 streams: 1.50× (target ≤ 1.25×: **missed**)" in text
    assert "CPU per relayed event while holding, 1,000 → 10,000 streams: 1.20× (target ≤ 1.25×: met)" in text
    assert "(20 streams, 40.0 µs): 1.50× (target ≤ 1.5×: met)" in text
    assert "node / direct: 2.50× (target ≤ 5×: met)" in text
    # the main table keeps only the smallest and the largest hold
    table = report.render_table(m)
    assert "2,500 slow streams held" not in table and "10,000 slow streams held" in table


def test_scale_panels(bench: dict[str, ModuleType]) -> None:
    chart, load, phases, plan = bench["chart"], bench["load"], bench["phases"], bench["plan"]
    m = phases.Measurements(plan.FULL, fd_limit=20_000)
    m.holds[("node", 1000)] = hold(load, 1000, 1.0, 1000, 0.15, 3000, [1.0, 2.0, 3.0])
    panels = {p.title: p for p in chart.panels(m)}
    opening = panels["CPU to open a stream, by held"]
    assert [g.label for g in opening.groups] == [f"{c:,}" for c in plan.FULL.holds]
    assert opening.groups[0].node == pytest.approx(1.0) and opening.groups[0].direct is None
    assert opening.groups[1].node is None  # not measured: left out of the drawing
    assert panels["CPU per event held, by held"].groups[0].node == pytest.approx(50.0)
    assert panels["First event p99 opening, by held"].groups[0].node == pytest.approx(chart.pick([1.0, 2.0, 3.0], 99))


def test_messages_rows(bench: dict[str, ModuleType]) -> None:
    """Issue 30: CPU per /v1/messages request (relayed, translated) and per stream event, over chat's on the same node."""
    load, phases, plan, report = bench["load"], bench["phases"], bench["plan"], bench["report"]
    m = phases.Measurements(plan.QUICK, fd_limit=20_000)

    def rounds(*cpu: float) -> list[Any]:
        return [load.JsonResult(1000.0, 1.0, 2.0, 1000, 0, cpu_us=value) for value in cpu]

    m.rounds = {"node": rounds(300, 320), "messages-relayed": rounds(320, 330), "messages-translated": rounds(380, 400)}
    m.event_rounds = {
        "chat": [30.0, 31.0, 32.0], "messages-relayed": [29.0, 30.0, 35.0], "messages-translated": [36.0, 37.0, 38.0],
    }
    lines = report.render_table(m).splitlines()

    def line(*words: str) -> str:
        return next(text for text in lines if all(word in text for word in words))

    relayed = line("CPU per Messages request", "relayed")
    assert "325 µs" in relayed and "chat: 310 µs" in relayed and "1.05×" in relayed and "≤ 1.05×" in relayed
    assert relayed.rstrip(" |").endswith("met") and "**missed**" not in relayed  # 325 / 310 = 1.048
    translated = line("CPU per Messages request", "translated")
    assert "390 µs" in translated and "1.26×" in translated and "**missed**" in translated  # target ≤ 1.2×
    assert "30.0 µs" in line("stream event, Messages relayed") and "0.97×" in line("stream event, Messages relayed")
    assert "chat: 31.0 µs" in line("stream event, Messages translated") and "1.19×" in line("stream event, Messages translated")
