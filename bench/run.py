"""``make bench``: measure the node against a fast mock upstream, print one table.

Starts ``bench/upstream.py`` (the upstream), ``python server.py`` (the node,
pointed at it) and drives both with wrk (JSON) and the asyncio probes of
``bench/clients.py`` (streams, capacity, abort). Every figure of the node is
measured next to the same figure straight against the upstream, in the same
run. The node runs alone on CPU 0; the upstream, wrk and this script share
CPU 1. The table goes to stdout and, as markdown, to ``bench/results/``
(a timestamped file and ``latest.md``), with a PNG chart of the figures beside
it when matplotlib is installed (``bench/chart.py``). ``--quick`` runs in under
a minute.

Every loop is bounded by counts and deadlines, all traffic stays on loopback,
and every process started here is stopped by PID in ``finally`` blocks (also
on Ctrl-C or SIGTERM); children also get SIGTERM if this script dies.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from chart import panels, write_chart
from clients import (
    CHAT_PATH,
    StreamProbe,
    burst_first_bytes,
    get_json,
    json_load,
    open_probe,
    stream_body,
    wait_first,
)
from upstream import raise_fd_limit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
JSON_CONNECTIONS = 64
STREAMS_AT_ONCE = 50
STREAM_CHUNKS = 20
STREAM_INTERVAL_MS = 10
HOLD_INTERVAL_MS = 1000  # a held ("slow") stream gets one event a second
HOLD_MAX_EVENTS = 600  # and ends by itself after ten minutes at most
OPENING_AT_ONCE = 200  # held streams being opened concurrently
ABORT_SILENCE_MS = 60_000  # after its first event an abort probe's upstream stays silent
FD_RESERVE = 100  # descriptors a node needs besides two sockets per stream (client + upstream)

def node_variables() -> tuple[str, ...]:
    """Variables the node reads (config.ENV_VARIABLES): a developer's own settings must not leak into the run."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from config import ENV_VARIABLES

    return ENV_VARIABLES


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    name: str
    json_seconds: int
    json_warmup: int
    stream_rounds: int
    alone_trials: int
    abort_trials: int
    holds: tuple[int, ...]
    hold_window: float
    cpu_rounds: int  # alternated JSON rounds (node, WORKERS=0 node, bare handler, floors)
    cpu_seconds: int  # wrk seconds per server per round


QUICK = Plan(
    "quick", json_seconds=3, json_warmup=1, stream_rounds=2, alone_trials=10, abort_trials=10, holds=(1000,), hold_window=2.0,
    cpu_rounds=2, cpu_seconds=2,
)
FULL = Plan(
    "full",
    json_seconds=10,
    json_warmup=2,
    stream_rounds=5,
    alone_trials=30,
    abort_trials=20,
    holds=(1000, 10000),
    hold_window=3.0,
    cpu_rounds=4,
    cpu_seconds=3,
)


def log(message: str) -> None:
    """Progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when this script dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Processes:
    """Every child process of the run, stopped by PID at the end."""

    def __init__(self, logdir: Path, pin: bool) -> None:
        self.logdir = logdir
        self.pin = pin
        self.running: list[subprocess.Popen[bytes]] = []

    def taskset(self, cpus: int | str) -> list[str]:
        """Pin a child to ``cpus`` (a CPU or a list: ``"0,1"``); without it a child inherits this script's pinning."""
        return ["taskset", "-c", str(cpus)] if self.pin else []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``argv`` with its output in a log file of its own."""
        path = self.logdir / f"{name}-{len(self.running)}.log"
        with open(path, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.running.append(proc)
        return proc, path

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; then whatever is left of its process group.

        Every child runs in a session of its own, so its group also holds the
        worker processes a WORKERS=0 node forked: none is left behind.
        """
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.running)):
            self.stop(proc)


