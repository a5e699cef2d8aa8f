"""The attempt policy: every decision an upstream attempt needs, in one place.

The failure types of :mod:`utils.upstream.failures` say what happened; this
module says what the node does about it. The attempt engine
(:meth:`utils.upstream.client.UpstreamClient._across`) and the router client
(:mod:`utils.router_client`) ask it, and nothing else decides:

* :meth:`Policy.retryable`: another attempt at the same provider may succeed
  (a connection failure, an upstream 429/502/503/504, or Anthropic's 529), up to UPSTREAM_RETRIES;
* :meth:`Policy.falls_back`: another provider could avoid it (anything but the
  request's own fault, 400/413/422, and the node's own refusals);
* :meth:`Policy.counts_against_circuit`: the provider looks unhealthy
  (connection failure, timeout, 5xx; not a 4xx, not a 429);
* :meth:`Policy.backoff`: the pause before a retry (doubling, with jitter; an
  upstream ``Retry-After`` wins; one longer than UPSTREAM_RETRY_MAX_WAIT is not
  waited for: :meth:`Policy.may_retry` says no);
* :meth:`Policy.cools_key` and :meth:`Policy.key_rest`: with a key pool, an
  upstream 401 or 429 rests that key (the 429's ``Retry-After`` up to
  :data:`MAX_KEY_REST`, else KEY_COOLDOWN) and the same attempt goes at once
  to the next key: no retry, no circuit failure, no fallback;
* :func:`retrying`: the router client's registration calls, retried on
  :func:`router_retryable` answers with the same doubling back-off.

:meth:`Policy.backoff` and :meth:`Policy.key_rest` read ``Retry-After`` with
:func:`~utils.upstream.failures.retry_after_seconds` (seconds or an HTTP-date;
anything else is ignored), so no delay they give is ever NaN or infinite.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from config import Settings
from utils.upstream.failures import (
    ConnectFailed,
    ConnectionLost,
    Forbidden,
    QueueTimeout,
    UpstreamFailure,
    UpstreamStatus,
    retry_after_seconds,
)

# An upstream answer worth another attempt at the same provider; 529 is Anthropic's "overloaded", its 503.
RETRY_STATUSES = frozenset((429, 502, 503, 504, 529))
FALLBACK_STATUSES = frozenset((401, 403, 404, 408, 429))  # 4xx another provider could avoid (and every 5xx)
RETRYABLE_FAILURES = (ConnectFailed, ConnectionLost)  # no answer, where a new connection may get one
NODE_REFUSALS = (Forbidden, QueueTimeout)  # the node's own refusals: no provider is to blame
KEY_REST_STATUSES = frozenset((401, 429))  # with a key pool: that key rests, the next one takes the attempt
MAX_KEY_REST = 300.0  # seconds: the longest upstream Retry-After a key rests for
MIN_KEY_REST = 1.0  # and the shortest (a "Retry-After: 0" key is not taken again in the same breath)
REGISTER_ATTEMPTS = 5  # tries per router registration call

T = TypeVar("T")
log = logging.getLogger("mira.upstream")


class Policy:
    """What to do after a failed attempt, with the numbers of one node's settings."""

    __slots__ = ("retries", "backoff_base", "key_cooldown", "max_wait")

    def __init__(self, settings: Settings) -> None:
        self.retries = settings.upstream_retries
        self.backoff_base = settings.retry_backoff
        self.key_cooldown = settings.key_cooldown
        self.max_wait = settings.upstream_retry_max_wait  # the longest Retry-After a retry waits for

    @staticmethod
    def retryable(failure: UpstreamFailure) -> bool:
        """Whether another attempt at the same provider may succeed."""
        if isinstance(failure, UpstreamStatus):
            return failure.status in RETRY_STATUSES
        return isinstance(failure, RETRYABLE_FAILURES)

    @staticmethod
    def falls_back(failure: UpstreamFailure) -> bool:
        """Whether another provider could avoid ``failure``: not the request's own (400, 413, 422), not the node's."""
        if isinstance(failure, UpstreamStatus):
            return failure.status in FALLBACK_STATUSES or failure.status >= 500
        return not isinstance(failure, NODE_REFUSALS)

    @staticmethod
    def counts_against_circuit(failure: UpstreamFailure) -> bool:
        """Whether ``failure`` says the provider is unhealthy: connection failures, timeouts, 5xx."""
        if isinstance(failure, UpstreamStatus):
            return failure.status >= 500
        return not isinstance(failure, NODE_REFUSALS)

    def may_retry(self, failure: UpstreamFailure, tried: int) -> bool:
        """Retry ``failure`` after ``tried`` retries of the same attempt?

        Not when the upstream's ``Retry-After`` asks for longer than
        UPSTREAM_RETRY_MAX_WAIT: the request goes on to its next fallback at
        once, or the upstream's answer (with that Retry-After) is the client's.
        """
        if tried >= self.retries or not self.retryable(failure):
            return False
        if isinstance(failure, UpstreamStatus) and failure.retry_after:
            seconds = retry_after_seconds(failure.retry_after)
            return seconds is None or seconds <= self.max_wait
        return True

    @staticmethod
    def cools_key(failure: UpstreamFailure) -> bool:
        """Whether ``failure`` rests the key that got it (asked only of a pool of two or more keys)."""
        return isinstance(failure, UpstreamStatus) and failure.status in KEY_REST_STATUSES

    def key_rest(self, failure: UpstreamStatus, now: float | None = None) -> float:
        """Seconds a key rests after ``failure``: a 429's ``Retry-After``, kept within [MIN_KEY_REST, MAX_KEY_REST].

        An HTTP-date counts as the seconds from ``now`` (the wall clock by
        default) to it. A 401, or a 429 without a ``Retry-After`` the node can
        read: KEY_COOLDOWN.
        """
        if failure.status == 429:
            seconds = retry_after_seconds(failure.retry_after, now)
            if seconds is not None:
                return min(max(seconds, MIN_KEY_REST), MAX_KEY_REST)
        return self.key_cooldown

    def backoff(self, tried: int, retry_after: str | None = None, now: float | None = None) -> float:
        """Seconds before retry number ``tried`` (1, 2, ...): an upstream ``Retry-After`` wins, up to the cap.

        ``retry_after`` is the header as the upstream sent it (seconds or an
        HTTP-date, as of ``now``, the wall clock by default); one that is
        neither is ignored and the ordinary doubling back-off, with jitter,
        applies.
        """
        seconds = retry_after_seconds(retry_after, now)
        if seconds is not None:
            return min(seconds, self.max_wait)
        return doubling(self.backoff_base, tried) * (0.5 + random.random() / 2)


def doubling(base: float, tried: int) -> float:
    """``base`` for the first retry, doubling for each one after."""
    return base * 2 ** (tried - 1)


def router_retryable(status: int) -> bool:
    """A router answer worth another attempt: none (599), a 429 or a 5xx."""
    return status == 599 or status == 429 or status >= 500


async def retrying(
    call: Callable[[], Awaitable[T]],
    again: Callable[[T], bool],
    base: float,
    on_retry: Callable[[T, int, float], None],
    attempts: int = REGISTER_ATTEMPTS,
) -> T:
    """``call`` until ``again`` says its result is final, at most ``attempts`` times, with doubling pauses.

    ``on_retry(result, attempt, delay)`` runs before each pause. The last
    result is returned whatever it is: the caller decides what a failure means.
    """
    result = await call()
    for attempt in range(1, attempts):
        if not again(result):
            break
        delay = doubling(base, attempt)
        on_retry(result, attempt, delay)
        await asyncio.sleep(delay)
        result = await call()
    return result
