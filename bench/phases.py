"""The phases of one benchmark run, in order, and ``Measurements``: everything the run measured.

The upstream starts first; the alternated JSON rounds (node, its Messages
requests relayed and translated, WORKERS=0 node, bare handler, floors) come
next, then every figure straight against the upstream, then the same through
a node, then the larger holds. A phase that fails is noted in the report and
the run goes on.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from clients import MESSAGES_PATH
from load import (
    AbortStats,
    HoldResult,
    JsonLoad,
    JsonResult,
    StreamStats,
    abort_trials,
    hold_streams,
    json_bursts,
    messages_request,
    paced_stream,
    relay_cpu,
    stream_alone,
    stream_rounds,
)
from plan import (
    BASELINE,
    FD_RESERVE,
    HOST,
    JSON_CONNECTIONS,
    MESSAGES_ROUTES,
    NODE_VARIANTS,
    REDIS_URL_SLOT,
    STREAM_CHUNKS,
    STREAM_INTERVAL_MS,
    STREAMS_AT_ONCE,
    Plan,
    log,
)
from procs import Processes, Service, start_bare, start_floor, start_node, start_redis, start_upstream
from readings import rss_mb


@dataclass
class Measurements:
    """Everything one run measured; None where a phase failed."""

    plan: Plan
    json: dict[str, JsonResult | None] = field(default_factory=dict)
    streams: dict[str, StreamStats | None] = field(default_factory=dict)
    alone: dict[str, StreamStats] = field(default_factory=dict)
    abort: dict[str, AbortStats | None] = field(default_factory=dict)
    relay_cpu_us: dict[str, float | None] = field(default_factory=dict)  # CPU per relayed stream event
    paced: dict[str, StreamStats | None] = field(default_factory=dict)  # one stream at 1,000 events/s
    bursts: dict[str, list[float] | None] = field(default_factory=dict)  # 50 JSON requests at once: ms to first byte
    rounds: dict[str, list[JsonResult]] = field(default_factory=dict)  # the alternated JSON rounds, per server (or route)
    event_rounds: dict[str, list[float]] = field(default_factory=dict)  # CPU µs per event: chat, Messages, alternated
    rss_idle: list[tuple[str, float, bool]] = field(default_factory=list)  # (label, MB, judged against the target)
    holds: dict[tuple[str, int], HoldResult | None] = field(default_factory=dict)  # (target, streams asked for)
    fd_limit: int = 0
    notes: list[str] = field(default_factory=list)
    node_log: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Bench:
    """The phases of one run: the upstream alone first, then through the node."""

    def __init__(self, plan: Plan, procs: Processes, use_wrk: bool, fd_limit: int) -> None:
        self.plan = plan
        self.procs = procs
        self.load = JsonLoad(procs, use_wrk)
        self.m = Measurements(plan, fd_limit=fd_limit)

    async def step(self, name: str, work: Callable[[], Awaitable[Any]]) -> Any:
        """Run one phase; a failure is noted in the report and the run goes on."""
        log(name)
        try:
            return await work()
        except Exception as exc:  # the report says what went wrong
            self.m.notes.append(f"**{name} failed**: {exc.__class__.__name__}: {exc}")
            log(f"{name} FAILED: {exc}")
            return None

    async def run(self, rounds_only: bool = False) -> Measurements:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        started = time.monotonic()
        upstream = await start_upstream(self.procs)
        log(f"upstream on port {upstream.port} (pid {upstream.pid})")
        # Throughput figures first: the held streams of the later phases leave the upstream busy for a while.
        await self.cpu_comparison(upstream)
        if rounds_only:
            self.m.seconds = time.monotonic() - started
            return self.m
        await self.direct(upstream)
        await self.through_node(upstream)
        for count in self.plan.holds[1:]:
            await self.big_hold(upstream, count)
        self.m.seconds = time.monotonic() - started
        return self.m

    async def streams(self, port: int, rounds: int) -> StreamStats:
        return await stream_rounds(port, rounds, STREAMS_AT_ONCE, STREAM_CHUNKS, STREAM_INTERVAL_MS)

    async def direct(self, upstream: Service) -> None:
        """Every figure straight against the upstream: it must not be what limits the node's."""
        m, plan, port = self.m, self.plan, upstream.port
        m.json["direct"] = await self.step(
            "JSON, direct", lambda: self.load.measure(upstream, plan.json_seconds, plan.json_warmup)
        )
        await self.step("streams warm-up, direct", lambda: self.streams(port, 1))
        m.streams["direct"] = await self.step("50 streams, direct", lambda: self.streams(port, plan.stream_rounds))
        m.relay_cpu_us["direct"] = await self.step("relayed events, direct", lambda: relay_cpu(port, upstream))
        m.paced["direct"] = await self.step("1,000 events/s, direct", lambda: paced_stream(port))
        m.bursts["direct"] = await self.step("JSON bursts, direct", lambda: json_bursts(port, plan.stream_rounds))
        m.abort["direct"] = await self.step("abort, direct", lambda: abort_trials(port, upstream, plan.abort_trials, "direct"))
        for count in plan.holds:
            m.holds[("direct", count)] = await self.step(
                f"hold {count:,} streams, direct", lambda c=count: hold_streams(port, c, plan.hold_window, upstream, upstream)
            )

    async def through_node(self, upstream: Service) -> None:
        """The same figures through a node whose limits fit the first hold."""
        m, plan = self.m, self.plan
        limit = max(plan.holds[0], JSON_CONNECTIONS) + 50
        node = await self.start_node(upstream, limit)
        port = node.port
        m.rss_idle.append((f"limits {limit:,}", rss_mb(node.pid), True))
        m.json["node"] = await self.step(
            "JSON, node", lambda: self.load.measure(node, plan.json_seconds, plan.json_warmup, [upstream])
        )
        await self.step("streams warm-up, node", lambda: self.streams(port, 1))
        m.streams["node"] = await self.step("50 streams, node", lambda: self.streams(port, plan.stream_rounds))
        m.relay_cpu_us["node"] = await self.step("relayed events, node", lambda: relay_cpu(port, node))
        m.event_rounds = await self.step("relayed events: chat and Messages, alternated", lambda: self.event_rounds(node)) or {}
        m.paced["node"] = await self.step("1,000 events/s, node", lambda: paced_stream(port))
        m.bursts["node"] = await self.step("JSON bursts, node", lambda: json_bursts(port, plan.stream_rounds))
        targets = {"node": port, "direct": upstream.port}
        m.alone.update(
            await self.step("one stream alone, node and direct", lambda: stream_alone(targets, plan.alone_trials)) or {}
        )
        m.abort["node"] = await self.step("abort, node", lambda: abort_trials(port, upstream, plan.abort_trials, "node"))
        count = plan.holds[0]
        m.holds[("node", count)] = await self.step(
            f"hold {count:,} streams, node", lambda: hold_streams(port, count, plan.hold_window, node, upstream)
        )
        if node.proc.poll() is None:
            await asyncio.sleep(1)
            m.rss_idle.append((f"limits {limit:,}, after the run", rss_mb(node.pid), False))
        self.stop_node(node)

    async def cpu_comparison(self, upstream: Service) -> None:
        """JSON runs of the node, a WORKERS=0 node, the bare handler and the two floors, in alternated rounds.

        All but the WORKERS=0 node run side by side on CPU 0 (it may use both cores), idle but for the one wrk
        loads, in turn, ``cpu_rounds`` times: a machine whose load changes during the run then moves every
        figure of a round alike, and the medians compare. The bare handler's JSON burst is measured here too.
        """
        plan, procs = self.plan, self.procs
        servers = {
            "node": await start_node(procs, upstream, JSON_CONNECTIONS + 50),
            "workers": await start_node(procs, upstream, JSON_CONNECTIONS + 50, workers=0),
            "bare": await start_bare(procs),
        }
        redis = None
        for name, (_, extra) in NODE_VARIANTS.items():
            if REDIS_URL_SLOT in extra.values():
                redis = redis or await start_redis(procs)
                if redis is None:
                    log(f"redis-server is not installed: the {name} variant is left out")
                    continue
                extra = {k: f"redis://{HOST}:{redis.port}/0" if v == REDIS_URL_SLOT else v for k, v in extra.items()}
            servers[name] = await start_node(procs, upstream, JSON_CONNECTIONS + 50, extra=extra)
        if BASELINE:
            servers["baseline"] = await start_node(procs, upstream, JSON_CONNECTIONS + 50, tree=BASELINE)
        for client in ("tornado", "node"):
            servers[f"floor-{client}"] = await start_floor(procs, upstream, client)
        # The node's Messages requests (relayed, translated) take their turns right after its chat requests.
        loads = {"node": (servers["node"], None), **{name: (servers["node"], messages_request(name)) for name in MESSAGES_ROUTES}}
        loads.update((name, (server, None)) for name, server in servers.items() if name != "node")
        rounds: dict[str, list[JsonResult]] = {name: [] for name in loads}
        for number in range(1, plan.cpu_rounds + 1):
            for name, (server, request) in loads.items():
                result = await self.step(
                    f"JSON round {number}: {name}",
                    lambda s=server, r=request: self.load.measure(s, plan.cpu_seconds, 1, [upstream], r),
                )
                if result is not None:
                    rounds[name].append(result)
        self.m.rounds = rounds
        if rounds["workers"]:
            self.m.json["workers"] = rounds["workers"][-1]  # for the note on how busy the cores were
        self.m.bursts["bare"] = await self.step(
            "JSON bursts, bare Tornado handler", lambda: json_bursts(servers["bare"].port, plan.stream_rounds)
        )
        for name, server in servers.items():
            if name in ("node", "workers", "baseline", *NODE_VARIANTS):
                self.stop_node(server)
            else:
                procs.stop(server.child)
        if redis is not None:
            procs.stop(redis.child)

    async def event_rounds(self, node: Service) -> dict[str, list[float]]:
        """CPU per relayed stream event of chat's streams and of the same asked of /v1/messages, in alternated rounds."""
        for model, extra in MESSAGES_ROUTES.values():  # warm-up: both Messages paths loaded and run once
            await stream_rounds(node.port, 1, 4, 20, 1, model, 20 + extra, MESSAGES_PATH)
        figures: dict[str, list[float]] = {"chat": [], **{name: [] for name in MESSAGES_ROUTES}}
        for number in range(1, self.plan.event_rounds + 1):
            for name, values in figures.items():
                micros = await relay_cpu(node.port, node, "" if name == "chat" else name)
                node.check_alive()
                log(f"relayed events round {number}: {name} {micros or 0:.1f} µs per event")
                if micros is not None:
                    values.append(micros)
        return figures

    async def big_hold(self, upstream: Service, count: int) -> None:
        """A fresh node with limits for ``count`` streams, holding as many as its descriptors allow."""
        fit = min(count, (self.m.fd_limit - FD_RESERVE) // 2)  # each stream holds two of the node's descriptors
        limit = count + 100
        node = await self.start_node(upstream, limit)
        self.m.rss_idle.append((f"limits {limit:,}", rss_mb(node.pid), False))
        self.m.holds[("node", count)] = await self.step(
            f"hold {fit:,} streams, node", lambda: hold_streams(node.port, fit, self.plan.hold_window, node, upstream)
        )
        self.stop_node(node)

    async def start_node(self, upstream: Service, limit: int) -> Service:
        node = await start_node(self.procs, upstream, limit)
        log(f"node on port {node.port} (pid {node.pid}), limits {limit}")
        await self.step("node warm-up", lambda: stream_rounds(node.port, 1, 4, 2, 1))
        return node

    def stop_node(self, node: Service) -> None:
        self.m.node_log += node_warnings(node)
        self.procs.stop(node.child)


def node_warnings(node: Service, limit: int = 8) -> list[str]:
    """The node's warnings and errors (its access lines left out), shortened."""
    try:
        text = node.log_path.read_text(errors="replace")
        lines = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line]
    except OSError:
        return []
    shown = [line[:300] for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"... and {len(lines) - limit} more lines")
    return shown
