"""Python's collector for a serving process: start-up frozen, full collections rarer, and a large heap frozen too.

At start-up (:func:`install`, from ``server.collect_less()``): one collection, then ``gc.freeze()`` of what
survives (modules, settings, the app: never walked again), full collections a tenth as often as Python's default
(thresholds 700, 10, 100), and the number frozen then kept as the *baseline*.

A full collection walks every object not frozen with the event loop stopped: under plain JSON traffic a few
milliseconds, but a node holding 10,000 streams (about 132 tracked objects each) holds some 1.3 million, and a
full collection of them stops the loop for 0.3 to 2.4 s (bench/PERFORMANCE.md, issue 34). So the process is in
one of three modes:

``normal``
    What is described above; one ``gc.callbacks`` hook, called at the start and at the end of every
    collection, returns at once from a young one (about 0.8 µs a collection with the hook, 0.05 µs without;
    under plain JSON traffic one young collection every 36 requests, one of generation 1 every 390). At every
    :data:`PROBE_EVERY`-th (5th) collection of generation 1 (every 35,000 tracked objects that survived young
    collections) it reads the blocks Python's allocator has out (``sys.getallocatedblocks()``, a walk of its
    pools: 25-50 µs at 50-100 MB). When they are :data:`LARGE_GROWTH` (100,000, some 550 held streams) more
    than after start-up, the heap is large: a full collection is asked for at once (the third threshold 1), and
    what it keeps is frozen (``gc.freeze()``, which costs nothing): the process goes ``frozen``. Plain JSON
    traffic never gets there (its blocks stay within a few thousand of start-up's); a node opening streams
    gets there after 550 to 850 streams, before a full collection is long.
``frozen``
    Thresholds 700, 10, 10: full collections ten times as often, each walking only what is newer than the last
    one, whose survivors it freezes in turn. The loop never stands still longer than a young collection and a
    small full one. But a frozen object is never collected: an ended stream's acyclic part is freed by
    reference counting (which lowers ``gc.get_freeze_count()``) while its reference cycles (about 62 of its
    132 objects) wait in the frozen set. So the hook counts the objects freed from the frozen set since the
    process went ``frozen``, and once they are an eighth (:data:`UNFREEZE_SHARE`) of what is frozen beyond the
    baseline (the start-up objects do not count: a small node's few frozen requests would otherwise hardly ever
    add up to an eighth of them), or after :data:`FROZEN_AT_MOST` (10 minutes) in any case, it unfreezes
    everything (``gc.unfreeze()``) and the process goes ``thawed``. Counting the frozen set walks it (0.1 s for
    a million objects of a node's heap, pointer after pointer), so it is counted at most every
    :data:`CHECK_EVERY` (30 s), at a full collection. Not every object freed from the frozen set was garbage's:
    each freeze also catches what the requests in flight hold for a moment (a request's parsed body and plan
    until its stream's first byte, buffers), freed a moment later. While a node opens streams fast (a full
    collection every half second) these add up to an eighth within seconds, with nothing to collect; so the
    objects freed between two counts are left out when they are under a quarter (:data:`GROWING_SHARE`) of
    what was frozen meanwhile: the heap is growing. Under churn (streams ending while others open) the frees
    are about half of what is frozen (a stream's 70 acyclic of its 132 objects), and counted. And when the full
    collection after an unfreeze frees fewer objects than half the frees that brought the unfreeze (a stream's
    cycles are about as many as its acyclic part, so the frees were not garbage's), the next unfreeze waits for
    twice as many frees (a quarter); one that finds the garbage brings the eighth back.
``thawed``
    Still thresholds 700, 10, 10, so that the next full collection, which walks everything and frees the
    waiting cycles, comes soon. It freezes what it kept; if the part of its CPU time spent on objects beyond
    the baseline (its time shared out by objects walked) is still :data:`LONG_COLLECTION` or more, the heap is
    still large and the process goes ``frozen`` again. Otherwise the traffic has gone: this freeze is the
    start-up freeze restored (without it every later full collection would walk the start-up objects again),
    its count (and the allocator's blocks) the new baseline, and the process goes ``normal`` (thresholds 700,
    10, 100).

What the restoring freeze leaks: the objects it freezes beyond the start-up ones are what was alive at that
collection, a heap whose full collection took less than :data:`LONG_COLLECTION` (some 80,000 objects at most on
the benchmark machine; once the traffic has gone, the few requests in flight). Their reference cycles wait in
the frozen set until the next unfreeze, which releases everything frozen, these included: so the leak never adds
up, at most one such heap's cycles at any time. While ``frozen``, the garbage waiting is bounded by the eighth
rule: with a stream's 70 acyclic and 62 cyclic objects, about a quarter of the held streams ending (the rest
still held) brings the unfreeze, then one full collection walks everything, as any full collection does in
``normal`` mode. A node that gets no requests runs no collection at all, whatever the mode: garbage then waits
until the traffic comes back, as with Python's default collector.

Each change of mode is one INFO line (``mira.collector``), logged from the event loop once the collection has
ended (from a collection in another thread: at once).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from typing import Any

log = logging.getLogger("mira.collector")

THRESHOLDS = (700, 10, 100)  # normal: full collections a tenth as often as Python's default
FROZEN_THRESHOLDS = (700, 10, 10)  # frozen and thawed: each full collection walks only what is newer than a freeze
ASKED_THRESHOLDS = (700, 10, 1)  # normal, the heap large: a full collection at the next young one
LONG_COLLECTION = 0.05  # seconds of CPU a full collection takes once the heap is large (not under plain traffic)
PROBE_EVERY = 5  # normal: the allocator's blocks read at every 5th collection of generation 1
LARGE_GROWTH = 100_000  # blocks more than after start-up (or the last restoring freeze): the heap is large
UNFREEZE_SHARE = 8  # unfreeze once an eighth of what is frozen beyond the baseline has been freed
CHECK_EVERY = 30.0  # seconds between two counts of the frozen set (each walks all of it)
GROWING_SHARE = 4  # frees between two counts under a quarter of what was frozen meanwhile: the heap grows fast
FROZEN_AT_MOST = 600.0  # seconds frozen before an unfreeze whatever was freed (cycles cannot wait longer)

NORMAL, FROZEN, THAWED = "normal", "frozen", "thawed"


class Collector:
    """The hook's state: the mode, the baseline, and what went into and out of the frozen set while frozen."""

    def __init__(
        self, long_collection: float = LONG_COLLECTION, large_growth: int = LARGE_GROWTH,
        check_every: float = CHECK_EVERY, frozen_at_most: float = FROZEN_AT_MOST,
    ) -> None:
        self.long_collection = long_collection
        self.large_growth = large_growth
        self.check_every = check_every
        self.frozen_at_most = frozen_at_most
        self.mode = NORMAL
        self.asked = False  # normal: a full collection asked for (the heap is large); it freezes what it keeps
        self.blocks = 0  # normal: the allocator's blocks after start-up (or the last restoring freeze)
        self.baseline = 0  # objects frozen at start-up (or at the last restoring freeze)
        self.frozen = 0  # frozen: the frozen set's size at its last count
        self.added = 0  # frozen: objects frozen since that count
        self.freed = 0  # frozen: objects freed from the frozen set since the process went frozen
        self.share = UNFREEZE_SHARE  # unfreeze once the objects freed are 1/share of what is frozen beyond the baseline
        self.expected = 0  # thawed: the objects freed that brought the unfreeze (0: it came with FROZEN_AT_MOST)
        self.frozen_since = 0.0  # time.monotonic() of going frozen
        self.checked_at = 0.0  # time.monotonic() of the last count
        self._started = 0.0  # thread CPU time at the start of the full collection running

    def start(self) -> None:
        """Collect, freeze what survives (the baseline) and set the thresholds: what start-up made is never walked again."""
        gc.collect()
        gc.freeze()
        self.baseline = self.frozen = gc.get_freeze_count()
        self.mode, self.asked = NORMAL, False
        self.blocks = sys.getallocatedblocks()
        gc.set_threshold(*THRESHOLDS)

    def on_full_collection(self, phase: str, info: dict[str, Any]) -> None:
        """A full collection starts (``phase`` "start") or has ended ("stop", ``info`` as ``gc.callbacks`` gives it)."""
        if phase == "start":
            self._started = time.thread_time()
        else:
            self.full_collection_done(time.thread_time() - self._started, info["collected"])

    def generation_1_done(self) -> None:
        """A collection of generation 1 has ended: in normal mode, every PROBE_EVERY-th probes the heap."""
        if self.mode == NORMAL and not gc.get_count()[2] % PROBE_EVERY:
            self.probe()

    def probe(self) -> None:
        """Normal mode: has the heap grown large since start-up (or the last restoring freeze)? Then a full
        collection is asked for at once, to freeze what it keeps."""
        if self.mode != NORMAL or self.asked:
            return
        if sys.getallocatedblocks() - self.blocks >= self.large_growth:
            self.asked = True
            gc.set_threshold(*ASKED_THRESHOLDS)

    def full_collection_done(self, seconds: float, collected: int) -> None:
        """A full collection has just ended, having taken ``seconds`` of CPU and freed ``collected`` objects."""
        if self.mode == NORMAL:
            if not self.asked:
                return
            gc.freeze()  # the full collection asked for: the heap is large
            self._go_frozen()
            self.asked = False
            _say(
                "collector: the heap is large (%d objects beyond start-up after a full collection of %.0f ms): frozen;"
                " from now on a full collection walks only what is newer (thresholds %s)",
                self.frozen - self.baseline, seconds * 1000, _text(FROZEN_THRESHOLDS),
            )
        elif self.mode == FROZEN:
            now = time.monotonic()
            if now - self.checked_at >= self.check_every:
                count = gc.get_freeze_count()
                freed = self.frozen + self.added - count  # since the last count
                if freed * GROWING_SHARE >= self.added:  # not while the heap grows fast: see the module's docstring
                    self.freed += freed
                self.frozen, self.added, self.checked_at = count, 0, now
                by_frees = self.freed * self.share >= count - self.baseline
                if by_frees or now - self.frozen_since >= self.frozen_at_most:
                    gc.unfreeze()
                    self.mode = THAWED  # FROZEN_THRESHOLDS still: the full collection that frees the cycles comes soon
                    self.expected = self.freed if by_frees else 0
                    _say(
                        "collector: %d objects freed from the %d frozen beyond start-up%s: unfrozen; the next full"
                        " collection walks everything", self.freed, count - self.baseline,
                        "" if by_frees else f", {self.frozen_at_most:.0f} s frozen",
                    )
                    return
            self.added += len(gc.get_objects(2))  # what this collection kept: only what is newer than the last freeze
            gc.freeze()
        else:  # THAWED: this collection walked everything
            if self.expected:  # the frees were garbage's if it found as many cyclic objects, about
                self.share = UNFREEZE_SHARE if collected * 2 >= self.expected else UNFREEZE_SHARE // 2
            gc.freeze()
            count = gc.get_freeze_count()
            beyond = max(0, count - self.baseline)
            if seconds * beyond / max(1, count + collected) >= self.long_collection:  # still a large heap
                self._go_frozen(count)
                _say(
                    "collector: the full collection after the unfreeze took %.0f ms and freed %d objects; frozen"
                    " again what it kept (%d objects beyond start-up); the next unfreeze after frees of 1/%d of them",
                    seconds * 1000, collected, beyond, self.share,
                )
            else:  # the heap is small again: this freeze restores the start-up one
                self.baseline = self.frozen = count
                self.mode = NORMAL
                self.blocks = sys.getallocatedblocks()
                gc.set_threshold(*THRESHOLDS)
                _say(
                    "collector: the heap is small again (the full collection after the unfreeze freed %d objects and"
                    " kept %d beyond start-up): what it kept frozen, thresholds %s", collected, beyond, _text(THRESHOLDS),
                )

    def _go_frozen(self, count: int | None = None) -> None:
        """The process goes frozen, everything kept so far just frozen (``count``: the frozen set's size, if known)."""
        self.frozen = gc.get_freeze_count() if count is None else count
        self.added = self.freed = 0
        self.frozen_since = self.checked_at = time.monotonic()
        self.mode = FROZEN
        gc.set_threshold(*FROZEN_THRESHOLDS)


