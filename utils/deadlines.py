"""Many deadlines on one timer.

A timer per request (``loop.call_later`` and a ``cancel`` for almost every
one, since nearly every deadline is met) costs a timer handle, a heap push
and a heap clean-up each time. :class:`Deadlines` keeps the deadlines in a
dict and one loop timer, armed for the earliest of them: meeting a deadline
is a dict delete.

The timer's due time is kept here, not read back from the handle: uvloop's
``call_at`` gives a plain ``Handle`` (no ``when()``) for a time less than
half a millisecond away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable


class Deadlines:
    """Run ``callback`` for each key not discarded within its ``seconds``."""

    def __init__(self) -> None:
        self._due: dict[Hashable, tuple[float, Callable[[], None]]] = {}
        self._timer: asyncio.Handle | None = None
        self._timer_at = 0.0  # the loop time the timer is due at (when there is one)
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first add (looked up once)

    def __len__(self) -> int:
        return len(self._due)

    def add(self, key: Hashable, seconds: float, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        when = loop.time() + seconds
        self._due[key] = (when, callback)
        timer = self._timer
        if timer is None or when < self._timer_at:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(when, self._expire)
            self._timer_at = when

    def discard(self, key: Hashable) -> None:
        """``key`` met its deadline (or no longer has one); a no-op for a key not added."""
        self._due.pop(key, None)

    def _expire(self) -> None:
        """Run the callbacks that are due; arm the timer for the earliest deadline left."""
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        due = [key for key, (when, _) in self._due.items() if when <= now]
        for key in due:
            entry = self._due.pop(key, None)
            if entry is not None:
                entry[1]()
        if self._due and self._timer is None:
            self._timer_at = min(when for when, _ in self._due.values())
            self._timer = loop.call_at(self._timer_at, self._expire)