@dataclass
class Service:
    """A started server: its process, port and log."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; its output ends with:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def start_script(procs: Processes, name: str, script: str, cpu: int, *args: str) -> Service:
    """Start ``bench/<script>`` pinned to ``cpu`` and read its port from its ``listening on`` line."""
    argv = procs.taskset(cpu) + [sys.executable, str(BENCH / script), "--host", HOST, "--port", "0", *args]
    proc, path = procs.start(name, argv)
    service = Service(name, proc, 0, path)
    await wait_listening(service, 15)
    return service


async def start_upstream(procs: Processes) -> Service:
    """The benchmark upstream, on CPU 1."""
    return await start_script(procs, "upstream", "upstream.py", 1)


def node_env(upstream_port: int, limit: int, workers: int = 1) -> dict[str, str]:
    """Every feature in place as in production: validation, usage accounting, metrics, an access line at INFO."""
    env = {k: v for k, v in os.environ.items() if k not in node_variables()}
    env.update(
        ENV_FILE="/dev/null",
        HOST=HOST,
        PORT="0",
        WORKERS=str(workers),
        LOG_LEVEL="INFO",
        MACHINE_IP=HOST,
        OPENAI_BASE_URL=f"http://{HOST}:{upstream_port}/v1",
        OPENAI_API_KEY="sk-bench-not-a-real-key",
        MAX_CONCURRENT_REQUESTS=str(limit),
        UPSTREAM_MAX_CONNECTIONS=str(limit),
        SHUTDOWN_TIMEOUT="2",
        PYTHONUNBUFFERED="1",
    )
    return env


async def wait_listening(service: Service, timeout: float) -> None:
    """Read the port from the service's ``listening on HOST:PORT`` line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"listening on [^ ]+:(\d+)", service.log_path.read_text(errors="replace"))
        if match:
            service.port = int(match.group(1))
            return
        service.check_alive()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{service.name} did not start within {timeout:g} s:\n" + service.log_tail())


async def start_bare(procs: Processes) -> Service:
    """The reference: a bare Tornado handler answering a fixed POST (``bench/bare.py``), on CPU 0 like the node."""
    return await start_script(procs, "bare", "bare.py", 0)


async def start_floor(procs: Processes, upstream: Service, client: str) -> Service:
    """The design's floor: a bare Tornado handler proxying through ``client``'s curl client (``bench/floor.py``), on CPU 0."""
    upstream_url = f"http://{HOST}:{upstream.port}/v1"
    return await start_script(procs, f"floor-{client}", "floor.py", 0, "--upstream", upstream_url, "--client", client)


async def start_node(procs: Processes, upstream: Service, limit: int, workers: int = 1) -> Service:
    """``python server.py`` on CPU 0 (PORT=0), ready once ``/health`` answers 200.

    With ``workers`` other than 1 the node's processes may run on both cores (this script itself is pinned to
    CPU 1, and a child started without taskset would inherit that).
    """
    argv = procs.taskset(0 if workers == 1 else "0,1") + [sys.executable, "server.py"]
    proc, path = procs.start("node", argv, node_env(upstream.port, limit, workers))
    node = Service("node", proc, 0, path)
    await wait_listening(node, 30)
    status, body = await get_json(HOST, node.port, "/health", timeout=10)
    if status != 200:
        raise RuntimeError(f"the node's /health answered {status} {body}")
    return node


async def run_command(procs: Processes, name: str, argv: list[str], timeout: float) -> str:
    """Run a command to its end (bounded) and return its output."""
    proc, path = procs.start(name, argv)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not finish within {timeout:g} s")
            await asyncio.sleep(0.05)
        return path.read_text(errors="replace")
    finally:
        procs.stop(proc)


