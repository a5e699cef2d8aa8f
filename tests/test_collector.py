"""``utils.collector``: when a full collection's survivors are frozen, when they are unfrozen, and the start-up
freeze restored afterwards; driven by real collections of a heap built here (``gc.collect()``, automatic
collections off so that only the test's collections run)."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator

import pytest

from utils import collector
from utils.collector import ASKED_THRESHOLDS, FROZEN, FROZEN_THRESHOLDS, NORMAL, PROBE_EVERY, THAWED, THRESHOLDS, Collector

ACYCLIC = 8  # a stream's objects freed by reference counting when it ends: its list, and 7 lists in it
CYCLIC = 7  # and those in a reference cycle, which only a full collection frees


class Link:
    __slots__ = ("next", "__weakref__")

    def __init__(self) -> None:
        self.next: Link | None = None


def stream() -> list[object]:
    """A held stream's objects: what is freed by reference counting once it is let go, and a ring of CYCLIC links."""
    ring = [Link() for _ in range(CYCLIC)]
    for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
        a.next = b
    return [[[n] for n in range(ACYCLIC - 1)], ring[0]]


def rings(streams: list[list[object]]) -> list[weakref.ref[object]]:
    """A weak reference to each stream's ring: dead once the ring has been collected."""
    return [weakref.ref(s[1]) for s in streams]


def alive(refs: list[weakref.ref[object]]) -> int:
    return sum(1 for ref in refs if ref() is not None)


def grown(col: Collector) -> None:
    """As if the heap had grown large: the probe asks for a full collection, and it runs."""
    col.large_growth = 0
    col.probe()
    gc.collect()


@pytest.fixture(autouse=True)
def gc_state() -> Iterator[None]:
    """Automatic collections off during the test; thresholds, callbacks and the frozen set as they were after it."""
    assert gc.get_freeze_count() == 0  # nothing else in the test process freezes
    thresholds, callbacks, enabled = gc.get_threshold(), list(gc.callbacks), gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        collector.uninstall()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        gc.callbacks[:] = callbacks
        if enabled:
            gc.enable()
        gc.collect()


def test_install_freezes_start_up_and_hooks_in_once() -> None:
    first = collector.install(Collector())
    assert gc.get_threshold() == THRESHOLDS
    assert first.mode == NORMAL and first.baseline == gc.get_freeze_count() > 0
    second = collector.install(Collector())
    assert second.baseline >= first.baseline
    assert gc.callbacks.count(collector._hook) == 1
    collector.uninstall()
    assert collector._hook not in gc.callbacks


def test_a_small_heap_never_freezes() -> None:
    col = collector.install(Collector())  # the real threshold: 100,000 blocks
    held = [stream() for _ in range(2_000)]  # some 50,000 blocks
    for _ in range(3):
        col.probe()
        gc.collect()
    assert col.mode == NORMAL and not col.asked and gc.get_threshold() == THRESHOLDS
    assert gc.get_freeze_count() <= col.baseline  # nothing frozen since start-up
    del held


def test_a_large_heap_asks_for_a_full_collection_that_freezes_what_it_kept() -> None:
    col = collector.install(Collector(large_growth=30_000))
    few = [stream() for _ in range(200)]  # some 5,000 blocks
    col.probe()
    assert not col.asked and gc.get_threshold() == THRESHOLDS
    held = [stream() for _ in range(3_000)]  # some 70,000 blocks more
    gc.collect()  # a full collection not asked for: it freezes nothing; generation 1's collections counted from 0
    assert col.mode == NORMAL and not col.asked
    for _ in range(PROBE_EVERY - 1):
        gc.collect(1)
    assert not col.asked  # the probe runs at every PROBE_EVERY-th collection of generation 1 only
    gc.collect(1)
    assert col.asked and gc.get_threshold() == ASKED_THRESHOLDS
    gc.collect(0)
    assert col.mode == NORMAL  # young collections freeze nothing
    gc.collect()
    assert col.mode == FROZEN and not col.asked and gc.get_threshold() == FROZEN_THRESHOLDS
    assert gc.get_freeze_count() - col.baseline >= 3_200 * (ACYCLIC + CYCLIC)
    assert len(gc.get_objects(2)) == 0  # everything kept is frozen: the next full collection walks only what is newer
    more = [stream() for _ in range(1_000)]
    gc.collect()
    assert col.mode == FROZEN
    assert gc.get_freeze_count() - col.baseline >= 4_200 * (ACYCLIC + CYCLIC)
    assert len(gc.get_objects(2)) == 0
    del few, held, more


def test_an_eighth_freed_beyond_start_up_unfreezes_and_the_next_collection_frees_the_cycles(
    caplog: pytest.LogCaptureFixture,
) -> None:
    start_up = [stream() for _ in range(10_000)]  # frozen at start-up: ten times what is held later
    col = collector.install(Collector(long_collection=0.0, check_every=0.0))
    baseline = col.baseline
    held = [stream() for _ in range(1_000)]
    refs = rings(held)
    with caplog.at_level(logging.INFO, logger="mira.collector"):
        grown(col)
        assert col.mode == FROZEN
        beyond = gc.get_freeze_count() - baseline

        del held[:50]  # 50 x 9 objects freed (the stream's list too): well under an eighth of what is beyond
        gc.collect()
        assert col.mode == FROZEN
        assert alive(refs) == 1_000  # the ended streams' rings wait in the frozen set

        del held[:300]  # now 350 x 9 = 3,150 freed: over an eighth beyond start-up, a fiftieth of everything frozen
        assert col.freed * 8 < beyond
        gc.collect()
        assert col.mode == THAWED and gc.get_freeze_count() == 0
        assert col.freed * 8 >= col.frozen - baseline  # the frozen set as counted at this collection
        assert col.freed < (baseline + beyond) // 20
        assert alive(refs) == 1_000  # unfrozen, not yet collected

        gc.collect()  # walks everything: the ended streams' rings are collected
        assert alive(refs) == 650
        assert col.mode == FROZEN  # every full collection counts as long here: what it kept is frozen again
        assert gc.get_freeze_count() >= baseline + 650 * (ACYCLIC + CYCLIC)
    lines = [r.getMessage() for r in caplog.records if r.name == "mira.collector"]
    assert len(lines) == 3
    assert "the heap is large" in lines[0] and "unfrozen" in lines[1] and "frozen again" in lines[2]
    del start_up


