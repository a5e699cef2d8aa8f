"""``utils.deadlines.Deadlines``: many deadlines on one loop timer."""

from __future__ import annotations

import asyncio

import pytest

from utils.deadlines import Deadlines

pytestmark = pytest.mark.gen_test(timeout=10)


async def test_a_deadline_not_met_runs_its_callback_and_a_met_one_never_does() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    fired: dict[str, float] = {}
    late = loop.create_future()
    start = loop.time()
    deadlines.add("met", 0.05, lambda: fired.setdefault("met", loop.time()))
    deadlines.add("missed", 0.1, lambda: (fired.setdefault("missed", loop.time()), late.set_result(None)))
    deadlines.discard("met")
    deadlines.discard("never added")
    await late
    assert "met" not in fired
    assert fired["missed"] - start >= 0.1 - 1e-9  # uvloop's clock is in whole ms: 0.1 s apart can read 0.0999...
    assert len(deadlines) == 0


async def test_each_deadline_fires_in_its_own_time_whatever_the_order_of_adding() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    order: list[str] = []
    all_done = loop.create_future()

    def fire(name: str) -> None:
        order.append(name)
        if len(order) == 3:
            all_done.set_result(None)

    deadlines.add("c", 0.15, lambda: fire("c"))
    deadlines.add("a", 0.05, lambda: fire("a"))  # earlier than the armed timer: re-armed
    deadlines.add("b", 0.1, lambda: fire("b"))
    await all_done
    assert order == ["a", "b", "c"]


async def test_a_callback_may_discard_others_and_add_new_ones() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def first() -> None:
        deadlines.discard("second")
        deadlines.add("third", 0.01, lambda: done.set_result("third"))

    deadlines.add("first", 0.01, first)
    deadlines.add("second", 0.01, lambda: done.set_result("second"))
    assert await done == "third"


async def test_a_deadline_under_half_a_millisecond_away_leaves_the_set_usable() -> None:
    # uvloop's call_at runs a time under 0.5 ms away as call_soon, whose Handle has no when(): the set must
    # not read the due time back from its handle (the suite runs on uvloop, the node's loop)
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    deadlines.add("soon", 0.0001, lambda: None)
    deadlines.add("later", 0.05, lambda: None)  # compared with the armed timer's time
    deadlines.add("earlier", 0.0002, lambda: done.set_result(None))
    await done
    assert len(deadlines) == 1
    deadlines.discard("later")