# -- /proc readings -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process (all its threads) and of its living child processes (workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children[:64]:
        try:
            total += cpu_seconds(int(child))
        except OSError:  # gone meanwhile
            pass
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def core_times() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy, total) jiffies since boot."""
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        match = re.match(r"cpu(\d+) (.*)", line)
        if match:
            values = [int(v) for v in match.group(2).split()]
            idle = values[3] + (values[4] if len(values) > 4 else 0)
            times[int(match.group(1))] = (sum(values) - idle, sum(values))
    return times


def busy_percent(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int) -> float | None:
    if cpu not in before or cpu not in after:
        return None
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` (0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- JSON requests --------------------------------------------------------------------------


@dataclass
class JsonResult:
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    cpu_us: float | None = None  # CPU of the server process per request
    busy: dict[int, float | None] = field(default_factory=dict)  # per core, machine-wide, during the run
    process_cpu: dict[str, float] = field(default_factory=dict)  # % of one core, per watched process
    detail: str = ""


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(output: str) -> JsonResult:
    """Requests/s, p50/p99 (ms), request and error counts of wrk's ``--latency`` output."""

    def latency(label: str) -> float | None:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
        return float(match.group(1)) * _UNIT_MS[match.group(2)] if match else None

    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    if not rps or not count:
        raise RuntimeError("unexpected wrk output:\n" + output[-1500:])
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    detail = ""
    if socket_errors:
        errors += sum(int(v) for v in socket_errors.groups())
        detail = socket_errors.group(0)
    return JsonResult(float(rps.group(1)), latency("50"), latency("99"), int(count.group(1)), errors, detail=detail)


class JsonLoad:
    """One JSON load run at 64 connections: wrk when present, else the asyncio client."""

    def __init__(self, procs: Processes, use_wrk: bool) -> None:
        self.procs = procs
        self.use_wrk = use_wrk

    async def run(self, port: int, seconds: int) -> JsonResult:
        if self.use_wrk:
            url = f"http://{HOST}:{port}{CHAT_PATH}"
            argv = self.procs.taskset(1) + [
                "wrk",
                "-t1",
                f"-c{JSON_CONNECTIONS}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(BENCH / "post.lua"),
                url,
            ]
            return parse_wrk(await run_command(self.procs, "wrk", argv, seconds + 30))
        body = wrk_body()
        result = await json_load(HOST, port, CHAT_PATH, body, JSON_CONNECTIONS, seconds)
        ms = [v * 1000 for v in result.latencies]
        detail = "; ".join(result.error_samples[:3])
        return JsonResult(
            result.requests / result.seconds,
            percentile(ms, 50),
            percentile(ms, 99),
            result.requests,
            result.errors,
            detail=detail,
        )

    async def measure(self, server: Service, seconds: int, warmup: int, watch: Sequence[Service] = ()) -> JsonResult:
        """A warm-up run, then the measured one with the server's CPU time per request."""
        server.check_alive()
        await self.run(server.port, warmup)
        watched = {s.name: s.pid for s in (server, *watch)}
        cpu_before, cores_before, wall_before = {n: cpu_seconds(p) for n, p in watched.items()}, core_times(), time.monotonic()
        result = await self.run(server.port, seconds)
        cpu_after, cores_after, wall = (
            {n: cpu_seconds(p) for n, p in watched.items()},
            core_times(),
            time.monotonic() - wall_before,
        )
        if result.requests:
            result.cpu_us = (cpu_after[server.name] - cpu_before[server.name]) * 1e6 / result.requests
        result.busy = {cpu: busy_percent(cores_before, cores_after, cpu) for cpu in (0, 1)}
        result.process_cpu = {n: 100 * (cpu_after[n] - cpu_before[n]) / wall for n in watched}
        server.check_alive()
        return result


def wrk_body() -> bytes:
    """The request body of ``post.lua``, for the asyncio fallback."""
    text = (BENCH / "post.lua").read_text()
    match = re.search(r"wrk\.body = \[\[(.*)\]\]", text, re.S)
    if not match:
        raise RuntimeError("no body in bench/post.lua")
    return match.group(1).encode()


# -- streams --------------------------------------------------------------------------------