def _text(thresholds: tuple[int, int, int]) -> str:
    return ", ".join(map(str, thresholds))


def _say(message: str, *args: object) -> None:
    """One INFO line, from the event loop once the collection has ended (a hook that logs runs inside whatever
    allocation started the collection, possibly a log handler's own)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        log.info(message, *args)
    else:
        loop.call_soon(log.info, message, *args)


_installed: Collector | None = None


def _hook(phase: str, info: dict[str, Any]) -> None:
    """The ``gc.callbacks`` hook, called at the start and at the end of every collection: at a young one's (one
    every few dozen requests under plain traffic) it returns at once."""
    generation = info["generation"]
    if generation == 0 or _installed is None:
        return
    if generation == 2:
        _installed.on_full_collection(phase, info)
    elif phase == "stop":
        _installed.generation_1_done()


def install(collector: Collector | None = None) -> Collector:
    """Start ``collector`` (a new one with the module's settings by default) and hook it into ``gc.callbacks``
    (once however often this is called: a later call replaces the collector)."""
    global _installed
    collector = collector or Collector()
    collector.start()
    _installed = collector
    if _hook not in gc.callbacks:
        gc.callbacks.append(_hook)
    return collector


def uninstall() -> None:
    """Take the hook out of ``gc.callbacks`` (what is frozen stays frozen, the thresholds stay)."""
    global _installed
    _installed = None
    while _hook in gc.callbacks:
        gc.callbacks.remove(_hook)
