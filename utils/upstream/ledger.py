"""Provider keys, limits and budgets: what the node may spend, and the state that decides it.

The attempt engine asks one small interface, :class:`Ledger`, before each call
to a provider that has a key pool (two or more keys) or limits
(PROVIDER_LIMITS_FILE), and tells it what happened after:

* :meth:`Ledger.take`: check the provider's limits, pick its next key that is
  not cooling, and count the call, as one decision: a :class:`Ticket` with the
  key's position, or the reason it is refused and the seconds until it would
  not be;
* :meth:`Ledger.cool`: a key got an upstream 401 or 429; rest it;
* :meth:`Ledger.spend`: the tokens an answer reported (``tpm``, ``tokens_per_day``) and its cost
  (``usd_per_day``, when PRICES_FILE prices it).

The node-wide entry ``"*"`` of PROVIDER_LIMITS_FILE (``tokens_per_day``, ``usd_per_day``) is one more book,
checked by every provider's :meth:`Ledger.take` after the provider's own, and spent by every call.

:class:`LocalLedger` keeps that state in this process. A shared one (Redis)
implements the same three calls, each in one round trip. Providers with one key
and no limits never reach the ledger: the engine checks ``Target.gated``.

Windows are kept in one-second steps: ``rpm`` counts the calls started in the
last 60 seconds, ``tpm`` the tokens reported in them; ``tokens_per_day`` and
``usd_per_day`` count from 00:00 UTC. Times are the wall clock (the ``clock`` a
:class:`LocalLedger` is made with, :func:`time.time` by default; a shared ledger
reads the same one), so that nodes sharing the state agree on them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple, Protocol

from config import NODE_WIDE, ProviderLimits
from models.errors import ApiError
from utils import metrics

WINDOW = 60  # seconds of an rpm or tpm window
DAY = 86400
KEYS_COOLING = "keys_cooling"  # Ticket.refused when every key of the pool is cooling
# Ticket.refused when the node-wide entry ("*") refuses the call
NODE_TOKENS, NODE_USD = "node_tokens_per_day", "node_usd_per_day"
BUDGETS = ("tokens_per_day", "usd_per_day", NODE_TOKENS, NODE_USD)  # refused until the next 00:00 UTC
CODES = {
    "rpm": "rate_limited", "tpm": "rate_limited", KEYS_COOLING: "provider_keys_cooling",
    **dict.fromkeys(BUDGETS, "budget_exceeded"),
}

log = logging.getLogger("mira.upstream")


class Ticket(NamedTuple):
    """The ledger's answer to one call: the key to use, or why not."""

    key: int = 0  # position of the key in the provider's pool (0-based)
    refused: str = ""  # "" (go), "rpm", "tpm", one of BUDGETS, or KEYS_COOLING
    retry_after: int = 0  # whole seconds until the call would not be refused


GO = Ticket()


class Ledger(Protocol):
    """The state behind key pools, limits and budgets (see the module docstring).

    :meth:`take` answers a :class:`Ticket` at once (in process) or an
    awaitable of one (a shared ledger's round trip): the caller awaits only
    what is not a ticket, so the in-process ledger costs no coroutine.
    """

    def take(self, provider: str, session: str = "") -> Ticket | Awaitable[Ticket]: ...

    async def cool(self, provider: str, key: int, seconds: float) -> None: ...

    def spend(self, provider: str, tokens: int, cost: float | None = None) -> None: ...


def refusal(provider: str, ticket: Ticket) -> ApiError:
    """The 429 a refused call answers with, when no fallback is left."""
    reason, seconds = ticket.refused, ticket.retry_after
    if reason == KEYS_COOLING:
        message = f"Every key of {provider} API is cooling after rate-limit or auth errors; retry in {seconds}s"
    elif reason == "tokens_per_day":
        message = f"The daily token budget (tokens_per_day) of {provider} API is spent; it renews at 00:00 UTC"
    elif reason == "usd_per_day":
        message = f"The daily dollar budget (usd_per_day) of {provider} API is spent; it renews at 00:00 UTC"
    elif reason in (NODE_TOKENS, NODE_USD):
        which = "token budget (tokens_per_day" if reason == NODE_TOKENS else "dollar budget (usd_per_day"
        message = f"The node's daily {which} of \"*\") is spent, for every provider; it renews at 00:00 UTC"
    else:
        message = f"The {reason} limit of {provider} API is reached on this node; retry in {seconds}s"
    return ApiError(429, message, type="rate_limit_error", code=CODES[reason], headers={"Retry-After": str(seconds)})


def seconds_until(moment: float, now: float) -> int:
    """Whole seconds from ``now`` to ``moment``, at least 1."""
    return max(1, math.ceil(moment - now))