@dataclass
class StreamStats:
    """TTFBs (ms) and chunk counts of a set of streams."""

    ttfb_ms: list[float] = field(default_factory=list)
    streams: int = 0
    events: int = 0
    coalesced: int = 0
    failures: Counter[str] = field(default_factory=Counter)

    def add(self, probe: StreamProbe, expected_events: int) -> None:
        self.streams += 1
        if probe.error or not probe.finished.done():
            self.failures[probe.error or "did not finish in time"] += 1
            return
        if probe.events != expected_events:
            self.failures[f"{probe.events} events instead of {expected_events}"] += 1
        if probe.ttfb is not None:
            self.ttfb_ms.append(probe.ttfb * 1000)
        self.events += probe.events
        self.coalesced += probe.coalesced

    @property
    def coalesced_percent(self) -> float | None:
        return 100.0 * self.coalesced / self.events if self.events else None

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


async def open_many(port: int, count: int, stats: StreamStats) -> list[StreamProbe]:
    """``count`` connected probes; connection failures are counted in ``stats``."""
    opened = await asyncio.gather(*(open_probe(HOST, port) for _ in range(count)), return_exceptions=True)
    probes = []
    for item in opened:
        if isinstance(item, BaseException):
            stats.streams += 1
            stats.failures[f"connect: {item.__class__.__name__}: {item}"] += 1
        else:
            probes.append(item)
    return probes


async def stream_rounds(port: int, rounds: int, count: int, chunks: int, interval_ms: float) -> StreamStats:
    """``rounds`` times: ``count`` streams started at once on open connections."""
    stats = StreamStats()
    body = stream_body(chunks, interval_ms)
    for _ in range(rounds):
        probes = await open_many(port, count, stats)
        try:
            for probe in probes:
                probe.send(CHAT_PATH, body)
            if probes:
                await asyncio.wait([p.finished for p in probes], timeout=chunks * interval_ms / 1000 + 15)
            for probe in probes:
                stats.add(probe, chunks + 1)
        finally:
            for probe in probes:
                probe.close()
    return stats


RELAY_STREAMS, RELAY_EVENTS, RELAY_INTERVAL_MS = 20, 400, 2.0
PACED_EVENTS, PACED_INTERVAL_MS = 1000, 1.0  # one stream at 1,000 events/s


async def json_bursts(port: int, rounds: int) -> list[float]:
    """``rounds`` bursts of STREAMS_AT_ONCE JSON requests sent at once: ms to each answer's first byte."""
    body = wrk_body()
    times: list[float] = []
    for _ in range(rounds):
        times += [t * 1000 for t in await burst_first_bytes(HOST, port, CHAT_PATH, body, STREAMS_AT_ONCE)]
    return times


async def paced_stream(port: int) -> StreamStats:
    """One stream of 1,000 events 1 ms apart: does every event reach the client in a read of its own?"""
    return await stream_rounds(port, 1, 1, PACED_EVENTS, PACED_INTERVAL_MS)


async def relay_cpu(port: int, server: Service) -> float | None:
    """CPU (µs) the serving process spends per stream event: 20 streams of 400 events 2 ms apart.

    Through the node that is the relay's cost per event (the streams' set-up
    is spread over 8,000 events); against the upstream alone, its own.
    """
    before = cpu_seconds(server.pid)
    stats = await stream_rounds(port, 1, RELAY_STREAMS, RELAY_EVENTS, RELAY_INTERVAL_MS)
    spent = cpu_seconds(server.pid) - before
    return spent / stats.events * 1e6 if stats.events else None


async def stream_alone(services: dict[str, int], trials: int) -> dict[str, StreamStats]:
    """One stream at a time, alternating between the targets; TTFB of each."""
    stats = {name: StreamStats() for name in services}
    body = stream_body(2, 1)
    for _ in range(trials):
        for name, port in services.items():
            probe = await open_probe(HOST, port)
            try:
                probe.send(CHAT_PATH, body)
                await asyncio.wait([probe.finished], timeout=10)
                stats[name].add(probe, 3)
            finally:
                probe.close()
    return stats


