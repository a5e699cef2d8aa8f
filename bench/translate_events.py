"""CPU per stream event, relayed and translated: the same streams to ``openai/`` and to ``anthropic/``, one node.

``make bench``'s "CPU per relayed stream event" (``load.relay_cpu``: 20 streams of 400 events 2 ms apart, the
serving process's utime+stime over the events the clients received), measured for two models on one node in
alternated rounds: ``openai/gpt-4o-mini``, whose chat stream the node relays as it comes (bytes, with the usage
watcher), and ``anthropic/gpt-4o-mini``, whose request goes to the benchmark upstream's ``/messages`` and whose
Messages stream (``message_start``, ``content_block_start``, ``ping``, a ``content_block_delta`` per text event,
``content_block_stop``, ``message_delta``, ``message_stop``: the same text events at the same pace,
``bench/upstream.py``) the node translates back to chat event by event. A chat stream of N chunks brings the
client N + 1 events (N - 1 text, the finish chunk, ``[DONE]``); the translated one N + 2 (the role chunk
first): the figure is the node's CPU over the events the clients received, as ``relay_cpu``'s is. A round
measures each model once, in turn, then the upstream alone (its own CPU per chat event, for scale); the table
gives every round and the medians.

CPU time read from ``/proc`` moves 10-20 % between rounds on a shared machine. ``--instructions`` adds a figure
it hardly moves: for each model, the node under ``valgrind --tool=callgrind`` (as ``bench/instructions.py`` runs
it) serves one stream of 200 chunks 10 ms apart in one run and one of 1,000 in another (after the same
warm-up); the difference of the two runs' totals over the difference of the events the client received is the
instructions of one event, the stream's set-up, start-up and shutdown cancelling out. One stream at that pace
brings every event in a loop turn of its own, so the figure is the whole turn's (epoll wake-up, libcurl,
the relay, the write), and repeats within 0.5 %; ten streams at once, whose events share turns as often as
valgrind's slowness lets them, moved 10 % between runs.

The node runs on CPU 0, the upstream and this script on CPU 1, as in ``make bench``; every process is stopped
by PID at the end.

    python bench/translate_events.py [--rounds N] [--streams N] [--events N] [--interval-ms MS] [--tree DIR]
                                     [--instructions]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

from instructions import COLLECTED, STOP_GRACE, start
from load import StreamStats, stream_rounds
from phases import node_warnings
from plan import MODEL, RELAY_EVENTS, RELAY_INTERVAL_MS, RELAY_STREAMS, TRANSLATED_MODEL, log
from procs import Processes, Service, node_env, run_measurement, start_node, start_upstream
from readings import cpu_seconds

MODELS = {MODEL: 1, TRANSLATED_MODEL: 2}  # model -> events a stream brings beyond its chunks
CG_STREAMS, CG_CHUNKS, CG_INTERVAL_MS = 1, (200, 1000), 10.0  # --instructions: two runs, the stream's chunks differ


async def per_event(server: Service, port: int, args: argparse.Namespace, model: str, extra: int) -> tuple[float, StreamStats]:
    """The server's CPU µs per event the clients received, for ``args.streams`` streams of ``args.events`` chunks."""
    before = cpu_seconds(server.pid)
    stats = await stream_rounds(port, 1, args.streams, args.events, args.interval_ms, model=model, expected=args.events + extra)
    spent = cpu_seconds(server.pid) - before
    server.check_alive()
    if not stats.events:
        raise RuntimeError(f"{model}: no event reached the clients ({dict(stats.failures)})")
    return spent / stats.events * 1e6, stats


async def measure(procs: Processes, args: argparse.Namespace) -> tuple[dict[str, list[float]], dict[str, StreamStats]]:
    upstream = await start_upstream(procs)
    node = await start_node(procs, upstream, args.streams + 50, tree=str(args.tree))
    log(f"upstream pid {upstream.pid} port {upstream.port}, node pid {node.pid} port {node.port} ({args.tree})")
    for model, extra in MODELS.items():  # warm-up: both paths loaded and run once
        await stream_rounds(node.port, 1, 4, 20, 1, model=model, expected=20 + extra)
    figures: dict[str, list[float]] = {name: [] for name in (*MODELS, "direct")}
    totals: dict[str, StreamStats] = {name: StreamStats() for name in figures}
    for number in range(1, args.rounds + 1):
        for model, extra in MODELS.items():
            micros, stats = await per_event(node, node.port, args, model, extra)
            log(f"round {number}: {model}: {micros:.1f} µs per event ({stats.events:,} events)")
            figures[model].append(micros)
            merge(totals[model], stats)
        micros, stats = await per_event(upstream, upstream.port, args, MODEL, 1)
        log(f"round {number}: direct: {micros:.1f} µs per event")
        figures["direct"].append(micros)
        merge(totals["direct"], stats)
    for line in node_warnings(node):
        log(f"node: {line}")
    procs.stop(node.child)
    return figures, totals


