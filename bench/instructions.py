"""Instructions per proxied JSON request, counted by valgrind's callgrind: a CPU figure the machine's load hardly moves.

Wall and CPU time per request drift 5-15 % between identical nodes on a shared machine; the instructions a
request executes move far less. For each tree and variant this script runs the tree's ``python server.py`` under
``valgrind --tool=callgrind`` pinned to CPU 0, with ``bench/upstream.py`` and this script's client on CPU 1
and the node's environment from ``procs.node_env`` (plus the variant's settings from ``plan.NODE_VARIANTS``).
The client sends 300 warm-up POSTs of ``bench/post.lua``'s body to ``/v1/chat/completions`` over 8 keep-alive
connections, then exactly N more, closes its connections, and the node gets SIGTERM; valgrind's
``==PID== Collected : TOTAL`` line is the whole run's count. Two runs, N = REQUESTS / 5 and N = REQUESTS
(500 and 2,500 by default), and the difference of their totals divided by the difference of their N is the
cost of one request: start-up, warm-up and shutdown cancel out. Two runs of one tree agreed within 0.03 %
in issue 15's sitting and within 0.4 % with other benchmarks sharing the machine (bench/PERFORMANCE.md).

``--model`` (or ``BENCH_MODELS="M ..."``) sets the body's ``model`` (default ``openai/gpt-4o-mini``, relayed
untranslated): ``anthropic/gpt-4o-mini`` sends the same chat body to the Messages provider, translated to
Messages and its answer (the benchmark upstream's canned Messages answer, of the same text and size) back to
chat. Each tree and variant runs each model, in order.

``--route messages`` (or ``BENCH_ROUTE="chat messages"``) posts a Messages request of the same byte size instead
(``load.messages_body``: ``model``, ``max_tokens``, one user message) to ``/v1/messages``: there ``anthropic/`` is
relayed as it is and ``openai/`` translated to chat and back. Each tree, variant and route runs each model, so
``--route chat messages --model openai/gpt-4o-mini anthropic/gpt-4o-mini`` gives chat relayed, chat translated,
Messages translated and Messages relayed, in one sitting (issue 30).

A variant's setting that an older tree does not know is ignored by that tree (a note says so): its row is
then the plain node's. ``--cpu`` adds a plain (no valgrind) run per row and its CPU µs per request (user +
system time of the node, noisy), which gives an instructions-per-µs rate for turning instruction counts
into rough times. Under valgrind a node runs ~50x slower: a row takes a few minutes.

``--callgrind-out DIR`` keeps each run's callgrind file in DIR (``HASH-VARIANT-MODEL-N.out``, N the counted
requests) for ``callgrind_annotate``: the difference of a row's two files is where one request's instructions go.

    python bench/instructions.py [--tree DIR ...] [--variant NAME ...] [--route chat|messages ...] [--model M ...]
                                 [--requests N] [--cpu] [--callgrind-out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from clients import CHAT_PATH, MESSAGES_PATH, get_json, post_request
from load import messages_body, wrk_body
from plan import HOST, JSON_CONNECTIONS, MODEL, NODE_VARIANTS, REDIS_URL_SLOT, ROOT, log
from procs import Processes, Service, node_env, run_measurement, start_redis, start_upstream, wait_listening
from readings import cpu_seconds

CONNECTIONS = 8
WARMUP = 300
REPLY_TIMEOUT = 120.0  # seconds for one answer (the first ones under valgrind are slow)
START_TIMEOUT = 300.0  # the node's start-up under valgrind: 30-60 s on an idle machine
STOP_GRACE = 300.0  # SIGTERM to exit: the node's shutdown and callgrind's summary
COLLECTED = re.compile(r"==\d+== Collected : (\d+)")


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
    """One POST on a keep-alive connection; its answer read to the end and checked for 200."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    body = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(f"the node answered {status}: {body[:300]!r}")