# -- abort ----------------------------------------------------------------------------------


@dataclass
class AbortStats:
    delays_ms: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


async def abort_trials(port: int, upstream: Service, trials: int, prefix: str) -> AbortStats:
    """Disconnect a client after its first event; time until the upstream sees its connection close."""
    stats = AbortStats()
    for i in range(trials):
        tag = f"{prefix}-{os.getpid()}-{i}"
        probe = await open_probe(HOST, port)
        try:
            probe.send(CHAT_PATH, stream_body(HOLD_MAX_EVENTS, ABORT_SILENCE_MS, tag))
            if not await wait_first(probe, 10):
                stats.failures[probe.error] += 1
                continue
        finally:
            probe.close()
        disconnected = probe.closed_at
        _, answer = await get_json(HOST, upstream.port, f"/_bench/closed?tag={tag}&wait=5", timeout=10)
        closed_at = answer.get("closed_at") if isinstance(answer, dict) else None
        if closed_at is None:
            stats.failures["upstream connection still open 5 s after the client left"] += 1
        else:
            stats.delays_ms.append((closed_at - disconnected) * 1000)
    return stats


# -- capacity -------------------------------------------------------------------------------


@dataclass
class HoldResult:
    count: int
    server: str = ""
    first_event_ms: list[float] = field(default_factory=list)  # TTFB of each stream while they were being opened
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    open_seconds: float = 0.0
    open_cpu_percent: float | None = None  # the server's CPU while the streams were being opened
    rss_mb: float | None = None
    cpu_percent: float | None = None
    stalled: int = 0  # streams that got no event during the window
    release_seconds: float | None = None


async def hold_streams(port: int, count: int, window: float, server: Service, upstream: Service) -> HoldResult:
    """Open ``count`` slow streams, measure the server's RSS and CPU while it holds them, then disconnect all."""
    result = HoldResult(count, server.name)
    probes: list[StreamProbe] = []
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    body = stream_body(HOLD_MAX_EVENTS, HOLD_INTERVAL_MS)

    async def open_one() -> None:
        async with gate:
            try:
                probe = await open_probe(HOST, port)
            except (TimeoutError, OSError) as exc:
                result.failures[f"connect: {exc.__class__.__name__}: {exc}"] += 1
                return
            probes.append(probe)
            probe.send(CHAT_PATH, body)
            if await wait_first(probe, 20):
                result.ok += 1
                result.first_event_ms.append((probe.first_at - probe.sent_at) * 1000)
            else:
                result.failures[probe.error] += 1

    started, cpu_started = time.monotonic(), cpu_seconds(server.pid)
    try:
        tasks = [asyncio.ensure_future(open_one()) for _ in range(count)]
        _, pending = await asyncio.wait(tasks, timeout=30 + count / 100)
        for task in pending:
            task.cancel()
        result.failures["not open before the deadline"] += len(pending)
        result.open_seconds = time.monotonic() - started
        result.open_cpu_percent = 100 * (cpu_seconds(server.pid) - cpu_started) / result.open_seconds
        server.check_alive()
        await asyncio.sleep(0.5)
        events_before = [p.events for p in probes]
        cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(window)
        cpu_after, wall_after = cpu_seconds(server.pid), time.monotonic()
        result.rss_mb = rss_mb(server.pid)
        result.cpu_percent = 100 * (cpu_after - cpu_before) / (wall_after - wall_before)
        result.stalled = sum(1 for p, n in zip(probes, events_before, strict=True) if not p.error and p.events == n)
        for probe in probes:
            if probe.error and probe.first_event.done() and probe.first_event.result():
                result.failures["broke while held: " + probe.error] += 1
                result.ok -= 1
        server.check_alive()
    finally:
        released = time.monotonic()
        for probe in probes:
            probe.close()
    if await wait_upstream_idle(upstream, 30 + count / 500):
        result.release_seconds = time.monotonic() - released
    return result