class _Book:
    """One provider's state in this process."""

    __slots__ = (
        "name", "keys", "tickets", "turn", "cool_until", "limits", "steps", "calls", "tokens", "day", "today", "show_today",
        "usd", "show_usd",
    )

    def __init__(self, name: str, keys: int, limits: ProviderLimits | None) -> None:
        self.name = name
        self.keys = keys
        self.tickets = [Ticket(key) for key in range(keys)]  # the answer for each key, made once
        self.turn = 0  # the position the next call starts looking from
        self.cool_until = [0.0] * keys  # wall-clock time each key is free again
        self.limits = limits
        self.steps: deque[list[int]] = deque()  # [second, calls, tokens] of the last WINDOW seconds, oldest first
        self.calls = 0  # sums over ``steps``
        self.tokens = 0
        self.day = -1  # days since the epoch that ``today`` and ``usd`` count
        self.today = 0
        self.usd = 0.0  # the cost of its priced calls today
        self.show_today = metrics.tokens_today_setter(name) if limits is not None and limits.tokens_per_day is not None else None
        self.show_usd: Callable[[float], None] | None = None  # mira_cost_today_usd, from its first priced call

    def slide(self, now: float) -> None:
        """Drop the steps that left the window, and yesterday's count."""
        steps, oldest = self.steps, int(now) - WINDOW
        while steps and steps[0][0] <= oldest:
            _, calls, tokens = steps.popleft()
            self.calls -= calls
            self.tokens -= tokens
        day = int(now // DAY)
        if day != self.day:
            self.new_day(day)

    def new_day(self, day: int) -> None:
        self.day, self.today, self.usd = day, 0, 0.0
        if self.show_today is not None:
            self.show_today(0)
        if self.show_usd is not None:
            self.show_usd(0)

    def step(self, now: float) -> list[int]:
        second = int(now)
        steps = self.steps
        if not steps or steps[-1][0] != second:
            steps.append([second, 0, 0])
        return steps[-1]

    def room_at(self, field: int, limit: int) -> float:
        """When the window's sum of ``field`` (1 calls, 2 tokens) drops below ``limit``."""
        left = self.calls if field == 1 else self.tokens
        for step in self.steps:
            left -= step[field]
            if left < limit:
                return step[0] + WINDOW
        return (self.steps[-1][0] if self.steps else 0) + WINDOW

    def check(self, now: float) -> Ticket:
        """Refuse when a limit is reached (no change), else GO."""
        limits = self.limits
        if limits is None:
            return GO
        if limits.tokens_per_day is not None and self.today >= limits.tokens_per_day:
            return Ticket(0, "tokens_per_day", seconds_until((self.day + 1) * DAY, now))
        if limits.usd_per_day is not None and self.usd >= limits.usd_per_day:
            return Ticket(0, "usd_per_day", seconds_until((self.day + 1) * DAY, now))
        if limits.rpm is not None and self.calls >= limits.rpm:
            return Ticket(0, "rpm", seconds_until(max(self.room_at(1, limits.rpm), now + 1), now))
        if limits.tpm is not None and self.tokens >= limits.tpm:
            return Ticket(0, "tpm", seconds_until(max(self.room_at(2, limits.tpm), now + 1), now))
        return GO


def session_key(session: str, keys: int) -> int:
    """The position of a session's key in a pool of ``keys``: a hash every process and node agrees on."""
    return zlib.crc32(session.encode("utf-8", "surrogatepass")) % keys


class LocalLedger:
    """Key pools, limits and budgets kept in this process (per worker)."""

    def __init__(
        self, pools: Mapping[str, int], limits: Mapping[str, ProviderLimits], clock: Callable[[], float] = time.time
    ) -> None:
        """``pools``: provider -> number of keys; ``limits``: PROVIDER_LIMITS_FILE's entries (``"*"`` too)."""
        self.clock = clock
        self.books = {name: _Book(name, max(keys, 1), limits.get(name)) for name, keys in pools.items()}
        node_limits = limits.get(NODE_WIDE)
        # the node-wide entry's book: its day's tokens and cost, every provider's calls together
        self.node = _Book(NODE_WIDE, 1, node_limits) if node_limits is not None else None
        self._timers: dict[tuple[str, int], asyncio.TimerHandle] = {}
        for name, book in self.books.items():  # every series there from the start, at rest
            for key in range(book.keys if book.keys > 1 else 0):
                metrics.key_cooling(name, key + 1, False)
        budgeted = [*self.books.values(), self.node] if self.node is not None else list(self.books.values())
        for entry in budgeted:  # the day's counts of the budgets, and the dollar budgets themselves
            if entry.limits is None:
                continue
            if entry.limits.tokens_per_day is not None:
                metrics.tokens_today(entry.name, 0)
            if entry.limits.usd_per_day is not None:
                metrics.budget_usd(entry.name, entry.limits.usd_per_day)
                entry.show_usd = metrics.cost_today_setter(entry.name)
                entry.show_usd(0)

    def take(self, provider: str, session: str = "") -> Ticket:
        """Check the limits, pick the key, count the call (the shared ledger decides here while Redis is away).

        A call that names a ``session`` gets the session's key (:func:`session_key`) while that key is
        not cooling, so the provider's prompt cache (per key) keeps hitting; other calls take the keys in turn.
        """
        book = self.books[provider]
        now = self.clock()
        book.slide(now)
        ticket = book.check(now)
        if ticket.refused:
            return ticket
        node = self.node
        if node is not None:
            ticket = self.check_node(node, now)
            if ticket.refused:
                return ticket
        key = 0
        if book.keys > 1:
            until = book.cool_until
            pinned = session_key(session, book.keys) if session else -1
            if pinned >= 0 and until[pinned] <= now:
                key = pinned  # the session's own key
            else:
                for offset in range(book.keys):
                    key = (book.turn + offset) % book.keys
                    if until[key] <= now:
                        break
                else:
                    return Ticket(0, KEYS_COOLING, seconds_until(min(until), now))
                book.turn = key + 1
        self._count(book, now)
        return book.tickets[key]

    def count(self, provider: str) -> None:
        """Count a call another ledger allowed (the shared one keeps this one ready for when Redis is away)."""
        book = self.books[provider]
        now = self.clock()
        book.slide(now)
        self._count(book, now)

    @staticmethod
    def check_node(node: _Book, now: float) -> Ticket:
        """The node-wide budgets (``"*"``): refused once the day's tokens or cost reach them, else GO."""
        node.slide(now)
        limits = node.limits
        assert limits is not None
        if limits.tokens_per_day is not None and node.today >= limits.tokens_per_day:
            return Ticket(0, NODE_TOKENS, seconds_until((node.day + 1) * DAY, now))
        if limits.usd_per_day is not None and node.usd >= limits.usd_per_day:
            return Ticket(0, NODE_USD, seconds_until((node.day + 1) * DAY, now))
        return GO

    @staticmethod
    def _count(book: _Book, now: float) -> None:
        limits = book.limits
        if limits is not None and limits.rpm is not None:
            book.step(now)[1] += 1
            book.calls += 1

    async def cool(self, provider: str, key: int, seconds: float) -> None:
        self.cool_now(provider, key, seconds)

    def cool_now(self, provider: str, key: int, seconds: float) -> None:
        book = self.books[provider]
        book.cool_until[key] = max(book.cool_until[key], self.clock() + seconds)
        self.show_cooling(provider, key, seconds)

    def show_cooling(self, provider: str, key: int, seconds: float) -> None:
        """``mira_provider_key_cooling`` is 1 for ``seconds`` (measured on the loop's clock)."""
        metrics.key_cooling(provider, key + 1, True)
        timer = self._timers.pop((provider, key), None)
        if timer is not None:
            timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timers[(provider, key)] = loop.call_later(seconds, self._rested, provider, key)

    def _rested(self, provider: str, key: int) -> None:
        self._timers.pop((provider, key), None)
        metrics.key_cooling(provider, key + 1, False)

    def spend(self, provider: str, tokens: int, cost: float | None = None, show: bool = True) -> None:
        """An answer's tokens (its provider's ``tpm`` and ``tokens_per_day``) and cost (None: unpriced), and the
        node-wide entry's day when there is one. ``show``: the day's counts go to ``mira_tokens_today`` and
        ``mira_cost_today_usd`` (not while a shared ledger shows Redis's counts there)."""
        book = self.books[provider]
        limits = book.limits
        now = self.clock()
        if limits is not None and tokens > 0:
            if limits.tpm is not None:
                book.step(now)[2] += tokens  # steps that left the window go at the next take
                book.tokens += tokens
            if limits.tokens_per_day is not None:
                self._today(book, now, tokens, None, show)
        if cost is not None:
            self._today(book, now, 0, cost, show)
        node = self.node
        if node is not None:
            self._today(node, now, tokens, cost, show)

    @staticmethod
    def _today(book: _Book, now: float, tokens: int, cost: float | None, show: bool) -> None:
        """Add to a book's counts of the day (a new day starts them from 0)."""
        day = int(now // DAY)
        if day != book.day:
            book.new_day(day)
        if tokens > 0:
            book.today += tokens
            if show and book.show_today is not None:
                book.show_today(book.today)
        if cost is not None:
            book.usd += cost
            if show:
                if book.show_usd is None:
                    book.show_usd = metrics.cost_today_setter(book.name)
                book.show_usd(book.usd)