class Client:
    """``CONNECTIONS`` keep-alive connections sending exactly as many POSTs as asked, all of them together."""

    def __init__(self, port: int, model: str = MODEL, route: str = "chat") -> None:
        self.port = port
        if route == "messages":
            self.request = post_request(MESSAGES_PATH, messages_body(model))
        else:
            self.request = post_request(CHAT_PATH, wrk_body(model))
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self) -> None:
        for _ in range(CONNECTIONS):
            self.streams.append(await asyncio.open_connection(HOST, self.port))

    async def send(self, count: int) -> None:
        left = [count]

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while left[0] > 0:  # at most ``count`` turns over all connections
                left[0] -= 1
                await asyncio.wait_for(exchange(reader, writer, self.request), REPLY_TIMEOUT)

        await asyncio.gather(*(one(r, w) for r, w in self.streams))

    async def close(self) -> None:
        for _, writer in self.streams:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 30)
            except (OSError, TimeoutError):
                pass
        self.streams.clear()


async def start(procs: Processes, tree: Path, env: dict[str, str], valgrind: bool, out: str = "/dev/null") -> Service:
    """The tree's ``server.py`` on CPU 0 (with valgrind writing to ``out``, or without), once ``/health`` answers 200."""
    tool = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] if valgrind else []
    argv = procs.taskset(0) + tool + [sys.executable, str(tree / "server.py")]
    node = Service("node", procs.start("node-cg" if valgrind else "node", argv, env), 0)
    await wait_listening(node, START_TIMEOUT if valgrind else 30)
    status, body = await get_json(HOST, node.port, "/health", timeout=REPLY_TIMEOUT)
    if status != 200:
        raise RuntimeError(f"the node's /health answered {status} {body}")
    return node


async def collected(
    procs: Processes, tree: Path, env: dict[str, str], requests: int, model: str, out: str, route: str = "chat"
) -> int:
    """callgrind's total for one run: start-up, warm-up, ``requests`` POSTs, shutdown."""
    node = await start(procs, tree, env, valgrind=True, out=out)
    try:
        client = Client(node.port, model, route)
        await client.open()
        await client.send(WARMUP)
        await client.send(requests)
        await client.close()
    finally:
        procs.stop(node.child, grace=STOP_GRACE)
    match = COLLECTED.search(node.child.log_path.read_text(errors="replace") if node.child.log_path else "")
    if not match:
        raise RuntimeError(f"no 'Collected' line from valgrind:\n{node.log_tail()}")
    return int(match.group(1))


async def cpu_per_request(
    procs: Processes, tree: Path, env: dict[str, str], requests: int, model: str, route: str = "chat"
) -> float:
    """The node's user + system CPU µs per request without valgrind (after the warm-up): noisy."""
    node = await start(procs, tree, env, valgrind=False)
    try:
        client = Client(node.port, model, route)
        await client.open()
        await client.send(WARMUP)
        before = cpu_seconds(node.pid)
        await client.send(requests)
        spent = cpu_seconds(node.pid) - before
        await client.close()
    finally:
        procs.stop(node.child)
    return spent / requests * 1e6


def unknown_settings(tree: Path, extra: dict[str, str]) -> list[str]:
    """The variant's variables the tree's config.py never names (that node ignores them)."""
    config = (tree / "config.py").read_text(errors="replace")
    return [name for name in extra if name not in config]


def short_hash(tree: Path) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


