"""What the status page's refresh costs the node: CPU per ``GET /status.json``, at 0 and at 1,000 held streams (issue 31).

The page (``GET /status``) asks ``/status.json`` every 2 s; issue 31 wants that to cost the node under 1 ms of CPU
a refresh while it holds 1,000 streams. This script starts the benchmark upstream and a node as ``make bench`` does
(``procs.start_node``: every feature on, LOG_LEVEL=INFO, no SERVICE_API_KEY, so /status.json needs no key; the node
on CPU 0, the upstream and this script on CPU 1), then measures, ``--rounds`` times in turn:

* a quiet window (``QUIET_SECONDS``): the node's utime+stime (``readings.cpu_seconds``) with nothing asked of it
  but the held streams' events, as a rate;
* ``--refreshes`` GETs of /status.json one after another on one keep-alive connection (a browser's tab keeps its
  connection), each answer read to its end and checked (200; ``in_flight.streams`` is the streams held); the
  node's CPU over them, less the quiet rate over their wall time, divided by the refreshes.

First with no stream held, then while ``load.hold_streams`` holds ``--streams`` slow streams (an event a second
each, as ``make bench``'s holds): the refreshes run in its ``during`` hook, every stream still open. The table
gives every round, the median, and the gross figure (nothing subtracted). A refresh takes a few hundred µs, so a
round needs many (1,000 by default): CLK_TCK's 10 ms on the ~0.3 s of node CPU they take is ±3 %; the median of
the rounds is the figure.

Every loop is bounded, all traffic is on loopback, every process is stopped by PID at the end.

    python bench/status_cost.py [--streams N] [--refreshes N] [--rounds N] [--variant node|gated|limits]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from load import hold_streams, stream_rounds
from phases import node_warnings
from plan import FD_RESERVE, HOST, NODE_VARIANTS, log
from procs import Processes, Service, run_measurement, start_node, start_upstream
from readings import cpu_seconds
from upstream import raise_fd_limit

STATUS_PATH = "/status.json"
QUIET_SECONDS = 2.0  # the quiet window before each round's refreshes
WARMUP = 50  # refreshes before the first round
ANSWER_TIMEOUT = 10.0  # seconds for one answer


@dataclass
class Round:
    """One round: the node's CPU per refresh (less the quiet rate, and gross), the quiet rate, what the answer said."""

    net_us: float
    gross_us: float
    quiet_percent: float
    streams_seen: int


async def refreshes(port: int, count: int) -> dict[str, Any]:
    """``count`` GETs of /status.json on one keep-alive connection; the last answer, decoded."""
    reader, writer = await asyncio.open_connection(HOST, port)
    request = f"GET {STATUS_PATH} HTTP/1.1\r\nHost: {HOST}\r\nAccept: application/json\r\n\r\n".encode()
    body = b""
    try:
        for _ in range(count):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_TIMEOUT)
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await asyncio.wait_for(reader.readexactly(length), ANSWER_TIMEOUT)
            if status != 200:
                raise RuntimeError(f"{STATUS_PATH} answered {status}: {body[:300]!r}")
    finally:
        writer.close()
    answer = json.loads(body)
    if not isinstance(answer, dict):
        raise RuntimeError(f"{STATUS_PATH} answered {body[:300]!r}")
    return answer