async def wait_upstream_idle(upstream: Service, timeout: float) -> bool:
    """True once the upstream has no open stream; False if not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, stats = await get_json(HOST, upstream.port, "/_bench/stats", timeout=10)
        if isinstance(stats, dict) and stats.get("streams") == 0:
            return True
        await asyncio.sleep(0.05)
    return False


# -- the run --------------------------------------------------------------------------------


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
    rounds: dict[str, list[JsonResult]] = field(default_factory=dict)  # the alternated JSON rounds, per server
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

    async def run(self) -> Measurements:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        started = time.monotonic()
        upstream = await start_upstream(self.procs)
        log(f"upstream on port {upstream.port} (pid {upstream.pid})")
        # Throughput figures first: the held streams of the later phases leave the upstream busy for a while.
        await self.cpu_comparison(upstream)
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
        for client in ("tornado", "node"):
            servers[f"floor-{client}"] = await start_floor(procs, upstream, client)
        rounds: dict[str, list[JsonResult]] = {name: [] for name in servers}
        for number in range(1, plan.cpu_rounds + 1):
            for name, server in servers.items():
                result = await self.step(
                    f"JSON round {number}: {name}",
                    lambda s=server: self.load.measure(s, plan.cpu_seconds, 1, [upstream]),
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
            if name in ("node", "workers"):
                self.stop_node(server)
            else:
                procs.stop(server.proc)

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
        self.procs.stop(node.proc)


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


# -- the table -------------------------------------------------------------------------------


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
        row(
            f"CPU per JSON request: node / a bare Tornado handler (fixed POST), {rounds}",
            fmt(node, " µs", 0),
            f"bare: {fmt(bare, ' µs', 0)}",
            ratio(node, bare),
            target="≤ 1.5×",
            ok=None if node is None or not bare else node / bare <= 1.5,
        )
    )
    for client, name in (("tornado", "Tornado's curl client"), ("node", "the node's transport")):
        floor = medians.get(f"floor-{client}")
        rows.append(
            row(
                f"CPU per JSON request: a bare Tornado handler proxying through {name} / the bare handler",
                fmt(floor, " µs", 0),
                f"bare: {fmt(bare, ' µs', 0)}",
                ratio(floor, bare),
            )
        )
    rps = {name: percentile([r.rps for r in results], 50) for name, results in m.rounds.items()}
    rps_w, rps_one = rps.get("workers"), rps.get("node")
    scale = rps_w / rps_one if rps_w is not None and rps_one else None
    rows.append(
        row(
            f"JSON requests/s with WORKERS=0 (unpinned) / one worker, {rounds}",
            fmt(rps_w, digits=0),
            f"one: {fmt(rps_one, digits=0)}",
            ratio(rps_w, rps_one),
            target="≥ 1.8×",
            ok=None if scale is None else scale >= 1.8,
        )
    )
    cpu_w = medians.get("workers")
    rows.append(
        row(
            f"CPU per JSON request with WORKERS=0 (all its processes) / one worker, {rounds}",
            fmt(cpu_w, " µs", 0),
            f"one: {fmt(node, ' µs', 0)}",
            ratio(cpu_w, node),
        )
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
    for count in m.plan.holds:
        hn, hd = m.holds.get(("node", count)), m.holds.get(("direct", count))
        capped = f" (capped at {hn.count:,}: fd limit {m.fd_limit:,})" if hn and hn.count < count else ""
        all_ok = hn.ok == hn.count and not hn.failures.total() if hn else None
        rows.append(row(f"{count:,} slow streams held{capped}: open ok", held(hn), held(hd), target="all", ok=all_ok))
        limit_mb = 150 if count <= 1000 else 600
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
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for n, cells in enumerate(table):
        padded = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(cells)]
        lines.append("| " + " | ".join(padded) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


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
                  "floor-tornado": "proxy via Tornado's client", "floor-node": "proxy via the node's transport"}
        cpu = "; ".join(
            f"{labels.get(name, name)} {', '.join(fmt(r.cpu_us, digits=0) for r in results)}"
            for name, results in m.rounds.items()
            if name != "workers"
        )
        rps = "; ".join(f"{labels.get(n, n)} {', '.join(fmt(r.rps, digits=0) for r in m.rounds[n])}" for n in ("workers", "node"))
        cpu += f"; WORKERS=0 node (its workers' CPU) {', '.join(fmt(r.cpu_us, digits=0) for r in m.rounds['workers'])}"
        notes.append(
            f"JSON rounds ({m.plan.cpu_rounds} rounds of wrk {m.plan.cpu_seconds} s on each server in turn; all on CPU 0 "
            f"but the WORKERS=0 node): CPU per request (µs) {cpu}. Requests/s: {rps}."
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
        f"node pinned to CPU 0, upstream and load generator to CPU 1; one worker process; run took {m.seconds:.0f} s.",
        "'direct' is the benchmark upstream (bench/upstream.py) measured alone in the same run.",
        "",
        "",
    ]
    notes = describe_notes(m, use_wrk, pinned)
    return "\n".join(header) + render_table(m) + "\n\n" + "\n".join(n if n.startswith("    ") else f"- {n}" for n in notes) + "\n"


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
        log("chart skipped: matplotlib is not installed (`make bench` installs requirements-bench.txt)")
    else:
        shutil.copyfile(chart, latest_chart)
        log(f"chart written to {chart.relative_to(ROOT)} and bench/results/latest.png")
    return path


# -- setup ------------------------------------------------------------------------------------


def ensure_wrk() -> bool:
    """True when wrk is there, installing Debian's package first if it is missing (as root)."""
    if shutil.which("wrk"):
        return True
    if not shutil.which("apt-get") or os.geteuid() != 0:
        log("wrk is missing and cannot be installed here; using the asyncio JSON client")
        return False
    log("wrk is missing: apt-get install -y wrk")
    for steps in ([["apt-get", "install", "-y", "wrk"]], [["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]]):
        try:
            for step in steps:
                subprocess.run(step, check=True, timeout=600, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            continue
        if shutil.which("wrk"):
            return True
    log("could not install wrk; using the asyncio JSON client")
    return False


def pin_self() -> bool:
    """Move this script (the asyncio load generator) to CPU 1; False on a single CPU."""
    cpus = os.sched_getaffinity(0)
    if not {0, 1} <= cpus or not shutil.which("taskset"):
        return False
    os.sched_setaffinity(0, {1})
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the node against a fast mock upstream.")
    parser.add_argument("--quick", action="store_true", help="fewer requests, 1,000 streams at most: under a minute")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    fd_limit = raise_fd_limit(4 * max(plan.holds) + 4096)
    if fd_limit < 2 * max(plan.holds) + FD_RESERVE:
        log(f"only {fd_limit} file descriptors allowed: the node will hold at most {(fd_limit - FD_RESERVE) // 2:,} streams")
    use_wrk = ensure_wrk()
    pinned = pin_self()
    logdir = Path(tempfile.mkdtemp(prefix="mira-bench-"))
    procs = Processes(logdir, pinned)
    when = datetime.now()
    log(f"{plan.name} run")
    try:
        measurements = asyncio.run(Bench(plan, procs, use_wrk, fd_limit).run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        log(f"interrupted: every process stopped; their output is in {logdir}")
        return 130
    except Exception as exc:  # a setup step failed (no upstream, no node): say what, after the clean-up
        log(f"benchmark failed: {exc.__class__.__name__}: {exc}; the processes' output is in {logdir}")
        return 1
    finally:
        procs.stop_all()
    shutil.rmtree(logdir, ignore_errors=True)
    text = report(measurements, use_wrk, pinned, when)
    print(text)
    save(text, measurements, when)
    return 0


if __name__ == "__main__":
    sys.exit(main())
