"""The PNG chart of a ``make bench`` run: its figures, node beside direct.

``panels(m)`` picks from a run's ``Measurements`` (``bench/phases.py``) the
figures that compare well as bars; ``write_chart(panels, path, title)`` draws
them as a grid of small bar charts, one panel per figure, each bar labelled
with its value. A figure that was not measured (None) is left out, and so is
a panel with none of its figures.

matplotlib (pinned in ``requirements-dev.txt``, the test set, which ``make
install`` and ``make bench`` install) is imported only inside ``write_chart``, with the non-interactive
Agg backend; without it ``write_chart`` returns None and draws nothing, so the
benchmark itself never depends on it.
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phases import Measurements

NODE_COLOUR = "#3a6ea5"
DIRECT_COLOUR = "#b0b0b0"
COLUMNS = 4
PANEL_INCHES = (4.2, 3.4)
LABEL_WIDTH = 14  # characters per line of a bar group's label


@dataclass(frozen=True)
class Group:
    """One label of a panel: the node's bar and, where it has one, direct's beside it."""

    label: str
    node: float | None
    direct: float | None = None


@dataclass(frozen=True)
class Panel:
    """One small bar chart: a figure (or a few of the same unit) for node and direct."""

    title: str
    unit: str
    groups: tuple[Group, ...]
    digits: int = 2
    node_only: bool = False  # drawn as horizontal bars, labels on the left

    def shown(self) -> tuple[Group, ...]:
        """The groups with at least one measured value."""
        return tuple(g for g in self.groups if g.node is not None or g.direct is not None)


# -- the figures of a run ---------------------------------------------------------------------


def pick(values: Sequence[float] | None, q: int) -> float | None:
    """Percentile ``q`` (1-99, interpolated like readings.py's ``percentile``), 100 for the maximum; None for no values."""
    if not values:
        return None
    if q >= 100 or len(values) == 1:
        return max(values)
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def field_of(results: dict[str, Any], name: str, attribute: str) -> float | None:
    """``results[name].attribute``, or None where that phase has no result."""
    result = results.get(name)
    return getattr(result, attribute) if result is not None else None


def samples(results: dict[str, Any], name: str, attribute: str, q: int) -> float | None:
    """Percentile ``q`` of the list ``results[name].attribute``."""
    return pick(field_of(results, name, attribute), q)


def json_panels(m: Measurements) -> list[Panel]:
    def both(attribute: str) -> tuple[float | None, float | None]:
        return field_of(m.json, "node", attribute), field_of(m.json, "direct", attribute)

    return [
        Panel("JSON requests/s", "requests/s", (Group("64 connections", *both("rps")),), digits=0),
        Panel("CPU per JSON request", "µs", (Group("server process", *both("cpu_us")),), digits=0),
        Panel("JSON latency", "ms", (Group("p50", *both("p50_ms")), Group("p99", *both("p99_ms")))),
    ]


def stream_panels(m: Measurements) -> list[Panel]:
    def ttfb(results: dict[str, Any], q: int) -> tuple[float | None, float | None]:
        return samples(results, "node", "ttfb_ms", q), samples(results, "direct", "ttfb_ms", q)

    return [
        Panel("50 streams at once: TTFB", "ms", (Group("p50", *ttfb(m.streams, 50)), Group("p99", *ttfb(m.streams, 99)))),
        Panel("One stream alone: TTFB", "ms", (Group("p50", *ttfb(m.alone, 50)),)),
    ]


def abort_panel(m: Measurements) -> Panel:
    def delay(q: int) -> tuple[float | None, float | None]:
        return samples(m.abort, "node", "delays_ms", q), samples(m.abort, "direct", "delays_ms", q)

    return Panel("Abort: client gone → upstream closed", "ms", (Group("p50", *delay(50)), Group("max", *delay(100))))


def hold_panels(m: Measurements) -> list[Panel]:
    """RSS of the node (idle and holding streams), and CPU of node and direct while they hold streams."""
    rss = [Group(f"idle, {label}", mb) for label, mb, _ in m.rss_idle]
    cpu = []
    for count in m.plan.holds:
        node, direct = m.holds.get(("node", count)), m.holds.get(("direct", count))
        held = f"{node.count:,}" if node is not None else f"{count:,}"
        rss.append(Group(f"holding {held} streams", getattr(node, "rss_mb", None)))
        cpu.append(Group(held, getattr(node, "cpu_percent", None), getattr(direct, "cpu_percent", None)))
    return [
        Panel("RSS of the node", "MB", tuple(rss), digits=1, node_only=True),
        Panel("CPU holding slow streams", "% of a core", tuple(cpu), digits=1),
        *scale_panels(m),
    ]


def scale_panels(m: Measurements) -> list[Panel]:
    """Cost per stream against streams held (the scale curve), node beside direct, one group per hold."""

    def per_hold(attribute: str) -> tuple[Group, ...]:
        groups = []
        for count in m.plan.holds:
            node, direct = m.holds.get(("node", count)), m.holds.get(("direct", count))
            held = f"{node.count:,}" if node is not None else f"{count:,}"
            groups.append(Group(held, getattr(node, attribute, None), getattr(direct, attribute, None)))
        return tuple(groups)

    def first_event(q: int) -> tuple[Group, ...]:
        groups = []
        for count in m.plan.holds:
            node, direct = m.holds.get(("node", count)), m.holds.get(("direct", count))
            held = f"{node.count:,}" if node is not None else f"{count:,}"
            first_node, first_direct = getattr(node, "first_event_ms", None), getattr(direct, "first_event_ms", None)
            groups.append(Group(held, pick(first_node, q), pick(first_direct, q)))
        return tuple(groups)

    return [
        Panel("CPU to open a stream, by held", "ms", per_hold("open_cpu_ms")),
        Panel("CPU per event held, by held", "µs", per_hold("event_cpu_us"), digits=1),
        Panel("First event p99 opening, by held", "ms", first_event(99), digits=0),
    ]


def panels(m: Measurements) -> list[Panel]:
    """Every figure of the run that has a node and a direct side (RSS: the node's only)."""
    return [*json_panels(m), *stream_panels(m), abort_panel(m), *hold_panels(m)]


# -- drawing ----------------------------------------------------------------------------------


def value_text(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def wrapped(label: str, width: int = LABEL_WIDTH) -> str:
    return "\n".join(textwrap.wrap(label, width))


def draw_pairs(ax: Any, panel: Panel, groups: tuple[Group, ...]) -> None:
    """Vertical bars, node beside direct for each group, each with its value on top."""
    width = 0.38
    for offset, side, colour in ((-width / 2, "node", NODE_COLOUR), (width / 2, "direct", DIRECT_COLOUR)):
        places = [(i, getattr(g, side)) for i, g in enumerate(groups) if getattr(g, side) is not None]
        if places:
            bars = ax.bar([i + offset for i, _ in places], [v for _, v in places], width, color=colour)
            ax.bar_label(bars, labels=[value_text(v, panel.digits) for _, v in places], padding=2, fontsize=8)
    top = max(v for g in groups for v in (g.node, g.direct) if v is not None)
    ax.set_xticks(range(len(groups)), [wrapped(g.label) for g in groups], fontsize=8)
    ax.set_xlim(-0.7, len(groups) - 0.3)
    ax.set_ylim(0, top * 1.2 if top > 0 else 1)
    ax.set_ylabel(panel.unit, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.yaxis.set_major_formatter(lambda value, _: value_text(value, 0) if panel.digits == 0 else f"{value:g}")


def draw_node_only(ax: Any, panel: Panel, groups: tuple[Group, ...]) -> None:
    """Horizontal bars, the first group on top, each with its value at its end: room for longer labels."""
    values = [g.node or 0.0 for g in groups]
    bars = ax.barh(range(len(groups)), values, 0.6, color=NODE_COLOUR)
    ax.bar_label(bars, labels=[value_text(v, panel.digits) for v in values], padding=2, fontsize=8)
    ax.set_yticks(range(len(groups)), [wrapped(g.label, 2 * LABEL_WIDTH) for g in groups], fontsize=8)
    ax.set_ylim(max(len(groups), 3) - 0.5, -0.5)  # the first group on top; a lone bar no thicker than one of three
    top = max(values)
    ax.set_xlim(0, top * 1.2 if top > 0 else 1)
    ax.set_xlabel(panel.unit, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def draw_panel(ax: Any, panel: Panel) -> None:
    groups = panel.shown()
    if panel.node_only:
        draw_node_only(ax, panel, groups)
    else:
        draw_pairs(ax, panel, groups)
    ax.set_title(panel.title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)


def write_chart(figures: Sequence[Panel], path: Path, title: str) -> Path | None:
    """Draw the panels that have values into a PNG at ``path``; None (nothing written) if matplotlib is not installed.

    Raises ValueError when no panel has a value.
    """
    shown = [p for p in figures if p.shown()]
    if not shown:
        raise ValueError("no figure was measured")
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
        from matplotlib.patches import Patch
    except ImportError:
        return None
    columns = min(COLUMNS, len(shown))
    rows = math.ceil(len(shown) / columns)
    fig, axes = pyplot.subplots(rows, columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows + 0.8), squeeze=False)
    try:
        for ax, panel in zip(axes.flat, shown, strict=False):
            draw_panel(ax, panel)
        for ax in list(axes.flat)[len(shown) :]:
            ax.set_visible(False)
        fig.suptitle(title, fontsize=12)
        fig.legend(
            handles=[
                Patch(color=NODE_COLOUR, label="node"),
                Patch(color=DIRECT_COLOUR, label="direct (the upstream alone)"),
            ],
            loc="upper center",
            bbox_to_anchor=(0.5, 0.955),
            ncol=2,
            fontsize=9,
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0, 1, 0.92))
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        pyplot.close(fig)
    return path