async def instructions(procs: Processes, tree: Path) -> dict[str, float]:
    """Per model: the node's instructions per event the clients received, from two callgrind runs."""
    upstream = await start_upstream(procs)
    env = node_env(upstream.port, CG_STREAMS + 50)
    per: dict[str, float] = {}
    for model, extra in MODELS.items():
        counts = []
        for chunks in CG_CHUNKS:
            log(f"{model}: callgrind, {CG_STREAMS} stream(s) of {chunks} chunks")
            node = await start(procs, tree, env, valgrind=True)
            try:
                await stream_rounds(node.port, 1, 4, 20, 1, model=model, expected=20 + extra)
                stats = await stream_rounds(
                    node.port, 1, CG_STREAMS, chunks, CG_INTERVAL_MS, model=model, expected=chunks + extra
                )
            finally:
                procs.stop(node.child, grace=STOP_GRACE)
            if stats.failed:
                raise RuntimeError(f"{model}: {dict(stats.failures)}")
            match = COLLECTED.search(node.child.log_path.read_text(errors="replace") if node.child.log_path else "")
            if not match:
                raise RuntimeError(f"no 'Collected' line from valgrind:\n{node.log_tail()}")
            counts.append((int(match.group(1)), stats.events))
        (small, small_events), (big, big_events) = counts
        per[model] = (big - small) / (big_events - small_events)
        log(f"{model}: totals {small:,} ({small_events:,} events) and {big:,} ({big_events:,}): {per[model]:,.0f} per event")
    procs.stop(upstream.child)
    return per


def merge(total: StreamStats, stats: StreamStats) -> None:
    total.streams += stats.streams
    total.events += stats.events
    total.coalesced += stats.coalesced
    total.failures.update(stats.failures)


def markdown(figures: dict[str, list[float]], totals: dict[str, StreamStats]) -> str:
    relayed = statistics.median(figures[MODEL])
    labels = {MODEL: f"{MODEL} (relayed)", TRANSLATED_MODEL: f"{TRANSLATED_MODEL} (translated)", "direct": "upstream alone, chat"}
    lines = [
        "| stream to | rounds (µs per event) | median | / relayed | events | coalesced | failures |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, values in figures.items():
        middle = statistics.median(values)
        stats = totals[name]
        failures = "; ".join(f"{n} × {what}" for what, n in stats.failures.items()) or "none"
        ratio = f"{middle / relayed:.2f}×" if relayed else "n/a"  # a run too short to measure any CPU
        lines.append(
            f"| {labels[name]} | {', '.join(f'{v:.1f}' for v in values)} | {middle:.1f} µs | {ratio} "
            f"| {stats.events:,} | {stats.coalesced_percent or 0:.1f} % | {failures} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="CPU per stream event: relayed (openai/) and translated (anthropic/).")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds (each model once per round)")
    parser.add_argument("--streams", type=int, default=RELAY_STREAMS, help="streams at once")
    parser.add_argument("--events", type=int, default=RELAY_EVENTS, help="chunks per stream")
    parser.add_argument("--interval-ms", type=float, default=RELAY_INTERVAL_MS, help="between a stream's chunks")
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent, help="the node's checkout")
    parser.add_argument("--instructions", action="store_true", help="also instructions per event under callgrind")
    args = parser.parse_args()
    if not (1 <= args.rounds <= 50 and 1 <= args.streams <= 1000 and 2 <= args.events <= 100_000):
        parser.error("--rounds 1-50, --streams 1-1000, --events 2-100000")
    def work(procs: Processes) -> tuple[dict[str, list[float]], dict[str, StreamStats], dict[str, float]]:
        figures, totals = asyncio.run(measure(procs, args))
        counted = asyncio.run(instructions(procs, args.tree.resolve())) if args.instructions else {}
        return figures, totals, counted

    code, found = run_measurement("mira-translate-events-", work)
    if found is None:
        return code
    figures, totals, counted = found
    print(markdown(figures, totals))
    if counted:
        print("\n| stream to | instructions per event (callgrind) | / relayed |\n| --- | ---: | ---: |")
        for model, count in counted.items():
            print(f"| {model} | {count:,.0f} | {count / counted[MODEL]:.3f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
