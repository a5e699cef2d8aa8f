"""The asyncio event loop a node process runs on: uvloop (EVENT_LOOP=uvloop, the default) or asyncio's own.

uvloop runs the same proxied request in 8 % fewer instructions (bench/PERFORMANCE.md, issue 34).
:func:`choose` says which loop a setting gets on this machine: uvloop when it can be imported, else the
standard loop with one warning line (the node never fails to start for want of it). :func:`install` makes
that loop the one every later ``asyncio.run`` and Tornado ``IOLoop()`` of the process creates, by setting
asyncio's event loop policy; ``server.py`` calls it once the settings are read, before any loop exists and
before WORKERS fork (a forked worker inherits the policy), and ``tests/conftest.py`` calls it so that the
in-process tests run on the loop the node runs on.

uvloop differs from the standard loop where a delay is not a number: ``call_later(nan)`` raises ValueError
where the standard loop runs the callback at once. Every delay the node schedules comes from settings
(``config`` refuses NaN and infinity, and bounds every number of seconds) or from an upstream's
``Retry-After`` read by ``utils.upstream.failures.retry_after_seconds`` (finite, or ignored).
"""

from __future__ import annotations

import asyncio

UVLOOP = "uvloop"
ASYNCIO = "asyncio"
EVENT_LOOPS = (UVLOOP, ASYNCIO)  # EVENT_LOOP's values, the default first


def choose(wanted: str) -> tuple[str, str]:
    """The loop EVENT_LOOP=``wanted`` runs on here, and a warning line when that is not ``wanted`` ('' otherwise)."""
    if wanted != UVLOOP:
        return ASYNCIO, ""
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        return ASYNCIO, (
            f"EVENT_LOOP=uvloop, but uvloop cannot be imported ({str(exc)[:120]}): running on asyncio's standard loop"
            " (pip install -r requirements.txt, or set EVENT_LOOP=asyncio to silence this)"
        )
    return UVLOOP, ""


def install(name: str) -> None:
    """Make every event loop this process (and each process forked from it) creates from now on ``name``'s.

    ``name`` is what :func:`choose` returned: ``uvloop`` only when it can be imported.
    """
    if name == UVLOOP:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(None)  # asyncio's default policy: the standard (selector) loop


def name_of(loop: asyncio.AbstractEventLoop) -> str:
    """Which of :data:`EVENT_LOOPS` ``loop`` is (what ``mira_build_info`` and the start-up lines report)."""
    return UVLOOP if type(loop).__module__.split(".", 1)[0] == UVLOOP else ASYNCIO
