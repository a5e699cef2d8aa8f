"""Process control of a benchmark run: every server it starts (upstream, node, bare handler, floors) and wrk.

Each child runs in a session of its own with its output in a log file, is
pinned to a CPU when the run pins (``taskset``), gets SIGTERM if the
benchmark dies, and is stopped by PID (then its process group) at the end.
A server is ready once its ``listening on HOST:PORT`` line is in its log.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from clients import get_json
from plan import BENCH, EVENT_LOOP, HOST, ROOT, UPSTREAM_SLOT, log

if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tools.childproc import ChildProcess  # noqa: E402


def node_variables() -> tuple[str, ...]:
    """Variables the node reads (config.ENV_VARIABLES): a developer's own settings must not leak into the run."""
    from config import ENV_VARIABLES

    return ENV_VARIABLES


class Processes:
    """Every child process of the run (``tools/childproc.py``), stopped by PID at the end."""

    def __init__(self, logdir: Path, pin: bool) -> None:
        self.logdir = logdir
        self.pin = pin
        self.running: list[ChildProcess] = []

    def taskset(self, cpus: int | str) -> list[str]:
        """Pin a child to ``cpus`` (a CPU or a list: ``"0,1"``); without it a child inherits this script's pinning."""
        return ["taskset", "-c", str(cpus)] if self.pin else []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ChildProcess:
        """Start ``argv`` with its output written straight into a log file of its own; it gets SIGTERM if this script dies."""
        path = self.logdir / f"{name}-{len(self.running)}.log"
        child = ChildProcess(argv, name=name, env=env, log_path=path, direct=True, die_with_parent=True)
        self.running.append(child)
        return child

    def stop(self, child: ChildProcess, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; then whatever is left of its process group.

        Every child runs in a session of its own, so its group also holds the
        worker processes a WORKERS=0 node forked: none is left behind.
        """
        child.stop(grace, sweep_group=True)
        if child in self.running:
            self.running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.running)):
            self.stop(child)


T = TypeVar("T")


def run_measurement(prefix: str, work: Callable[[Processes], T]) -> tuple[int, T | None]:
    """``work`` given the run's processes, their logs in a fresh temporary folder named ``prefix...``: (0, its
    result), the folder removed; or, interrupted or failed, (130 or 1, None) with the folder kept and said.
    Every process is stopped either way."""
    logdir = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes(logdir, pin_self())
    try:
        result = work(procs)
    except (KeyboardInterrupt, asyncio.CancelledError):
        log(f"interrupted: every process stopped; their output is in {logdir}")
        return 130, None
    except Exception as exc:
        log(f"failed: {exc.__class__.__name__}: {exc}; the processes' output is in {logdir}")
        return 1, None
    finally:
        procs.stop_all()
    shutil.rmtree(logdir, ignore_errors=True)
    return 0, result


@dataclass
class Service:
    """A started server: its process, port and log."""

    name: str
    child: ChildProcess
    port: int

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.child.proc

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def log_path(self) -> Path:
        assert self.child.log_path is not None
        return self.child.log_path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; its output ends with:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        return self.child.tail(lines)


async def start_script(procs: Processes, name: str, script: str, cpu: int, *args: str) -> Service:
    """Start ``bench/<script>`` pinned to ``cpu`` and read its port from its ``listening on`` line."""
    argv = procs.taskset(cpu) + [sys.executable, str(BENCH / script), "--host", HOST, "--port", "0", *args]
    service = Service(name, procs.start(name, argv, {**os.environ, "EVENT_LOOP": EVENT_LOOP}), 0)
    await wait_listening(service, 15)
    return service


async def start_redis(procs: Processes) -> Service | None:
    """Debian's redis-server on a free loopback port, persistence off, on CPU 1 (None when it is not installed)."""
    path = shutil.which("redis-server")
    if path is None:
        return None
    sock = socket.socket()
    sock.bind((HOST, 0))
    port = sock.getsockname()[1]
    sock.close()
    argv = procs.taskset(1) + [path, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    service = Service("redis", procs.start("redis", argv), port)
    if await service.child.wait_for_line_async(r"Ready to accept connections", 15) is None:
        raise RuntimeError("redis-server did not start:\n" + service.log_tail())
    return service


async def start_upstream(procs: Processes) -> Service:
    """The benchmark upstream, on CPU 1."""
    return await start_script(procs, "upstream", "upstream.py", 1)


def node_env(upstream_port: int, limit: int, workers: int = 1, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Every feature in place as in production: validation, usage accounting, metrics, an access line at INFO.

    The hosted providers (openai, openrouter, anthropic, groq) have their base URL at the benchmark upstream
    (nothing leaves loopback); ``openai`` and ``anthropic`` (Messages, translated: ``plan.TRANSLATED_MODEL``)
    have a key, so both are configured.
    """
    env = {k: v for k, v in os.environ.items() if k not in node_variables()}
    upstream = f"http://{HOST}:{upstream_port}/v1"
    env.update(
        ENV_FILE="/dev/null",
        HOST=HOST,
        PORT="0",
        WORKERS=str(workers),
        LOG_LEVEL="INFO",
        MACHINE_IP=HOST,
        OPENAI_BASE_URL=upstream,
        OPENROUTER_BASE_URL=upstream,
        ANTHROPIC_BASE_URL=upstream,
        GROQ_BASE_URL=upstream,
        OPENAI_API_KEY="sk-bench-not-a-real-key",
        ANTHROPIC_API_KEY="sk-ant-bench-not-a-real-key",
        MAX_CONCURRENT_REQUESTS=str(limit),
        UPSTREAM_MAX_CONNECTIONS=str(limit),
        SHUTDOWN_TIMEOUT="2",
        PYTHONUNBUFFERED="1",
        EVENT_LOOP=EVENT_LOOP,  # the run's loop (plan.EVENT_LOOP); a variant may set its own
    )
    env.update({name: value.replace(UPSTREAM_SLOT, f"http://{HOST}:{upstream_port}") for name, value in (extra or {}).items()})
    return env


async def wait_listening(service: Service, timeout: float) -> None:
    """Read the port from the service's ``listening on HOST:PORT`` line."""
    match = await service.child.wait_for_line_async(r"listening on [^ ]+:(\d+)", timeout)
    if match:
        service.port = int(match.group(1))
        return
    service.check_alive()
    raise RuntimeError(f"{service.name} did not start within {timeout:g} s:\n" + service.log_tail())


async def start_bare(procs: Processes) -> Service:
    """The reference: a bare Tornado handler answering a fixed POST (``bench/bare.py``), on CPU 0 like the node."""
    return await start_script(procs, "bare", "bare.py", 0)


async def start_floor(procs: Processes, upstream: Service, client: str) -> Service:
    """The design's floor: a bare Tornado handler proxying through ``client``'s curl client (``bench/floor.py``), on CPU 0."""
    upstream_url = f"http://{HOST}:{upstream.port}/v1"
    return await start_script(procs, f"floor-{client}", "floor.py", 0, "--upstream", upstream_url, "--client", client)


async def start_node(
    procs: Processes, upstream: Service, limit: int, workers: int = 1, extra: dict[str, str] | None = None,
    tree: str = "",
) -> Service:
    """``python server.py`` on CPU 0 (PORT=0), ready once ``/health`` answers 200.

    With ``workers`` other than 1 the node's processes may run on both cores (this script itself is pinned to
    CPU 1, and a child started without taskset would inherit that).
    """
    # ``tree``: another checkout's server.py (BENCH_BASELINE), to compare two versions in one sitting.
    argv = procs.taskset(0 if workers == 1 else "0,1") + [sys.executable, str(Path(tree) / "server.py") if tree else "server.py"]
    node = Service("node", procs.start("node", argv, node_env(upstream.port, limit, workers, extra)), 0)
    await wait_listening(node, 30)
    deadline = time.monotonic() + 10
    while True:  # a WORKERS=0 node's parent says "listening" a moment before its workers take connections
        try:
            status, body = await get_json(HOST, node.port, "/health", timeout=10)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    if status != 200:
        raise RuntimeError(f"the node's /health answered {status} {body}")
    return node


async def run_command(procs: Processes, name: str, argv: list[str], timeout: float) -> str:
    """Run a command to its end (bounded) and return its output."""
    child = procs.start(name, argv)
    try:
        deadline = time.monotonic() + timeout
        while child.proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not finish within {timeout:g} s")
            await asyncio.sleep(0.05)
        assert child.log_path is not None
        return child.log_path.read_text(errors="replace")
    finally:
        procs.stop(child)


def pin_self() -> bool:
    """Move this script (the asyncio load generator) to CPU 1; False on a single CPU."""
    cpus = os.sched_getaffinity(0)
    if not {0, 1} <= cpus or not shutil.which("taskset"):
        return False
    os.sched_setaffinity(0, {1})
    return True
