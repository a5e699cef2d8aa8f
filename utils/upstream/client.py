"""The upstream client: every call to a provider goes through here.

One :class:`UpstreamClient` per process, on one :class:`~utils.upstream.transport.Transport`
(pooled keep-alive connections). JSON calls and streams go through the same
attempt engine (:meth:`UpstreamClient._across`): an attempt either
returns or raises a typed :class:`~utils.upstream.failures.UpstreamFailure`;
what is retried, what falls back and what counts against a circuit is
decided by :class:`~utils.upstream.policy.Policy`, and what is left is
turned into the caller's ``ApiError`` in one place
(:func:`~utils.upstream.failures.api_error`). A stream raises only while
nothing has reached the client; after its first byte, how it ended is
reported in its :class:`~utils.upstream.relay.StreamResult`.

Both can be cancelled through a :class:`Cancel` token (the client went away,
or the drain ran out of time): the libcurl transfer is aborted at once, even
when the upstream is silent, and the call raises
:class:`~utils.upstream.failures.Cancelled`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from config import Settings
from models.errors import ApiError
from utils import metrics
from utils.cost import Prices, unpriced_model
from utils.redact import Redactor
from utils.upstream.failures import (
    SHUTDOWN,
    Cancelled,
    InvalidStatus,
    QueueTimeout,
    TimedOut,
    UpstreamFailure,
    UpstreamStatus,
    api_error,
)
from utils.upstream.guard import AddressGuard
from utils.upstream.ledger import KEYS_COOLING, Ledger, LocalLedger, Ticket, refusal
from utils.upstream.policy import Policy
from utils.upstream.providers import Attempt, Target
from utils.upstream.relay import Relay, StreamResult, StreamSink
from utils.upstream.routing import Circuit, provider_unavailable
from utils.upstream.transport import Reply, Transfer, Transport, UpstreamCall, failure_of
from utils.upstream.usage import Usage

log = logging.getLogger("mira.upstream")

_MEDIA_TYPE = re.compile(r"^[\w.+-]+/[\w.+-]+(\s*;\s*[\w.+-]+=(\"[\w .+/-]*\"|[\w.+/-]+))*$")
T = TypeVar("T")


def passable(status: int) -> bool:
    """Whether an upstream status can be passed on: 2xx with a body (not 204), or 4xx/5xx.

    1xx as a final answer, 204, 304 and every other 3xx (the node follows no
    redirect), and anything outside 100-599 are not answers a client can use.
    """
    return (200 <= status < 300 and status != 204) or 400 <= status <= 599


_media_types: dict[str, str] = {}


def media_type(raw: str | None, redact: Redactor) -> str:
    """The Content-Type of an upstream JSON answer as passed on: a plain media type, else JSON.

    Upstream header text never goes back as it is (it could carry anything);
    the few distinct values seen are remembered, so this costs a dict look-up.
    """
    if not raw:
        return "application/json"
    known = _media_types.get(raw)
    if known is None:
        plain = len(raw) <= 100 and _MEDIA_TYPE.match(raw) and not redact.found_in(raw)
        known = raw if plain else "application/json"
        if len(_media_types) < 64:
            _media_types[raw] = known
    return known


class Cancel:
    """Cancels the upstream transfers of one client request.

    The handler calls :meth:`cancel` when its client disconnects (the drain,
    with reason :data:`SHUTDOWN`, when its time ran out); every transfer
    started under this token is aborted and a queued one is refused before it
    reaches the upstream.
    """

    __slots__ = ("cancelled", "reason", "trace", "_transfers", "_sleepers")

    def __init__(self) -> None:
        self.cancelled = False
        self.reason = ""
        self.trace: Any = None  # the request's utils.spans.RequestTrace while tracing is on: each attempt's span
        self._transfers: set[Transfer] = set()
        self._sleepers: list[asyncio.Future[None]] = []  # the back-off pauses under way (see sleep)

    def cancel(self, reason: str = "client disconnected") -> None:
        if self.cancelled:
            return
        self.cancelled = True
        self.reason = reason
        for transfer in list(self._transfers):
            transfer.abort()
        for sleeper in self._sleepers:
            if not sleeper.done():
                sleeper.set_result(None)

    async def sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, or only until this token is cancelled; then raise :class:`Cancelled` if it was."""
        self.check()
        loop = asyncio.get_running_loop()
        sleeper: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(delay, _wake, sleeper)
        self._sleepers.append(sleeper)
        try:
            await sleeper
        finally:
            timer.cancel()
            self._sleepers.remove(sleeper)
        self.check()

    @property
    def shutting_down(self) -> bool:
        """Cancelled by the drain (SHUTDOWN_TIMEOUT ran out), not by the client."""
        return self.reason == SHUTDOWN

    def check(self) -> None:
        """Raise :class:`Cancelled` if this token has been cancelled."""
        if self.cancelled:
            raise Cancelled(self.reason)

    def transfer(self) -> Transfer:
        """A new transfer that this token aborts."""
        return Transfer(self._transfers)


