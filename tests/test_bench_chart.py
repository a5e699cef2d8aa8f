"""bench/chart.py: the PNG chart of a benchmark run, and what happens without matplotlib.

matplotlib is in the test set (requirements-dev.txt). The tests that draw skip
without it on a developer's machine, and fail under CI=true, where it must be
installed; the one without matplotlib always runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_chart() -> ModuleType:
    """bench/chart.py under a name of its own (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_chart", BENCH / "chart.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


chart = load_chart()


def require_matplotlib() -> None:
    """Skip without matplotlib, unless CI is "true": there a missing matplotlib fails the test."""
    if importlib.util.find_spec("matplotlib") is not None:
        return
    message = "matplotlib is not installed: pip install -r requirements-dev.txt (make install)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; under CI=true the chart tests must run")
    pytest.skip(message)


def fabricated_panels() -> list:
    return [
        chart.Panel("JSON requests/s", "requests/s", (chart.Group("64 connections", 3713.0, 52816.0),), digits=0),
        chart.Panel("JSON latency", "ms", (chart.Group("p50", 16.8, 1.15), chart.Group("p99", 24.4, None))),
        chart.Panel("RSS", "MB", (chart.Group("idle", 41.7), chart.Group("holding 1,000 streams", 86.9)), 1, node_only=True),
        chart.Panel("Abort", "ms", (chart.Group("p50", None, None),)),  # nothing measured: left out
    ]


def test_chart_is_a_png(tmp_path: Path) -> None:
    require_matplotlib()
    path = chart.write_chart(fabricated_panels(), tmp_path / "run.png", "Benchmark, quick, commit abc1234")
    assert path == tmp_path / "run.png"
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_chart_of_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The figures are read from the benchmark's own Measurements (bench/phases.py), so a renamed field breaks here."""
    require_matplotlib()
    monkeypatch.syspath_prepend(str(BENCH))
    import load
    import phases
    import plan
    import readings

    m = phases.Measurements(plan.QUICK, fd_limit=20_000)
    m.json["node"] = load.JsonResult(3713.0, 16.8, 24.4, 11_000, 0, cpu_us=269.0)
    m.json["direct"] = None  # a phase that failed
    m.streams["node"] = load.StreamStats(ttfb_ms=[9.0, 10.0, 19.0], streams=3)
    m.abort["node"] = load.AbortStats(delays_ms=[0.2, 0.3, 0.4], failures=Counter())
    m.rss_idle.append(("limits 1,050", 41.7, True))
    m.holds[("node", 1000)] = load.HoldResult(1000, "node", rss_mb=86.9, cpu_percent=4.3)
    figures = {p.title: p for p in chart.panels(m)}
    assert figures["JSON requests/s"].groups[0] == chart.Group("64 connections", 3713.0, None)
    assert figures["50 streams at once: TTFB"].groups[0].node == pytest.approx(readings.percentile([9.0, 10.0, 19.0], 50))
    assert figures["50 streams at once: TTFB"].groups[1].node == pytest.approx(readings.percentile([9.0, 10.0, 19.0], 99))
    assert figures["Abort: client gone → upstream closed"].groups[1].node == 0.4
    assert not figures["One stream alone: TTFB"].shown()
    assert [g.node for g in figures["RSS of the node"].groups] == [41.7, 86.9]
    path = chart.write_chart(list(figures.values()), tmp_path / "run.png", "a run")
    assert path is not None and path.read_bytes()[:8] == PNG_MAGIC


def test_without_matplotlib_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert chart.write_chart(fabricated_panels(), tmp_path / "run.png", "a run") is None
    assert not (tmp_path / "run.png").exists()


def test_no_figure_at_all_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        chart.write_chart([chart.Panel("Abort", "ms", (chart.Group("p50", None),))], tmp_path / "run.png", "a run")