async def measure(
    procs: Processes, rows: list[tuple[Path, str, str, str]], requests: int, cpu: bool, keep: Path | None = None
) -> list[list[str]]:
    small = requests // 5
    upstream = await start_upstream(procs)
    table: list[list[str]] = []
    first = 0.0
    redis = None
    for tree, variant, route, model in rows:
        extra = NODE_VARIANTS[variant][1] if variant != "node" else {}
        if REDIS_URL_SLOT in extra.values():  # a variant on Redis: one loopback redis-server (on CPU 1) for every row
            redis = redis or await start_redis(procs)
            if redis is None:
                raise RuntimeError(f"the {variant} variant needs redis-server, which is not installed")
            extra = {k: f"redis://{HOST}:{redis.port}/0" if v == REDIS_URL_SLOT else v for k, v in extra.items()}
        if missing := unknown_settings(tree, extra):
            log(f"{tree} ({short_hash(tree)}) does not know {', '.join(missing)}: its {variant} node ignores it")
        env = node_env(upstream.port, JSON_CONNECTIONS + 50, extra=extra)
        totals = []
        named = model.replace("/", "_") if route == "chat" else f"{route}-{model.replace('/', '_')}"
        for count in (small, requests):
            log(f"{tree} {variant} {route} {model}: callgrind, {WARMUP} + {count} requests")
            out = str(keep / f"{short_hash(tree)}-{variant}-{named}-{count}.out") if keep else "/dev/null"
            totals.append(await collected(procs, tree, env, count, model, out, route))
        per = (totals[1] - totals[0]) / (requests - small)
        first = first or per
        log(f"{tree} {variant} {route} {model}: totals {totals[0]:,} and {totals[1]:,}: {per:,.0f} instructions per request")
        row = [f"{short_hash(tree)} ({tree.name})", variant, route, model, f"{per:,.0f}", f"{per / first:.4f}×"]
        if cpu:
            micros = await cpu_per_request(procs, tree, env, requests, model, route)
            row += [f"{micros:,.0f}", f"{per / micros:,.0f}"]
        table.append(row)
    return table


def markdown(table: list[list[str]], cpu: bool) -> str:
    head = ["tree", "variant", "route", "model", "instructions per request", "ratio to the first row"]
    if cpu:
        head += ["CPU µs per request (plain run)", "instructions per CPU µs"]
    lines = ["| " + " | ".join(head) + " |", "| --- | --- | --- | --- |" + " ---: |" * (len(head) - 4)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description="Instructions per proxied JSON request under callgrind.")
    parser.add_argument("--tree", nargs="+", type=Path, default=[ROOT], help="checkouts of the node (default: this one)")
    parser.add_argument("--variant", nargs="+", default=["node"], choices=["node", *NODE_VARIANTS],
                        help="plain node or a bench/plan.py NODE_VARIANTS entry; each tree runs each, in order")
    parser.add_argument("--model", nargs="+", default=os.environ.get("BENCH_MODELS", MODEL).split(),
                        help=f"the body's model (default {MODEL}, or BENCH_MODELS); anthropic/... is translated to Messages")
    parser.add_argument("--route", nargs="+", default=os.environ.get("BENCH_ROUTE", "chat").split(),
                        choices=["chat", "messages"],
                        help="chat: post.lua's body to /v1/chat/completions (default, or BENCH_ROUTE); messages: a Messages "
                        "body of the same size to /v1/messages (anthropic/ relayed, openai/ translated)")
    parser.add_argument("--requests", type=int, default=2500, help="the second run's POSTs; the first sends a fifth")
    parser.add_argument("--cpu", action="store_true", help="also a plain run per row: CPU µs per request (noisy)")
    parser.add_argument("--callgrind-out", type=Path, help="keep each run's callgrind file in this folder (callgrind_annotate)")
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        log("valgrind is not installed (apt-get install valgrind)")
        return 1
    if args.requests < 10:
        parser.error("--requests must be at least 10")
    rows = [
        (tree.resolve(), variant, route, model)
        for tree in args.tree for variant in args.variant for route in args.route for model in args.model
    ]
    if args.callgrind_out:
        args.callgrind_out.mkdir(parents=True, exist_ok=True)
    code, table = run_measurement(
        "mira-instructions-", lambda procs: asyncio.run(measure(procs, rows, args.requests, args.cpu, args.callgrind_out))
    )
    if table is None:
        return code
    print(markdown(table, args.cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
