"""The load generators of a benchmark run and what each one measured.

JSON requests (wrk, or the asyncio client of ``clients.py`` without it),
streams at once, relayed events, JSON bursts, one stream alone, aborts and
held slow streams. Every loop has a count and a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clients import (
    CHAT_PATH,
    MESSAGES_PATH,
    StreamProbe,
    burst_first_bytes,
    get_json,
    json_load,
    messages_stream_body,
    open_probe,
    stream_body,
    wait_first,
)
from plan import (
    ABORT_SILENCE_MS,
    BENCH,
    HOLD_INTERVAL_MS,
    HOLD_MAX_EVENTS,
    HOST,
    JSON_CONNECTIONS,
    MESSAGES_ROUTES,
    MODEL,
    OPENING_AT_ONCE,
    PACED_EVENTS,
    PACED_INTERVAL_MS,
    RELAY_EVENTS,
    RELAY_INTERVAL_MS,
    RELAY_STREAMS,
    STREAMS_AT_ONCE,
)
from procs import Processes, Service, run_command
from readings import busy_percent, core_times, cpu_seconds, percentile, rss_mb

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


@dataclass(frozen=True)
class JsonRequest:
    """The POST of a JSON load other than post.lua's chat request: its path and body (wrk gets a script of them)."""

    name: str
    path: str
    body: bytes


class JsonLoad:
    """One JSON load run at 64 connections: wrk when present, else the asyncio client."""

    def __init__(self, procs: Processes, use_wrk: bool) -> None:
        self.procs = procs
        self.use_wrk = use_wrk

    def script(self, request: JsonRequest | None) -> Path:
        """wrk's script: post.lua, or one written for ``request`` in the run's log folder."""
        if request is None:
            return BENCH / "post.lua"
        path = self.procs.logdir / f"{request.name}.lua"
        if not path.exists():
            body = request.body.decode()
            if "]==]" in body:
                raise RuntimeError(f"{request.name}: the body cannot be a Lua long string")
            path.write_text(
                f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n'
            )
        return path

    async def run(self, port: int, seconds: int, request: JsonRequest | None = None) -> JsonResult:
        path = request.path if request is not None else CHAT_PATH
        if self.use_wrk:
            url = f"http://{HOST}:{port}{path}"
            argv = self.procs.taskset(1) + [
                "wrk",
                "-t1",
                f"-c{JSON_CONNECTIONS}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(self.script(request)),
                url,
            ]
            return parse_wrk(await run_command(self.procs, "wrk", argv, seconds + 30))
        body = request.body if request is not None else wrk_body()
        result = await json_load(HOST, port, path, body, JSON_CONNECTIONS, seconds)
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

    async def measure(
        self, server: Service, seconds: int, warmup: int, watch: Sequence[Service] = (), request: JsonRequest | None = None
    ) -> JsonResult:
        """A warm-up run, then the measured one with the server's CPU time per request (post.lua's, or ``request``)."""
        server.check_alive()
        await self.run(server.port, warmup, request)
        watched = {s.name: s.pid for s in (server, *watch)}
        cpu_before, cores_before, wall_before = {n: cpu_seconds(p) for n, p in watched.items()}, core_times(), time.monotonic()
        result = await self.run(server.port, seconds, request)
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


def wrk_body(model: str = MODEL) -> bytes:
    """The request body of ``post.lua``, for the asyncio fallback; with another ``model``, that model's."""
    text = (BENCH / "post.lua").read_text()
    match = re.search(r"wrk\.body = \[\[(.*)\]\]", text, re.S)
    if not match:
        raise RuntimeError("no body in bench/post.lua")
    body = match.group(1).encode()
    if model != MODEL:
        named = b'"model":' + json.dumps(MODEL).encode()
        if named not in body:
            raise RuntimeError(f"post.lua's body does not name {MODEL}")
        body = body.replace(named, b'"model":' + json.dumps(model).encode(), 1)
    return body


def messages_body(model: str) -> bytes:
    """A Messages request (``/v1/messages``) of the same byte size as post.lua's chat body: ``model``, ``max_tokens`` and
    one user message whose text is the chat body's four texts, then their beginning again up to the size."""
    chat = wrk_body()
    texts = " ".join(m["content"] for m in json.loads(chat)["messages"])

    def body(text: str) -> bytes:
        shape = {"model": model, "max_tokens": 256, "messages": [{"role": "user", "content": text}]}
        return json.dumps(shape, separators=(",", ":")).encode()

    short = len(chat) - len(body(texts))
    text = texts + (" " + texts * 2)[:short] if short > 0 else texts
    return body(text)


def messages_request(name: str) -> JsonRequest:
    """The JSON load of a Messages route of ``plan.MESSAGES_ROUTES``."""
    return JsonRequest(name, MESSAGES_PATH, messages_body(MESSAGES_ROUTES[name][0]))


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


