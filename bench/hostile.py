"""What a hostile (or just huge) request body costs the node: memory and event-loop stalls.

For each body shape, a fresh node (so its peak RSS, ``VmHWM``, belongs to that
body alone) receives one POST of about MAX_BODY_SIZE bytes while a probe asks
``GET /health`` every few milliseconds on another connection. The table gives
the answer's status and time, the peak RSS growth over the idle node as a
multiple of the body's size, and the longest the probe had to wait: how long
the body stalled every other request.

Run: ``python bench/hostile.py [--size-mb 20]`` (or ``make bench-hostile``).
Loopback only; every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from clients import get_json
from plan import HOST
from procs import Processes, start_node, start_upstream

PREFIX = b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "x": ['
SUFFIX = b"0]}"
PROBE_INTERVAL = 0.005


def repeated(piece: bytes, size: int) -> bytes:
    return PREFIX + piece * ((size - len(PREFIX) - len(SUFFIX)) // len(piece)) + SUFFIX


def shapes(size: int) -> dict[str, bytes]:
    """Hostile shapes first, then bodies of real content of the same size."""
    tokens = b",".join(str(10_000 + i % 90_000).encode() for i in range(size // 6))
    message = b'{"role": "user", "content": "A message of a long conversation, with some words and commas."},'
    return {
        "[] x N (empty lists)": repeated(b"[],", size),
        "{} x N (empty objects)": repeated(b"{},", size),
        '"ab" x N (short strings)': repeated(b'"ab",', size),
        "0 x N (small ints)": repeated(b"0,", size),
        "[[[...]]] (deep nesting)": PREFIX[:-1] + b"[" * (size // 2 - 100) + b"]" * (size // 2 - 100) + b"}",
        "real: one 20 MB string (an image)": PREFIX + b'"' + b"QUJD" * ((size - 100) // 4) + b'", ' + SUFFIX,
        "real: token ids": PREFIX[:-1] + b"[" + tokens[: size - 200].rsplit(b",", 1)[0] + b"]}",
        "real: many messages": b'{"model": "openai/gpt-4o-mini", "messages": ['
        + message * ((size - 200) // len(message))
        + b'{"role": "user", "content": "hi"}]}',
    }


def vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


async def post(port: int, body: bytes, timeout: float = 120.0) -> tuple[int, float]:
    """POST ``body``; the status and the seconds from the last byte sent to the answer's head."""
    reader, writer = await asyncio.open_connection(HOST, port)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: n\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
    await writer.drain()
    sent = time.monotonic()
    line = await asyncio.wait_for(reader.readline(), timeout)
    took = time.monotonic() - sent
    writer.close()
    return int(line.split()[1]), took


async def probe(port: int, stop: asyncio.Event) -> float:
    """Ask /health until ``stop``; the longest answer time seen."""
    worst = 0.0
    for _ in range(100_000):
        if stop.is_set():
            break
        started = time.monotonic()
        await get_json(HOST, port, "/health", timeout=30)
        worst = max(worst, time.monotonic() - started)
        await asyncio.sleep(PROBE_INTERVAL)
    return worst


async def measure(size: int) -> list[str]:
    rows = ["| body | status | answered in | peak RSS growth | × body size | longest /health wait |",
            "| --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory(prefix="mira-hostile-") as logdir:
        procs = Processes(Path(logdir), pin=False)
        try:
            upstream = await start_upstream(procs)
            for name, body in shapes(size).items():
                node = await start_node(procs, upstream, 100)
                idle_kb = vm_kb(node.pid, "VmRSS")
                stop = asyncio.Event()
                prober = asyncio.ensure_future(probe(node.port, stop))
                status, took = await post(node.port, body)
                stop.set()
                worst = await prober
                growth = (vm_kb(node.pid, "VmHWM") - idle_kb) / 1024
                rows.append(
                    f"| {name} ({len(body) / 1e6:.1f} MB) | {status} | {took * 1000:.0f} ms | {growth:.0f} MB"
                    f" | {growth * 1024 * 1024 / len(body):.1f} | {worst * 1000:.0f} ms |"
                )
                print(rows[-1], flush=True)
                procs.stop(node.child)
        finally:
            procs.stop_all()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=20.0, help="body size (the node's MAX_BODY_SIZE is 20 MiB)")
    args = parser.parse_args()
    size = min(int(args.size_mb * 1e6), 20 * 1024 * 1024 - 1024)
    rows = asyncio.run(measure(size))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