def test_what_requests_hold_for_a_moment_does_not_count_while_the_heap_grows_fast() -> None:
    """Each full collection also freezes what is alive for a moment (here 1,500 objects, freed right after it);
    while the heap grows (2,000 streams, then 500 more each time) those frees are not counted, though they add up
    to more than an eighth of what is frozen; once streams end without the heap growing, frees count again."""
    col = collector.install(Collector(long_collection=0.0, check_every=0.0))
    held = [stream() for _ in range(2_000)]
    moment: list[list[object]] = []
    grown(col)
    assert col.mode == FROZEN
    transient = 0
    for _ in range(20):
        held += [stream() for _ in range(500)]
        moment = [[[], []] for _ in range(500)]  # alive during the collection, freed right after it
        gc.collect()
        moment.clear()
        transient += 1_500
        assert col.mode == FROZEN and col.freed < 1_000  # the first count: what died since going frozen
    assert transient * 8 >= gc.get_freeze_count() - col.baseline  # counted, they would have unfrozen
    refs = rings(held)
    del held[:3_000]  # 3,000 of 12,000 streams end: 27,000 freed
    gc.collect()
    assert col.mode == THAWED
    gc.collect()
    assert alive(refs) == 9_000


def test_an_unfreeze_that_found_no_garbage_makes_the_next_one_wait_for_twice_as_many_frees() -> None:
    col = collector.install(Collector(long_collection=0.0, check_every=0.0))
    held = [stream() for _ in range(2_000)]
    lists = [[[n] for n in range(7)] for _ in range(1_000)]  # acyclic: 8,000 objects freed by reference counting
    grown(col)
    assert col.mode == FROZEN and col.share == 8
    lists.clear()
    gc.collect()
    assert col.mode == THAWED
    gc.collect()  # walks everything and finds nothing to collect
    assert col.mode == FROZEN and col.share == 4
    del held[:700]  # 6,300 freed: over an eighth of the 32,000 or so frozen beyond start-up, under a quarter
    gc.collect()
    assert col.mode == FROZEN
    del held[:500]  # 10,800 freed: over a quarter
    gc.collect()
    assert col.mode == THAWED
    gc.collect()  # finds the 1,200 ended streams' rings
    assert col.mode == FROZEN and col.share == 8


def test_once_the_traffic_has_gone_the_start_up_freeze_is_restored() -> None:
    col = collector.install(Collector(long_collection=0.0, check_every=0.0))
    held = [stream() for _ in range(2_000)]
    refs = rings(held)
    grown(col)
    assert col.mode == FROZEN
    col.long_collection = collector.LONG_COLLECTION  # from here on the real threshold decides
    held.clear()  # every stream ends
    gc.collect()
    assert col.mode == THAWED
    gc.collect()  # walks everything (start-up included) and frees the rings
    assert alive(refs) == 0
    assert col.mode == NORMAL and gc.get_threshold() == THRESHOLDS
    assert col.baseline == gc.get_freeze_count() and len(gc.get_objects(2)) == 0  # start-up frozen again
    gc.collect()
    assert col.mode == NORMAL and gc.get_freeze_count() <= col.baseline


def test_the_frozen_set_is_counted_at_most_every_check_every_and_unfrozen_after_frozen_at_most() -> None:
    col = collector.install(Collector(long_collection=0.0, check_every=3600.0))
    held = [stream() for _ in range(1_000)]
    grown(col)
    assert col.mode == FROZEN
    held.clear()
    gc.collect()
    assert col.mode == FROZEN  # not counted yet: everything freed is still unnoticed
    col.check_every, col.frozen_at_most = 0.0, 0.0
    more = [stream() for _ in range(1_000)]
    gc.collect()
    assert col.mode == THAWED
    del more


def test_under_steady_churn_the_cycles_of_ended_streams_do_not_pile_up() -> None:
    """2,000 streams held; 200 end and 200 open before each full collection, 30 times (three times the held
    number): the frozen set and the rings not yet collected stay bounded, and the node keeps going frozen."""
    col = collector.install(Collector(long_collection=0.0, check_every=0.0))
    held = [stream() for _ in range(2_000)]
    refs = rings(held)
    grown(col)
    unfreezes, most_frozen, most_rings = 0, 0, 0
    for _ in range(30):
        del held[:200]
        fresh = [stream() for _ in range(200)]
        refs += rings(fresh)
        held += fresh
        was = col.mode
        gc.collect()
        unfreezes += was == FROZEN and col.mode == THAWED
        most_frozen = max(most_frozen, gc.get_freeze_count() - col.baseline)
        most_rings = max(most_rings, alive(refs))
    per_stream = ACYCLIC + 1 + CYCLIC  # the list that holds it too
    assert unfreezes >= 3
    # a stream's 7 cyclic objects against its 9 freed by reference counting: the unfreeze comes once about a
    # fifth of the held streams have ended, so at most some 2,000 x 0.2 rings wait (and the 200 of one round)
    assert most_rings <= 2_000 + 600
    assert most_frozen <= 2_000 * per_stream + 600 * CYCLIC + len(refs) + 2_000  # the weak references are frozen too
    del held