async def stream_rounds(
    port: int, rounds: int, count: int, chunks: int, interval_ms: float, model: str = MODEL, expected: int = 0,
    path: str = CHAT_PATH,
) -> StreamStats:
    """``rounds`` times: ``count`` streams started at once on open connections.

    ``model`` is the requests' (``bench/translate_events.py`` sends ``anthropic/``); ``expected`` the events a
    stream should bring (0: a relayed chat stream's, ``chunks`` + 1); ``path`` MESSAGES_PATH sends Messages requests.
    """
    stats = StreamStats()
    if path == MESSAGES_PATH:
        body = messages_stream_body(chunks, interval_ms, model)
    else:
        body = stream_body(chunks, interval_ms, model=model)
    for _ in range(rounds):
        probes = await open_many(port, count, stats)
        try:
            for probe in probes:
                probe.send(path, body)
            if probes:
                await asyncio.wait([p.finished for p in probes], timeout=chunks * interval_ms / 1000 + 15)
            for probe in probes:
                stats.add(probe, expected or chunks + 1)
        finally:
            for probe in probes:
                probe.close()
    return stats


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


async def relay_cpu(port: int, server: Service, route: str = "") -> float | None:
    """CPU (µs) the serving process spends per stream event: 20 streams of 400 events 2 ms apart.

    Through the node that is the relay's cost per event (the streams' set-up
    is spread over 8,000 events); against the upstream alone, its own.
    ``route``: a name of ``plan.MESSAGES_ROUTES``, the same streams asked of ``/v1/messages`` (per event the
    client received: a Messages stream brings a few more, its opening and closing events).
    """
    model, extra = MESSAGES_ROUTES[route] if route else (MODEL, 1)
    path = MESSAGES_PATH if route else CHAT_PATH
    before = cpu_seconds(server.pid)
    stats = await stream_rounds(port, 1, RELAY_STREAMS, RELAY_EVENTS, RELAY_INTERVAL_MS, model, RELAY_EVENTS + extra, path)
    spent = cpu_seconds(server.pid) - before
    if route and stats.failed:
        raise RuntimeError(f"{route}: {stats.failed} of {stats.streams} streams failed: {stats.failures.most_common(2)}")
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
    open_cpu_seconds: float | None = None  # the server's CPU time while the streams were being opened
    opening_events: int = 0  # events the clients received while the streams were being opened (first events included)
    window_cpu_seconds: float | None = None  # the server's CPU time during the window
    window_events: int = 0  # events the clients received during the window

    @property
    def event_cpu_us(self) -> float | None:
        """CPU per relayed event while holding: the window's CPU over the events the clients got in it."""
        if self.window_cpu_seconds is None or not self.window_events:
            return None
        return self.window_cpu_seconds / self.window_events * 1e6

    @property
    def open_cpu_ms(self) -> float | None:
        """CPU to open one stream: the CPU while opening over the streams opened (the events relayed meanwhile included)."""
        if self.open_cpu_seconds is None or not self.ok:
            return None
        return self.open_cpu_seconds / self.ok * 1000

    @property
    def relayed_while_opening(self) -> int:
        """Events relayed to streams already open while the others were being opened (first events left out)."""
        return max(0, self.opening_events - len(self.first_event_ms))

    @property
    def open_net_cpu_ms(self) -> float | None:
        """CPU to open one stream, less the events relayed meanwhile (each at the window's CPU per event)."""
        per_event = self.event_cpu_us
        if self.open_cpu_seconds is None or per_event is None or not self.ok:
            return None
        return max(0.0, self.open_cpu_seconds - self.relayed_while_opening * per_event / 1e6) / self.ok * 1000


async def hold_streams(
    port: int, count: int, window: float, server: Service, upstream: Service,
    during: Callable[[], Awaitable[object]] | None = None,
) -> HoldResult:
    """Open ``count`` slow streams, measure the server's RSS and CPU while it holds them, then disconnect all.

    ``during``: awaited after the window, every stream still held (``bench/status_cost.py``'s status refreshes).
    """
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
        result.open_cpu_seconds = cpu_seconds(server.pid) - cpu_started
        result.open_cpu_percent = 100 * result.open_cpu_seconds / result.open_seconds
        result.opening_events = sum(p.events for p in probes)
        server.check_alive()
        await asyncio.sleep(0.5)
        events_before = [p.events for p in probes]
        cpu_before, wall_before = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(window)
        cpu_after, wall_after = cpu_seconds(server.pid), time.monotonic()
        result.rss_mb = rss_mb(server.pid)
        result.cpu_percent = 100 * (cpu_after - cpu_before) / (wall_after - wall_before)
        result.window_cpu_seconds = cpu_after - cpu_before
        result.window_events = sum(p.events for p in probes) - sum(events_before)
        result.stalled = sum(1 for p, n in zip(probes, events_before, strict=True) if not p.error and p.events == n)
        for probe in probes:
            if probe.error and probe.first_event.done() and probe.first_event.result():
                result.failures["broke while held: " + probe.error] += 1
                result.ok -= 1
        server.check_alive()
        if during is not None:
            await during()
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
