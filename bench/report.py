"""The report of a benchmark run: the markdown table, the notes under it, and the files in ``bench/results/``.

``save`` writes the table and, through ``chart.py``, the PNG chart beside it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from chart import panels, write_chart
from load import HoldResult, StreamStats
from phases import Measurements
from plan import (
    BENCH,
    EVENT_LOOP,
    FD_RESERVE,
    HOLD_INTERVAL_MS,
    JSON_CONNECTIONS,
    MESSAGES_ROUTES,
    MESSAGES_TARGETS,
    NODE_VARIANTS,
    OPENING_AT_ONCE,
    PACED_EVENTS,
    PACED_INTERVAL_MS,
    RELAY_EVENTS,
    RELAY_STREAMS,
    ROOT,
    STREAM_CHUNKS,
    STREAM_INTERVAL_MS,
    STREAMS_AT_ONCE,
    log,
)
from readings import percentile

RESULTS = BENCH / "results"


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "**missed**")


def ratio(node: float | None, direct: float | None) -> str:
    return f"{node / direct:.2f}×" if node is not None and direct else ""


def overhead(node: float | None, direct: float | None) -> str:
    return f"{node - direct:+.2f} ms" if node is not None and direct is not None else ""


def attr(obj: Any, name: str) -> Any:
    """``obj.name``, or None for a missing result."""
    return getattr(obj, name) if obj is not None else None


def held(hold: HoldResult | None) -> str:
    return f"{hold.ok:,}/{hold.count:,}" if hold else "n/a"


def count_failures(stats: StreamStats | None) -> str:
    return "n/a" if stats is None else f"{stats.failed}/{stats.streams}"


Row = tuple[str, str, str, str, str, str]


def row(figure: str, node: str, direct: str = "", compare: str = "", target: str = "", ok: bool | None = None) -> Row:
    return (figure, node, direct, compare, target, verdict(ok))


def ratio_row(
    figure: str, compared: tuple[float | None, str, float | None], unit: str = "", target: str = "", ok: bool | None = None,
    digits: int = 0,
) -> Row:
    """``compared`` is (value, the reference's name, the reference): the value, ``NAME: reference`` and their ratio."""
    value, name, reference = compared
    return row(figure, fmt(value, unit, digits), f"{name}: {fmt(reference, unit, digits)}", ratio(value, reference), target, ok)


# The Messages routes (plan.MESSAGES_ROUTES) as the table names them.
MESSAGES_LABELS = {
    "messages-relayed": "relayed to a Messages provider (anthropic/)",
    "messages-translated": "translated for a chat provider (openai/)",
}


def messages_rows(medians: dict[str, float | None], rounds: str) -> list[Row]:
    """CPU per /v1/messages request, relayed and translated, over a chat request's on the same node (issue 30)."""
    rows = []
    chat = medians.get("node")
    for name in MESSAGES_ROUTES:
        value, limit = medians.get(name), MESSAGES_TARGETS[name]
        rows.append(ratio_row(
            f"CPU per Messages request (/v1/messages, same body size), {MESSAGES_LABELS[name]} / a chat request, {rounds}",
            (value, "chat", chat), " µs", target=f"≤ {limit:g}×",
            ok=None if value is None or not chat else value / chat <= limit,
        ))
    return rows


def messages_event_rows(m: Measurements) -> list[Row]:
    """CPU per relayed stream event of the same streams asked of /v1/messages, over chat's, alternated rounds."""
    medians = {name: percentile(values, 50) for name, values in m.event_rounds.items()}
    rounds = f"medians of {m.plan.event_rounds} alternated rounds"
    return [
        ratio_row(f"CPU per stream event, Messages {MESSAGES_LABELS[name]} / chat, {rounds}",
                  (medians.get(name), "chat", medians.get("chat")), " µs", digits=1)
        for name in MESSAGES_ROUTES
    ]


def json_rows(m: Measurements) -> list[Row]:
    jn, jd = m.json.get("node"), m.json.get("direct")
    rps_n, rps_d = attr(jn, "rps"), attr(jd, "rps")
    rows = [
        row(f"JSON requests/s ({JSON_CONNECTIONS} connections)", fmt(rps_n, digits=0), fmt(rps_d, digits=0), ratio(rps_n, rps_d))
    ]
    for q in ("p50", "p99"):
        node_ms, direct_ms = attr(jn, f"{q}_ms"), attr(jd, f"{q}_ms")
        rows.append(row(f"JSON latency {q}", fmt(node_ms, " ms"), fmt(direct_ms, " ms"), ratio(node_ms, direct_ms)))
    errors = attr(jn, "errors")
    rows.append(
        row(
            "JSON errors (non-2xx, socket)",
            fmt(errors, digits=0),
            fmt(attr(jd, "errors"), digits=0),
            target="0",
            ok=None if errors is None else errors == 0,
        )
    )
    cpu = attr(jn, "cpu_us")
    rows.append(
        row(
            "CPU per JSON request (server process)",
            fmt(cpu, " µs", 0),
            fmt(attr(jd, "cpu_us"), " µs", 0),
            target="≤ 150 µs",
            ok=None if cpu is None else cpu <= 150,
        )
    )
    medians = {name: percentile([r.cpu_us for r in results if r.cpu_us is not None], 50) for name, results in m.rounds.items()}
    bare = medians.get("bare")
    rounds = f"medians of {m.plan.cpu_rounds} alternated rounds of {m.plan.cpu_seconds} s"
    node = medians.get("node")
    rows.append(
        ratio_row(
            f"CPU per JSON request: node / a bare Tornado handler (fixed POST), {rounds}",
            (node, "bare", bare),
            " µs",
            target="≤ 1.5×",
            ok=None if node is None or not bare else node / bare <= 1.5,
        )
    )
    rows += messages_rows(medians, rounds)
    for client, name in (("tornado", "Tornado's curl client"), ("node", "the node's transport")):
        floor = medians.get(f"floor-{client}")
        rows.append(
            ratio_row(
                f"CPU per JSON request: a bare Tornado handler proxying through {name} / the bare handler",
                (floor, "bare", bare),
                " µs",
            )
        )
    for name, (label, _) in NODE_VARIANTS.items():  # a feature a request does not use costs nothing; the others: stated
        rows.append(ratio_row(f"CPU per JSON request: {label} / node, {rounds}", (medians.get(name), "node", node), " µs",
                              target="within noise" if name == "gated" else ""))
    if "baseline" in medians:
        rows.append(ratio_row(f"CPU per JSON request: node / the BENCH_BASELINE checkout, {rounds}",
                              (node, "baseline", medians["baseline"]), " µs"))
    rps = {name: percentile([r.rps for r in results], 50) for name, results in m.rounds.items()}
    rps_w, rps_one = rps.get("workers"), rps.get("node")
    scale = rps_w / rps_one if rps_w is not None and rps_one else None
    rows.append(
        ratio_row(
            f"JSON requests/s with WORKERS=0 (unpinned) / one worker, {rounds}",
            (rps_w, "one", rps_one),
            target="≥ 1.8×",
            ok=None if scale is None else scale >= 1.8,
        )
    )
    cpu_w = medians.get("workers")
    rows.append(
        ratio_row(f"CPU per JSON request with WORKERS=0 (all its processes) / one worker, {rounds}", (cpu_w, "one", node), " µs")
    )
    return rows


def stream_rows(m: Measurements) -> list[Row]:
    sn, sd = m.streams.get("node"), m.streams.get("direct")
    label = f"{STREAMS_AT_ONCE} streams at once ({STREAM_CHUNKS} chunks {STREAM_INTERVAL_MS} ms apart): TTFB"
    rows = []
    for q, limit in ((50, 5.0), (99, None)):
        node_ms = percentile(sn.ttfb_ms, q) if sn else None
        direct_ms = percentile(sd.ttfb_ms, q) if sd else None
        ok = node_ms - direct_ms <= limit if limit is not None and node_ms is not None and direct_ms is not None else None
        target = f"overhead ≤ {limit:g} ms" if limit else ""
        rows.append(row(f"{label} p{q}", fmt(node_ms, " ms"), fmt(direct_ms, " ms"), overhead(node_ms, direct_ms), target, ok))
    coalesced_n = sn.coalesced_percent if sn else None
    coalesced_d = sd.coalesced_percent if sd else None
    rows.append(
        row(
            "chunks coalesced with their neighbour",
            fmt(coalesced_n, " %", 1),
            fmt(coalesced_d, " %", 1),
            target="0 %",
            ok=None if coalesced_n is None else sn.coalesced == 0,
        )
    )
    bn, bd, bb = (m.bursts.get(name) for name in ("node", "direct", "bare"))
    node_ms, direct_ms, bare_ms = (percentile(b, 50) if b else None for b in (bn, bd, bb))
    rows.append(
        row(
            f"{STREAMS_AT_ONCE} JSON requests at once: first byte p50 (the floor: a bare Tornado handler's)",
            fmt(node_ms, " ms"),
            fmt(direct_ms, " ms"),
            f"bare: {fmt(bare_ms, ' ms')}",
        )
    )
    pn, pd = m.paced.get("node"), m.paced.get("direct")
    rows.append(
        row(
            f"one stream at 1,000 events/s ({PACED_EVENTS:,} events {PACED_INTERVAL_MS:g} ms apart): chunks coalesced",
            fmt(pn.coalesced_percent if pn else None, " %", 1),
            fmt(pd.coalesced_percent if pd else None, " %", 1),
            target="0 %",
            ok=None if pn is None or not pn.events else pn.coalesced == 0 and pn.failed == 0,
        )
    )
    rows.append(
        row("stream failures", count_failures(sn), count_failures(sd), target="0", ok=None if sn is None else sn.failed == 0)
    )
    cpu_n, cpu_d = m.relay_cpu_us.get("node"), m.relay_cpu_us.get("direct")
    rows.append(
        row(
            f"CPU per relayed stream event ({RELAY_STREAMS} streams × {RELAY_EVENTS} events)",
            fmt(cpu_n, " µs", 1),
            fmt(cpu_d, " µs", 1),
            ratio(cpu_n, cpu_d),
        )
    )
    rows += messages_event_rows(m)
    an, ad = m.alone.get("node"), m.alone.get("direct")
    node_ms = percentile(an.ttfb_ms, 50) if an else None
    direct_ms = percentile(ad.ttfb_ms, 50) if ad else None
    ok = node_ms - direct_ms <= 0.5 if node_ms is not None and direct_ms is not None else None
    rows.append(
        row(
            "one stream alone: TTFB p50",
            fmt(node_ms, " ms"),
            fmt(direct_ms, " ms"),
            overhead(node_ms, direct_ms),
            "overhead ≤ 0.5 ms",
            ok,
        )
    )
    return rows


def capacity_rows(m: Measurements) -> list[Row]:
    rows = [
        row(f"RSS idle ({name})", fmt(mb, " MB", 1), target="≤ 50 MB" if judged else "", ok=mb <= 50 if judged else None)
        for name, mb, judged in m.rss_idle
    ]
    for count in sorted({m.plan.holds[0], m.plan.holds[-1]}):  # the counts between are in the scale table
        hn, hd = m.holds.get(("node", count)), m.holds.get(("direct", count))
        capped = f" (capped at {hn.count:,}: fd limit {m.fd_limit:,})" if hn and hn.count < count else ""
        all_ok = hn.ok == hn.count and not hn.failures.total() if hn else None
        rows.append(row(f"{count:,} slow streams held{capped}: open ok", held(hn), held(hd), target="all", ok=all_ok))
        limit_mb = 150 if count <= 1000 else 400
        rss = attr(hn, "rss_mb")
        rows.append(
            row(
                f"RSS holding {count:,} streams",
                fmt(rss, " MB", 1),
                target=f"≤ {limit_mb} MB",
                ok=None if rss is None else rss <= limit_mb,
            )
        )
        rows.append(
            row(
                f"CPU holding {count:,} streams (an event every {HOLD_INTERVAL_MS / 1000:g} s each)",
                fmt(attr(hn, "cpu_percent"), " %", 1),
                fmt(attr(hd, "cpu_percent"), " %", 1),
            )
        )
    return rows


def abort_rows(m: Measurements) -> list[Row]:
    bn, bd = m.abort.get("node"), m.abort.get("direct")
    rows = []
    for q, name in ((50, "p50"), (100, "max")):
        node_ms = percentile(bn.delays_ms, q) if bn else None
        direct_ms = percentile(bd.delays_ms, q) if bd else None
        ok = node_ms <= 50 and not bn.failures if bn and node_ms is not None else None
        rows.append(
            row(
                f"abort: client gone → upstream closed, {name}",
                fmt(node_ms, " ms"),
                fmt(direct_ms, " ms"),
                target="≤ 50 ms",
                ok=ok,
            )
        )
    return rows


def render_table(m: Measurements) -> str:
    """The markdown table, its columns padded so that it also reads well in a terminal."""
    header = ("figure", "node", "direct", "node vs direct", "target", "")
    table = [header, *json_rows(m), *stream_rows(m), *capacity_rows(m), *abort_rows(m)]
    return padded_table(table)


def padded_table(table: list[tuple[str, ...]]) -> str:
    """Markdown rows (the first is the header), padded so that they also read well in a terminal."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for n, cells in enumerate(table):
        padded = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(cells)]
        lines.append("| " + " | ".join(padded) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


# Targets of the scale curve (issue 24), the largest hold against the smallest.
SCALE_OPEN_GROWTH = 1.25  # CPU to open one stream
SCALE_EVENT_GROWTH = 1.25  # CPU per relayed event while holding
SCALE_EVENT_OVER_DENSE = 1.5  # ... against the 20-stream relay figure
SCALE_P99_OVER_DIRECT = 5.0  # first event p99 while opening, node over direct


def scale_table(m: Measurements) -> str:
    """Cost per stream against streams held, node and direct: one row per hold, then the growth and its targets."""
    header = ("streams held", "CPU to open one stream", "(less events relayed meanwhile)", "CPU per relayed event",
              "first event p50", "first event p99", "RSS", "RSS per stream")
    table = [header]
    idle = next((mb for _, mb, _ in m.rss_idle), None)
    for count in m.plan.holds:
        hn, hd = m.holds.get(("node", count)), m.holds.get(("direct", count))
        held_text = f"{hn.count:,}" if hn is not None else f"{count:,}"
        rss = attr(hn, "rss_mb")
        per_stream = (rss - idle) * 1024 / hn.ok if rss is not None and idle is not None and hn and hn.ok else None
        table.append((
            held_text,
            f"{fmt(attr(hn, 'open_cpu_ms'), ' ms', 2)} / {fmt(attr(hd, 'open_cpu_ms'), ' ms', 2)}",
            f"{fmt(attr(hn, 'open_net_cpu_ms'), ' ms', 2)} / {fmt(attr(hd, 'open_net_cpu_ms'), ' ms', 2)}",
            f"{fmt(attr(hn, 'event_cpu_us'), ' µs', 1)} / {fmt(attr(hd, 'event_cpu_us'), ' µs', 1)}",
            f"{fmt(percentile(hn.first_event_ms, 50) if hn else None, ' ms', 1)} / "
            f"{fmt(percentile(hd.first_event_ms, 50) if hd else None, ' ms', 1)}",
            f"{fmt(percentile(hn.first_event_ms, 99) if hn else None, ' ms', 1)} / "
            f"{fmt(percentile(hd.first_event_ms, 99) if hd else None, ' ms', 1)}",
            fmt(rss, " MB", 1),
            fmt(per_stream, " KB", 1),
        ))
    return padded_table(table) + "\n\n" + "\n".join(f"- {line}" for line in scale_verdicts(m))


def scale_verdicts(m: Measurements) -> list[str]:
    """The growth from the smallest hold to the largest, against the targets of issue 24."""
    first, last = m.plan.holds[0], m.plan.holds[-1]
    small, large = m.holds.get(("node", first)), m.holds.get(("node", last))
    direct = m.holds.get(("direct", last))
    lines = [
        f"Each cell is node / direct. CPU to open one stream: the server's CPU time while the streams were being opened "
        f"({OPENING_AT_ONCE} at a time), over the streams opened; the events relayed meanwhile to the streams "
        "already open are in it, and the next column takes them out at the window's CPU per event. CPU per relayed event: "
        f"the server's CPU time over the {m.plan.hold_window:g} s window, over the events the clients received in it "
        "(an event a second per stream). First event: request sent → first event, while opening. RSS per stream: "
        "(RSS holding − RSS idle) / streams held."
    ]
    if first == last or small is None or large is None:
        return lines
    held = f"{first:,} → {large.count:,} streams"

    def grown(a: float | None, b: float | None) -> float | None:
        return b / a if a and b is not None else None

    def judged(text: str, value: float | None, limit: float) -> str:
        return f"{text} {fmt(value, '×', 2)} (target ≤ {limit:g}×: {verdict(None if value is None else value <= limit)})"

    dense = m.relay_cpu_us.get("node")
    p99 = percentile(large.first_event_ms, 99)
    p99_direct = percentile(direct.first_event_ms, 99) if direct else None
    lines += [
        judged(f"CPU to open one stream, {held}:", grown(small.open_cpu_ms, large.open_cpu_ms), SCALE_OPEN_GROWTH)
        + f"; less the events relayed meanwhile {fmt(grown(small.open_net_cpu_ms, large.open_net_cpu_ms), '×', 2)}.",
        judged(f"CPU per relayed event while holding, {held}:", grown(small.event_cpu_us, large.event_cpu_us),
               SCALE_EVENT_GROWTH)
        + "; "
        + judged(f"against the dense figure ({RELAY_STREAMS} streams, {fmt(dense, ' µs', 1)}):",
                 grown(dense, large.event_cpu_us), SCALE_EVENT_OVER_DENSE) + ".",
        judged(f"First event p99 while opening {large.count:,}, node / direct:", grown(p99_direct, p99), SCALE_P99_OVER_DIRECT)
        + ".",
    ]
    return lines


def hold_notes(m: Measurements) -> list[str]:
    notes = []
    for (name, asked), hold in sorted((k, v) for k, v in m.holds.items() if v is not None):
        cpu = f"{hold.server} process at {fmt(hold.open_cpu_percent, ' %', 0)} of a core"
        first = hold.first_event_ms
        ttfb = f"first event p50 {fmt(percentile(first, 50), ' ms', 1)}, p99 {fmt(percentile(first, 99), ' ms', 1)}"
        notes.append(
            f"Holding {hold.count:,} streams, {name}: opened in {hold.open_seconds:.1f} s ({cpu}; {ttfb}); "
            f"{hold.stalled} got no event in the {m.plan.hold_window:g} s window; every upstream stream closed "
            f"{fmt(hold.release_seconds, ' s', 1)} after the clients disconnected."
        )
        notes += [f"Holding {hold.count:,} streams, {name}: {n} × {message}" for message, n in hold.failures.most_common(5) if n]
        if hold.count < asked:
            notes.append(
                f"The file-descriptor hard limit here is {m.fd_limit:,} and could not be raised; a node holding a stream uses "
                f"two descriptors (client and upstream sockets), so it was given ({m.fd_limit:,} - {FD_RESERVE}) / 2 streams."
            )
    return notes


def describe_notes(m: Measurements, use_wrk: bool, pinned: bool) -> list[str]:
    """The lines under the table: method, load on each core, failures with their text, the node's own output."""
    tool = "wrk" if use_wrk else "the asyncio client (wrk not found)"
    notes = [
        f"JSON: {tool}, {JSON_CONNECTIONS} connections, {m.plan.json_seconds} s after a {m.plan.json_warmup} s warm-up, "
        "~1 KB request body (bench/post.lua); CPU per request is the server process's utime+stime over the run / requests."
    ]
    for name in ("node", "direct"):
        result = m.json.get(name)
        if result and result.busy:
            processes = ", ".join(f"{n} process {v:.0f} %" for n, v in result.process_cpu.items())
            notes.append(
                f"CPU during the {name} JSON run: {processes} of one core; machine-wide (anything else running "
                f"included) CPU 0 {fmt(result.busy.get(0), ' %', 0)} busy, CPU 1 {fmt(result.busy.get(1), ' %', 0)}."
            )
        if result and result.detail and result.errors:
            notes.append(f"JSON errors, {name}: {result.detail}")
    workers = m.json.get("workers")
    if workers and workers.busy:
        notes.append(
            f"CPU during the WORKERS=0 JSON run: CPU 0 {fmt(workers.busy.get(0), ' %', 0)} busy, CPU 1 "
            f"{fmt(workers.busy.get(1), ' %', 0)}, the upstream process {workers.process_cpu.get('upstream', 0):.0f} % of a "
            "core: the workers share the two cores with wrk and the upstream, and have what those leave."
        )
    if any(m.rounds.values()):
        labels = {"node": "node", "workers": "WORKERS=0 node", "bare": "bare handler",
                  "floor-tornado": "proxy via Tornado's client", "floor-node": "proxy via the node's transport",
                  "baseline": "BENCH_BASELINE node", **{name: label for name, (label, _) in NODE_VARIANTS.items()},
                  **{name: f"node, Messages {label}" for name, label in MESSAGES_LABELS.items()}}
        cpu = "; ".join(
            f"{labels.get(name, name)} {', '.join(fmt(r.cpu_us, digits=0) for r in results)}"
            for name, results in m.rounds.items()
            if name != "workers"
        )
        rps = "; ".join(f"{labels.get(n, n)} {', '.join(fmt(r.rps, digits=0) for r in m.rounds[n])}" for n in ("workers", "node"))
        cpu += f"; WORKERS=0 node (its workers' CPU) {', '.join(fmt(r.cpu_us, digits=0) for r in m.rounds['workers'])}"
        p50 = "; ".join(
            f"{labels.get(name, name)} {', '.join(fmt(r.p50_ms, digits=2) for r in results)}"
            for name, results in m.rounds.items()
            if name not in ("workers", "bare")
        )
        notes.append(
            f"JSON rounds ({m.plan.cpu_rounds} rounds of wrk {m.plan.cpu_seconds} s on each server in turn; all on CPU 0 "
            f"but the WORKERS=0 node): CPU per request (µs) {cpu}. Requests/s: {rps}. Latency p50 (ms, 64 connections):"
            f" {p50}."
        )
    if any(m.event_rounds.values()):
        events = "; ".join(f"{name} {', '.join(f'{v:.1f}' for v in values)}" for name, values in m.event_rounds.items())
        notes.append(
            f"Stream events, chat and Messages ({m.plan.event_rounds} alternated rounds of {RELAY_STREAMS} streams × "
            f"{RELAY_EVENTS} events on the node): CPU µs per event the clients received (a Messages stream brings "
            f"{', '.join(f'{extra} ({name})' for name, (_, extra) in MESSAGES_ROUTES.items())} events more than its "
            f"chunks, chat's 1) {events}."
        )
    for name, stats in (
        ("node", m.streams.get("node")),
        ("direct", m.streams.get("direct")),
        ("node alone", m.alone.get("node")),
    ):
        notes += [f"Stream failures, {name}: {n} × {message}" for message, n in (stats.failures.most_common(5) if stats else [])]
    notes += hold_notes(m)
    for name, stats in m.abort.items():
        notes += [f"Abort, {name}: {n} × {message}" for message, n in (stats.failures.most_common(3) if stats else [])]
    if not pinned:
        notes.append("Processes were not pinned (fewer than 2 CPUs): figures are less stable.")
    notes += m.notes
    if m.node_log:
        notes.append("Node output (LOG_LEVEL=WARNING):")
        notes += [f"    {line}" for line in m.node_log]
    return notes


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + (" (with uncommitted changes)" if dirty else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(m: Measurements, use_wrk: bool, pinned: bool, when: datetime) -> str:
    header = [
        f"# Benchmark, {m.plan.name} ({when:%Y-%m-%d %H:%M:%S})",
        "",
        f"Commit {git_revision()}; Python {platform.python_version()}; {os.cpu_count()} × {cpu_model()}; "
        f"node pinned to CPU 0, upstream and load generator to CPU 1; one worker process; event loop {EVENT_LOOP};"
        f" run took {m.seconds:.0f} s.",
        "'direct' is the benchmark upstream (bench/upstream.py) measured alone in the same run.",
        "",
        "",
    ]
    notes = describe_notes(m, use_wrk, pinned)
    scale = "\n\n## Scale: cost per stream against streams held\n\n" + scale_table(m) if any(m.holds.values()) else ""
    return (
        "\n".join(header) + render_table(m) + "\n\n" + "\n".join(n if n.startswith("    ") else f"- {n}" for n in notes)
        + scale + "\n"
    )


def save(text: str, m: Measurements, when: datetime) -> Path:
    """The table as markdown and the chart as PNG, each as a timestamped file and ``latest``; the chart never fails the run."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{when:%Y%m%d-%H%M%S}-{m.plan.name}.md"
    path.write_text(text)
    (RESULTS / "latest.md").write_text(text)
    log(f"written to {path.relative_to(ROOT)} and bench/results/latest.md")
    latest_chart = RESULTS / "latest.png"
    latest_chart.unlink(missing_ok=True)  # beside latest.md, never the chart of an earlier run
    title = f"Benchmark, {m.plan.name} ({when:%Y-%m-%d %H:%M:%S}), commit {git_revision()}"
    try:
        chart = write_chart(panels(m), path.with_suffix(".png"), title)
    except Exception as exc:  # a chart that cannot be drawn is reported, the table stands
        log(f"chart skipped: {exc.__class__.__name__}: {exc}")
        return path
    if chart is None:
        log("chart skipped: matplotlib is not installed (`make install` and `make bench` install requirements-dev.txt)")
    else:
        shutil.copyfile(chart, latest_chart)
        log(f"chart written to {chart.relative_to(ROOT)} and bench/results/latest.png")
    return path