def _wake(sleeper: asyncio.Future[None]) -> None:
    if not sleeper.done():
        sleeper.set_result(None)


@dataclass
class UpstreamResponse:
    """A buffered upstream answer with a 2xx status."""

    status: int
    body: bytes
    content_type: str
    usage: Usage | None = None
    cost: float | None = None  # USD, when PRICES_FILE prices the answer


def _name(error: ApiError, attempt: Attempt) -> ApiError:
    """Mark an error with the model it is the answer of (X-Mira-Model), when the attempt names one."""
    if attempt.model_id:
        error.headers["X-Mira-Model"] = attempt.model_id
    return error


class UpstreamClient:
    """The process's one way out to the providers."""

    def __init__(
        self,
        settings: Settings,
        redactor: Redactor,
        circuit_of: Callable[[Target], Circuit | None] | None = None,
        on_usage: Callable[[Attempt, Usage], float | None] | None = None,
        ledger: Ledger | None = None,
        prices: Prices | None = None,
    ) -> None:
        # libcurl's verbose trace (Tornado turns it on at DEBUG) prints request
        # headers, Authorization included: never let it run.
        logging.getLogger("tornado.curl_httpclient").setLevel(logging.INFO)
        self.settings = settings
        self.policy = Policy(settings)
        self.redact = redactor
        self.transport = Transport(settings.upstream_max_connections, settings.upstream_ca_bundle)
        self.loop = self.transport.loop
        self.circuit_of = circuit_of or (lambda target: None)
        self.on_usage = on_usage  # token accounting (metrics) of every answer that reports usage; its cost
        self.prices = prices  # PRICES_FILE (None: unset): a call under a dollar budget needs a price
        # key pools, limits and budgets of the gated targets (an empty one when none is gated)
        self.ledger: Ledger = ledger if ledger is not None else LocalLedger({}, {})

    def idle(self) -> bool:
        """No transfer running or waiting for a slot."""
        return self.transport.idle()

    async def aclose(self, timeout: float = 1.0) -> None:
        """Close the client once aborted transfers have wound down (at most ``timeout`` s).

        Closing libcurl's multi handle under a running transfer makes Tornado
        log a traceback; aborted transfers end within a few IOLoop turns.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.idle() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        self.transport.close()

    # -- public calls -------------------------------------------------------------------

    async def complete(self, attempt: Attempt, cancel: Cancel | None = None) -> UpstreamResponse:
        """POST one attempt and return the 2xx answer; raise ``ApiError`` (or :class:`Cancelled`) otherwise."""
        response, _ = await self.complete_plan((attempt,), cancel)
        return response

    async def complete_plan(self, plan: Iterable[Attempt], cancel: Cancel | None = None) -> tuple[UpstreamResponse, Attempt]:
        """:meth:`complete` on the first attempt that answers; the answer and that attempt."""
        response, attempt = await self._across(plan, self._attempt_json, cancel)
        if response.usage is not None:
            response.cost = self._used(attempt, response.usage)
        return response, attempt

    async def stream_plan(
        self, plan: Iterable[Attempt], sink: StreamSink, cancel: Cancel | None = None
    ) -> tuple[StreamResult, Attempt]:
        """Relay the first attempt's stream that answers to ``sink``, chunk by chunk.

        Before the first byte reaches the sink an upstream failure raises
        ``ApiError`` (after retries and fallbacks) so that the handler can
        answer an ordinary JSON error. After it, failures are reported in the
        result (``outcome`` and ``error``) and the handler ends the stream.
        """
        result = StreamResult()

        def try_once(attempt: Attempt, cancel: Cancel | None) -> Awaitable[StreamResult]:
            result.model_id = attempt.model_id
            return self._attempt_stream(attempt, sink, result, cancel)

        result, attempt = await self._across(plan, try_once, cancel)
        if result.usage is not None:
            result.cost = self._used(attempt, result.usage)
        return result, attempt

    def _used(self, attempt: Attempt, usage: Usage) -> float | None:
        """An answer's reported tokens: metrics and cost (None: unpriced, or no PRICES_FILE), and the provider's
        limits and budgets when it has any; the cost."""
        cost = self.on_usage(attempt, usage) if self.on_usage is not None else None
        if attempt.target.limited:
            self.ledger.spend(attempt.target.label, usage.prompt + usage.completion, cost)
        return cost

    # -- the attempt engine ------------------------------------------------------------

    async def _across(
        self, plan: Iterable[Attempt], try_once: Callable[[Attempt, Cancel | None], Awaitable[T]], cancel: Cancel | None
    ) -> tuple[T, Attempt]:
        """Try each attempt in turn (skipping open circuits) until one answers; retry each as allowed.

        An attempt either returns or raises an :class:`UpstreamFailure`; the
        policy says whether it is tried again (with back-off), whether it
        counts against the provider's circuit (once that opens the provider is
        not tried again), and whether the next attempt may avoid it; one that is
        the request's own (400, 413, 422) ends the search. When every attempt
        fails, the primary's error is raised, with ``X-Mira-Model``.

        A gated target (a key pool or limits) asks the ledger before each call:
        it names the key, or refuses the call, which is then never sent and is
        skipped like an open circuit. With a pool, a 401 or 429 rests that key
        and the same attempt goes to the next one, using no retry.
        """
        first: ApiError | None = None
        previous: Attempt | None = None
        policy, ledger = self.policy, self.ledger
        trace = cancel.trace if cancel is not None else None  # tracing on: a CLIENT span per attempt
        for attempt in plan:
            target = attempt.target
            circuit = self.circuit_of(target)
            if circuit is not None and not circuit.allow():
                error = provider_unavailable(circuit)
            else:
                if previous is not None:
                    metrics.fallback(previous.target.label, target.label)
                    log.info("falling back from %s to %s", previous.model_id, attempt.model_id)
                tried = switches = 0
                key = 0
                while True:
                    if target.gated:
                        if target.usd_budget and (self.prices is None or self.prices.of(target.label, attempt.model_id) is None):
                            # a dollar budget cannot count a call it has no price for: refused, never sent
                            error = unpriced_model(attempt.model_id, target.usd_budget)
                            break
                        # a key pool or limits: the ledger picks the key, or refuses the call before it is sent
                        ticket = ledger.take(target.label, attempt.session)
                        if not isinstance(ticket, Ticket):
                            ticket = await ticket  # a shared ledger's round trip
                        if ticket.refused:
                            error = self._refused(target, ticket)
                            break
                        key = ticket.key
                        if target.pool:
                            attempt = attempt._replace(target=target.pool[key])
                    if trace is None:
                        call = try_once(attempt, cancel)
                    else:
                        pooled = key + 1 if target.pool else 0  # the key's position (mira.key)
                        call = trace.attempt(try_once, attempt, cancel, tried, previous is not None, pooled)
                    try:
                        value = await call
                    except UpstreamFailure as failure:
                        if target.pool and policy.cools_key(failure) and switches < len(target.pool):
                            assert isinstance(failure, UpstreamStatus)
                            switches += 1
                            await self._rest_key(target, key, failure)
                            if cancel is not None:
                                cancel.check()  # the client may have gone while the key was put to rest
                            continue  # the same attempt on the next key: no retry, no circuit failure
                        if circuit is not None and policy.counts_against_circuit(failure):
                            circuit.failure()
                        if policy.may_retry(failure, tried) and (circuit is None or circuit.up):
                            tried += 1
                            await self._pause_before_retry(target, failure, tried, cancel)
                            continue
                        error = api_error(failure, self.redact)
                        if isinstance(failure, UpstreamStatus):
                            self._keep_body(error, failure, target)
                        if not policy.falls_back(failure):
                            if first is None:
                                _name(error, attempt)
                            raise first or error from None
                        break
                    if circuit is not None:
                        if isinstance(value, StreamResult) and value.outcome == "upstream_failed":
                            circuit.failure()
                        else:
                            circuit.success()
                    return value, attempt
            if first is None:
                first = _name(error, attempt)
            previous = attempt
        assert first is not None, "a plan has at least one attempt"
        raise first

    def _keep_body(self, error: ApiError, failure: UpstreamStatus, target: Target) -> None:
        """Keep the upstream's error body (masked) on ``error``, for a client that speaks the upstream's dialect."""
        if failure.body:
            text = self.redact(failure.body.decode("utf-8", "replace"), target.api_key)
            error.upstream_body = text.encode()
            error.upstream_api = target.family.api

    def _refused(self, target: Target, ticket: Ticket) -> ApiError:
        """A call the ledger refused: counted and logged; the error it answers with if no fallback is left."""
        if ticket.refused != KEYS_COOLING:
            metrics.limit_refusal(target.label, ticket.refused)
        log.info("not calling %s API: %s (free again in %ds)", target.provider,
                 "every key cooling" if ticket.refused == KEYS_COOLING else f"{ticket.refused} limit reached",
                 ticket.retry_after)
        return refusal(target.provider, ticket)

    async def _rest_key(self, target: Target, key: int, failure: UpstreamStatus) -> None:
        """Rest the key (by position) that got ``failure``, before the attempt goes to the next one."""
        seconds = self.policy.key_rest(failure)
        log.warning("%s API answered HTTP %d to key %d of %d: it rests for %gs", target.provider, failure.status,
                    key + 1, len(target.pool), seconds)
        await self.ledger.cool(target.label, key, seconds)

    async def _pause_before_retry(self, target: Target, failure: UpstreamFailure, tried: int, cancel: Cancel | None) -> None:
        """The back-off before retry number ``tried`` (an upstream ``Retry-After`` wins)."""
        if cancel is not None:
            cancel.check()
        if isinstance(failure, UpstreamStatus):
            retry_after, status = failure.retry_after, str(failure.status)
        else:
            retry_after, status = None, "connection"
        delay = self.policy.backoff(tried, retry_after)
        metrics.upstream_retry(target.label)
        log.info("retrying %s API (retry %d of %d) after %s in %.2fs", target.provider, tried,
                 self.settings.upstream_retries, status, delay)
        if cancel is not None:
            await cancel.sleep(delay)  # a client that leaves, or the drain's cut, ends the pause at once
        else:
            await asyncio.sleep(delay)

    # -- one attempt ----------------------------------------------------------------------

    def _call(self, attempt: Attempt, transfer: Transfer, relay: Relay | None = None) -> UpstreamCall:
        s = self.settings
        target = attempt.target
        guard = None
        if target.guarded:
            guard = transfer.guard = AddressGuard()
        url, lines = target.url, target.header_lines
        if attempt.headers:
            lines = lines + list(attempt.headers)
        if attempt.query:
            url += attempt.query
        if relay is not None:
            # No cap on a live stream; the longest silence is bounded by the stream's watchdog.
            return UpstreamCall(
                url, attempt.body, lines, s.upstream_connect_timeout, 0, transfer,
                streaming_callback=relay.on_chunk, opensocket=guard,
            )
        return UpstreamCall(
            url, attempt.body, lines, s.upstream_connect_timeout, s.upstream_timeout, transfer, opensocket=guard
        )

    def _send(self, call: UpstreamCall, transfer: Transfer) -> Awaitable[Reply]:
        """Run one call; a transport failure comes back as a 599 reply.

        The usual call starts at once and this is the reply's future. One
        that has to wait for a pool slot is dropped (it never reaches the
        upstream) after UPSTREAM_QUEUE_TIMEOUT: :class:`QueueTimeout`.
        """
        future: asyncio.Future[Reply] = self.loop.create_future()

        def done(reply: Reply) -> None:
            transfer.finish()
            if not future.done():
                future.set_result(reply)

        self.transport.start(call, done)
        if transfer.started or future.done():
            return future
        return self._queued(future, transfer)

    async def _queued(self, future: asyncio.Future[Reply], transfer: Transfer) -> Reply:
        try:
            await asyncio.wait((future,), timeout=self.settings.upstream_queue_timeout)
            if not transfer.started and not future.done():
                transfer.abort()  # refused when its turn comes
                raise QueueTimeout("upstream")
            return await future
        finally:
            transfer.finish()

    def _new_transfer(self, cancel: Cancel | None) -> Transfer:
        return cancel.transfer() if cancel is not None else Transfer()

    async def _attempt_json(self, attempt: Attempt, cancel: Cancel | None) -> UpstreamResponse:
        target = attempt.target
        transfer = self._new_transfer(cancel)
        started = time.monotonic()
        try:
            response = await self._send(self._call(attempt, transfer), transfer)
        except QueueTimeout:
            metrics.upstream_call(target.label, "queue_timeout", time.monotonic() - started)
            raise
        status = response.code
        elapsed = time.monotonic() - started
        if status == 599:
            if cancel is not None and cancel.cancelled:
                metrics.upstream_call(target.label, "cancelled", elapsed)
                raise Cancelled(cancel.reason)
            metrics.upstream_call(target.label, "error", elapsed)
            raise failure_of(response, transfer, target.provider)
        metrics.upstream_call(target.label, str(status), elapsed)
        if 200 <= status < 300 and status != 204:
            body, usage = attempt.reader.json(response.body or b"")
            return UpstreamResponse(status, body, media_type(response.headers.get("Content-Type"), self.redact), usage)
        if not passable(status):
            raise InvalidStatus(target.provider, status)
        raise UpstreamStatus(target.provider, status, response.body or b"", response.headers.get("Retry-After"), target.api_key)

    async def _attempt_stream(
        self, attempt: Attempt, sink: StreamSink, result: StreamResult, cancel: Cancel | None
    ) -> StreamResult:
        target = attempt.target
        transfer = self._new_transfer(cancel)
        started = time.monotonic()
        usage = attempt.reader.stream()
        relay = Relay(sink, transfer, result, started, usage)
        relay.watch_silence(self.settings.upstream_timeout)
        try:
            response = await self._send(self._call(attempt, transfer, relay), transfer)
        except QueueTimeout:
            metrics.upstream_call(target.label, "queue_timeout", time.monotonic() - started)
            raise
        finally:
            if relay.timer is not None:
                relay.timer.cancel()
        # the streaming buffer has delivered every chunk by now; let them reach the client
        code = response.code
        if 200 <= code < 300 and not relay.client_gone:
            held = usage.finish()  # an incomplete last event held back: it was not the usage one
            if held:
                relay.push(held)
        await relay.drained()
        result.usage = usage.usage
        if code == 599 and relay.error_capped:
            code = relay.status  # an error body cut at its cap: answer the error with what came
        result.status = relay.status or code
        elapsed = time.monotonic() - started
        cancelled = cancel is not None and cancel.cancelled
        if result.chunks:
            # Bytes reached the client: how the stream ended is reported, never raised.
            if relay.client_gone or cancelled:
                result.outcome = "client_aborted"
            elif code == 599:
                result.outcome = "upstream_failed"
                result.error = self._mid_stream_error(target, response, transfer, relay.silent)
            metrics.upstream_call(target.label, "error" if result.outcome == "upstream_failed" else str(result.status), elapsed)
            return result
        if code == 599:
            if cancelled and cancel is not None:
                metrics.upstream_call(target.label, "cancelled", elapsed)
                raise Cancelled(cancel.reason)
            metrics.upstream_call(target.label, "error", elapsed)
            raise TimedOut(target.provider) if relay.silent else failure_of(response, transfer, target.provider)
        metrics.upstream_call(target.label, str(code), elapsed)
        if not passable(code):
            raise InvalidStatus(target.provider, code)
        if code < 300:
            sink.begin(result.model_id)  # an empty 2xx stream: nothing to relay, nothing went wrong
            return result
        raise UpstreamStatus(target.provider, code, bytes(relay.error_body), response.headers.get("Retry-After"), target.api_key)

    def _mid_stream_error(self, target: Target, response: Reply, transfer: Transfer, silent: bool) -> ApiError:
        if silent:
            silence = f"{self.settings.upstream_timeout:g}s"
            return ApiError(504, f"{target.provider} API went silent for more than {silence} mid-stream", code="upstream_timeout")
        error = api_error(failure_of(response, transfer, target.provider), self.redact)
        error.message = f"Stream from {target.provider} API ended early: " + error.message
        return error