async def rounds(node: Service, count: int, number: int, held: int) -> list[Round]:
    """``number`` rounds of a quiet window and ``count`` refreshes, while ``held`` streams are open."""
    found = []
    for at in range(1, number + 1):
        cpu, wall = cpu_seconds(node.pid), time.monotonic()
        await asyncio.sleep(QUIET_SECONDS)
        quiet_rate = (cpu_seconds(node.pid) - cpu) / (time.monotonic() - wall)
        cpu, wall = cpu_seconds(node.pid), time.monotonic()
        answer = await refreshes(node.port, count)
        spent, took = cpu_seconds(node.pid) - cpu, time.monotonic() - wall
        node.check_alive()
        streams = int(answer.get("in_flight", {}).get("streams", -1))
        if streams != held:
            raise RuntimeError(f"{STATUS_PATH} says {streams} streams in flight, {held} are held")
        one = Round((spent - quiet_rate * took) / count * 1e6, spent / count * 1e6, 100 * quiet_rate, streams)
        log(f"{held:,} held, round {at}: {one.net_us:.0f} µs per refresh ({one.gross_us:.0f} gross; "
            f"{count} in {took:.2f} s; quiet {one.quiet_percent:.1f} % of a core)")
        found.append(one)
    return found


async def measure(procs: Processes, args: argparse.Namespace) -> dict[int, list[Round]]:
    upstream = await start_upstream(procs)
    extra = NODE_VARIANTS[args.variant][1] if args.variant != "node" else None
    node = await start_node(procs, upstream, args.streams + 100, extra=extra)
    log(f"upstream pid {upstream.pid} port {upstream.port}, node pid {node.pid} port {node.port} ({args.variant})")
    await stream_rounds(node.port, 1, 4, 2, 1)  # warm-up, as make bench's nodes get
    await refreshes(node.port, WARMUP)
    found = {0: await rounds(node, args.refreshes, args.rounds, 0)}
    kept: dict[int, list[Round]] = {}

    async def during() -> None:
        kept[args.streams] = await rounds(node, args.refreshes, args.rounds, args.streams)

    log(f"opening {args.streams:,} held streams")
    hold = await hold_streams(node.port, args.streams, 1.0, node, upstream, during)
    if hold.ok != args.streams or hold.failures.total():
        raise RuntimeError(f"{hold.ok:,} of {args.streams:,} streams held: {hold.failures.most_common(3)}")
    found.update(kept)
    for line in node_warnings(node):
        log(f"node: {line}")
    procs.stop(node.child)
    return found


def markdown(found: dict[int, list[Round]], refreshes_per_round: int) -> str:
    lines = [
        f"| streams held | rounds of {refreshes_per_round} refreshes (µs per refresh, less the quiet rate) | median "
        "| gross median (nothing subtracted) | node CPU while quiet | target |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for held, results in found.items():
        net = statistics.median(r.net_us for r in results)
        gross = statistics.median(r.gross_us for r in results)
        quiet = statistics.median(r.quiet_percent for r in results)
        target = ("< 1 ms: " + ("met" if net < 1000 else "**missed**")) if held >= 1000 else ""
        lines.append(
            f"| {held:,} | {', '.join(f'{r.net_us:.0f}' for r in results)} | {net:.0f} µs | {gross:.0f} µs "
            f"| {quiet:.1f} % | {target} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="CPU per GET /status.json, at 0 and at N held streams.")
    parser.add_argument("--streams", type=int, default=1000, help="streams held for the second set of rounds")
    parser.add_argument("--refreshes", type=int, default=1000, help="GETs of /status.json per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds at each number of streams")
    parser.add_argument("--variant", default="node", choices=["node", "gated", "limits"],
                        help="plain node or a bench/plan.py NODE_VARIANTS entry (limits: three providers' limits and keys)")
    args = parser.parse_args()
    if not (1 <= args.streams <= 10_000 and 10 <= args.refreshes <= 5000 and 1 <= args.rounds <= 50):
        parser.error("--streams 1-10000, --refreshes 10-5000, --rounds 1-50")
    fd_limit = raise_fd_limit(4 * args.streams + 4096)
    if fd_limit < 2 * args.streams + FD_RESERVE:
        parser.error(f"only {fd_limit} file descriptors allowed: at most {(fd_limit - FD_RESERVE) // 2:,} streams")
    code, found = run_measurement("mira-status-cost-", lambda procs: asyncio.run(measure(procs, args)))
    if found is None:
        return code
    print(markdown(found, args.refreshes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
