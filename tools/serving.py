"""How the small servers around the node stop: on SIGTERM or SIGINT, when their parent is gone, or after a time limit.

``stop = stop_on_signals()`` (called on the running loop before the server
says it listens, so that a signal sent as soon as its line is read is not
missed) returns an ``asyncio.Event`` that SIGTERM and SIGINT set;
``await wait_stopped(stop, watch_parent=True, max_seconds=...)`` returns once
it is set, once the process that started this one has exited, or once the
time is up, looking every ``check_every`` seconds.

Used by ``tools/demo_upstream.py``, ``bench/bare.py``, ``bench/floor.py`` and
``bench/upstream.py``. The node's own signal handling (``server.py``: drain,
workers) is its own; the node's code does not import this module.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM and SIGINT set (handlers on the running event loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def wait_stopped(
    stop: asyncio.Event, *, watch_parent: bool = False, max_seconds: float | None = None, check_every: float = 1.0
) -> None:
    """Return once ``stop`` is set, the parent process has exited (``watch_parent``) or ``max_seconds`` have passed."""
    if not watch_parent and max_seconds is None:
        await stop.wait()
        return
    parent = os.getppid()
    deadline = time.monotonic() + max_seconds if max_seconds is not None else None
    while not stop.is_set() and (deadline is None or time.monotonic() < deadline) and os.getppid() == parent:
        try:
            await asyncio.wait_for(stop.wait(), check_every)
        except TimeoutError:
            pass
