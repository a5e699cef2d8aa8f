"""The Mira router client: registration at start-up, then liveness heartbeats.

The mode is decided once, from the settings (see :func:`router_mode`):

* standalone: ROUTER_BASE_URL unset; nothing in this module runs;
* router with MACHINE_API_TOKEN: heartbeats only, with that token;
* router with ADMIN_API_TOKEN: :meth:`RouterClient.register` looks the machine
  up, registers it (reusing its name), reuses its first machine token or
  creates one, then heartbeats use that token.

Every call goes through the process's one :class:`~utils.upstream.transport.Transport`,
like every provider call, and registration calls are retried as
:mod:`utils.upstream.policy` says. A call that gets no HTTP answer is
classified as a provider call's is (:func:`~utils.upstream.transport.failure_of`),
and its failure class gives the message logged and the ``reason`` counted
(``timeout`` or ``connection``). Only ``server.py`` holds a
:class:`RouterClient`; handlers never see it. No token is ever logged (at most
its last four characters, through :func:`utils.redact.tail`).
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import ujson

from config import Settings
from utils import metrics
from utils.redact import Redactor, tail
from utils.upstream.failures import QueueTimeout, TimedOut, UpstreamFailure, api_error
from utils.upstream.policy import REGISTER_ATTEMPTS, retrying, router_retryable
from utils.upstream.transport import Reply as TransportReply
from utils.upstream.transport import Transfer, Transport, UpstreamCall, failure_of, header_lines

log = logging.getLogger("mira.router")

REGISTER_TIMEOUT = 10.0  # seconds for one registration call
REGISTER_CONNECT_TIMEOUT = 5.0
MAX_BEAT_TIMEOUT = 10.0  # a heartbeat gets half the interval, at most this
FAILURE_SUMMARY_INTERVAL = 60.0  # seconds between "still failing" lines
REREGISTER_INTERVAL = 60.0  # at most one registration again per this many seconds (heartbeat 401 or 404)
REFUSAL_LOG_INTERVAL = 60.0  # at most one "the router refused the heartbeat" error per this many seconds
ROUTER = "router"  # the "provider" of a router call's failures: "Could not connect to router API", ...
TIMEOUTS = (TimedOut, QueueTimeout)  # failures counted as reason "timeout"; any other is "connection"
NAME_ALPHABET = string.ascii_lowercase + string.digits
MAX_DETAIL = 200  # characters of a router error body shown in a message


class RouterStatus:
    """The router state and machine name, one copy for every worker of the node.

    An anonymous shared memory page made before the workers are forked: the
    worker that talks to the router writes it, every worker's ``/health`` and
    ``X-Machine-Name`` read it. Byte 0 is the state, byte 1 a generation that
    moves when the name changes (readers re-read the name only then), byte 2
    the name's length, then the name (ASCII, at most 253 bytes).
    """

    STATES = ("standalone", "live", "failing")
    MAX_NAME = 253

    def __init__(self, routed: bool, name: str = "") -> None:
        self._mem = mmap.mmap(-1, 256)
        self._mem[0] = 2 if routed else 0  # in router mode: failing until a heartbeat is accepted
        self._seen = -1
        self._name = ""
        if name:
            self.set_name(name)

    @property
    def state(self) -> str:
        return self.STATES[self._mem[0]]

    def set_state(self, state: str) -> None:
        self._mem[0] = self.STATES.index(state)

    @property
    def name(self) -> str:
        """The machine name ("" while unknown); cheap to read on every answer."""
        mem = self._mem
        if mem[1] != self._seen:
            self._seen = mem[1]
            self._name = mem[3 : 3 + mem[2]].decode("ascii")
        return self._name

    def set_name(self, name: str) -> None:
        """Publish a name; one that cannot be a header value (not printable ASCII, too long) is not shown."""
        if not (name.isascii() and name.isprintable() and 0 < len(name) <= self.MAX_NAME):
            return
        data = name.encode("ascii")
        mem = self._mem
        mem[2] = 0
        mem[3 : 3 + len(data)] = data
        mem[2] = len(data)
        mem[1] = (mem[1] + 1) % 256


class RouterError(Exception):
    """Registration with the router failed: the node cannot start in router mode."""


def router_mode(settings: Settings) -> str:
    """How this node talks to the router: ``standalone``, ``machine token`` or ``admin token``."""
    if not settings.router_base_url:
        return "standalone"
    return "machine token" if settings.machine_api_token else "admin token"


def token_source(settings: Settings) -> str:
    """The start line's note on where the machine token comes from ("" when standalone)."""
    return {
        "standalone": "",
        "machine token": "machine token given",
        "admin token": "registering with the admin token",
    }[router_mode(settings)]


def default_machine_name() -> str:
    """``mira-`` and 8 random lowercase letters and digits."""
    return "mira-" + "".join(secrets.choice(NAME_ALPHABET) for _ in range(8))


@dataclass(frozen=True)
class RouterAnswer:
    """What one router call came back with: an HTTP status, or 599 and the failure (the transport's classes).

    ``error`` is the failure as logged: the node's message for its class
    (:func:`~utils.upstream.failures.api_error`), with libcurl's words when
    they add to it, masked.
    """

    status: int
    body: bytes = b""
    failure: UpstreamFailure | None = None
    error: str = ""

    @property
    def timed_out(self) -> bool:
        """No answer within the time (libcurl's timeout, or no connection slot in time)."""
        return isinstance(self.failure, TIMEOUTS)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def transient(self) -> bool:
        """Worth another attempt (the policy's :func:`~utils.upstream.policy.router_retryable`)."""
        return router_retryable(self.status)

    def describe(self) -> str:
        return self.error if self.status == 599 else f"HTTP {self.status}"

    @property
    def reason(self) -> str:
        """The ``reason`` label of ``mira_heartbeat_failures_total``: ``status_NNN``, ``timeout`` or ``connection``."""
        if self.status != 599:
            return f"status_{self.status}"
        return "timeout" if self.timed_out else "connection"

    def json(self) -> Any:
        """The body as JSON, ``None`` when it is not."""
        try:
            return ujson.loads(self.body) if self.body else None
        except ValueError:
            return None


class RouterClient:
    """Talks to the Mira router for one node: :meth:`register`, then heartbeats.

    ``transport`` is the process's one transport (``ctx.upstream.transport``),
    ``machine_ip`` the address the router knows this node by, and
    ``redactor`` the process's one (``ctx.redactor``): the tokens this client
    holds or learns are added to it, so the log filter masks them too.
    ``summary_interval``: seconds between "still failing" lines after a
    heartbeat's first failure.
    """

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        machine_ip: str,
        redactor: Redactor,
        status: RouterStatus | None = None,
        summary_interval: float = FAILURE_SUMMARY_INTERVAL,
    ) -> None:
        self.base_url = settings.router_base_url.rstrip("/")
        self.transport = transport
        self.machine_ip = machine_ip
        self.interval = settings.liveness_interval
        self.beat_timeout = min(self.interval / 2, MAX_BEAT_TIMEOUT)
        self.retry_backoff = settings.router_retry_backoff
        self.summary_interval = summary_interval  # seconds between "still failing" lines after the first failure
        self.name = settings.machine_name
        self.status = status or RouterStatus(routed=True, name=self.name)
        self.traffic_weight = settings.traffic_weight
        self.router_models = list(settings.router_models)
        self.version = settings.version
        self.redact = redactor  # the process's one: tokens learnt here are masked in every log line too
        self._admin_token = settings.admin_api_token
        self._machine_token = settings.machine_api_token
        self._task: asyncio.Task[None] | None = None
        self._transfers: set[Transfer] = set()  # calls in flight
        self._failures = 0  # consecutive failed heartbeats
        self._last_failure_log = 0.0
        self._last_registration = -REREGISTER_INTERVAL  # monotonic time of the last registration from a heartbeat
        self._last_refusal_log = -REFUSAL_LOG_INTERVAL
        self.redact.add(self._admin_token)
        self.redact.add(self._machine_token)

    def __repr__(self) -> str:
        return f"RouterClient({self.base_url!r}, ip={self.machine_ip!r})"

    @property
    def _machine_url(self) -> str:
        return f"{self.base_url}/admin/machines/{quote(self.machine_ip, safe='')}"

    @property
    def liveness_url(self) -> str:
        return f"{self.base_url}/liveness/{quote(self.machine_ip, safe='')}"

    # -- HTTP -----------------------------------------------------------------------------

    async def _call(
        self, method: str, url: str, token: str, payload: Any = None, timeout: float = REGISTER_TIMEOUT
    ) -> RouterAnswer:
        """One HTTP call with a bearer token; never raises on a failure, returns it.

        The whole call, a wait for a free connection slot included, is bounded
        by about ``timeout``.
        """
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        body: bytes | None = None  # a GET
        if payload is not None:
            headers["Content-Type"] = "application/json"
            body = ujson.dumps(payload, escape_forward_slashes=False).encode()
        elif method == "POST":
            body = b""
        transfer = Transfer(self._transfers)
        call = UpstreamCall(url, body, header_lines(headers), min(timeout, REGISTER_CONNECT_TIMEOUT), timeout, transfer)
        future: asyncio.Future[TransportReply] = asyncio.get_running_loop().create_future()

        def done(reply: TransportReply) -> None:
            if not future.done():
                future.set_result(reply)

        self.transport.start(call, done)
        try:
            await asyncio.wait((future,), timeout=timeout)
            if not future.done() and not transfer.started:
                transfer.abort()  # refused when its turn comes
                return self._failed(QueueTimeout(ROUTER))
            if not future.done():  # running: libcurl's own timeouts end it
                await asyncio.wait((future,))
            reply = future.result()
        except asyncio.CancelledError:
            transfer.abort()
            raise
        finally:
            transfer.finish()
        if reply.code == 599:  # no answer: refused, reset, timed out (classified as for a provider call)
            return self._failed(failure_of(reply, transfer, ROUTER), reply.error)
        return RouterAnswer(reply.code, reply.body)

    def _failed(self, failure: UpstreamFailure, error: Exception | None = None) -> RouterAnswer:
        """The answer of a call that got no HTTP answer: its failure, and the message logged for it."""
        message = api_error(failure, self.redact).message
        said = getattr(error, "message", None) or (str(error) if error is not None else "")
        said = self.redact.cut(said, MAX_DETAIL) if isinstance(said, str) else ""
        if said and said not in message:
            message = f"{message} ({said})"  # libcurl's words: which host, refused or unresolved
        return RouterAnswer(599, failure=failure, error=message)

    # -- registration ---------------------------------------------------------------------

    async def prepare(self) -> str:
        """The machine token: the given one, else one obtained by :meth:`register`."""
        if self._machine_token:
            return self._machine_token
        return await self.register()

    async def register(self) -> str:
        """Register this machine with the admin token; return its machine token.

        Raises :class:`RouterError` with a message for the operator when the
        router refuses, or is still unreachable after the retries.
        """
        if not self._admin_token:
            raise RouterError("router registration needs ADMIN_API_TOKEN (or set MACHINE_API_TOKEN)")
        # The real router answers an unknown machine with 200 and a JSON null; older ones with 404.
        found = await self._admin("GET", self._machine_url, "look up this machine", accept=(404,))
        existing = found.json() if found.status != 404 else None
        if isinstance(existing, dict) and isinstance(existing.get("name"), str) and existing["name"]:
            self.name = existing["name"]
        self.name = self.name or default_machine_name()
        registration = {
            "network_ip": self.machine_ip,
            "name": self.name,
            "description": f"Mira service node {self.version}",
            "disabled": False,
        }
        if self.traffic_weight is not None:
            registration["traffic_weight"] = self.traffic_weight
        if self.router_models:
            registration["supported_models"] = self.router_models
        await self._admin("POST", f"{self.base_url}/admin/machines/register", "register this machine", registration, (409,))
        listed = await self._admin("GET", f"{self._machine_url}/auth-tokens", "list machine tokens", accept=(404,))
        token = first_token(listed.json()) if listed.ok else ""
        reused = bool(token)
        if not token:
            created = await self._admin(
                "POST", f"{self._machine_url}/auth-tokens", "create a machine token", {"description": f"Mira node {self.name}"}
            )
            token = first_token(created.json())
            if not token:
                raise RouterError(f"router registration failed: creating a machine token at {self.base_url} gave no api_token")
        self._machine_token = token
        self.redact.add(token)
        self.status.set_name(self.name)
        log.info(
            "registered with the router as %s (ip %s); %s machine token %s",
            self.name, self.machine_ip, "reusing" if reused else "created", tail(token),
        )
        return token

    async def _admin(self, method: str, url: str, what: str, payload: Any = None, accept: tuple[int, ...] = ()) -> RouterAnswer:
        """An admin call, retried with doubling back-off on transient failures (the attempt policy's)."""

        def settled(reply: RouterAnswer) -> bool:
            return reply.ok or reply.status in accept or not reply.transient

        def retry(reply: RouterAnswer, attempt: int, delay: float) -> None:
            log.warning(
                "router registration: could not %s (%s); attempt %d of %d, retrying in %.2fs",
                what, reply.describe(), attempt, REGISTER_ATTEMPTS, delay,
            )

        reply = await retrying(
            lambda: self._call(method, url, self._admin_token, payload), lambda r: not settled(r), self.retry_backoff, retry
        )
        if reply.ok or reply.status in accept:
            return reply
        if not reply.transient:
            raise RouterError(self._refusal(method, url, what, reply))
        raise RouterError(
            f"router registration failed: could not {what} ({method} {url}): {reply.describe()}"
            f" after {REGISTER_ATTEMPTS} attempts; check ROUTER_BASE_URL and that the router is up"
        )

    def _refusal(self, method: str, url: str, what: str, reply: RouterAnswer) -> str:
        """The operator's message for a router answer that no retry will change."""
        if reply.status in (401, 403):
            return f"router registration failed: the router refused ADMIN_API_TOKEN (HTTP {reply.status} on {method} {url})"
        detail = self.redact.cut(reply.body.decode("utf-8", "replace").strip(), MAX_DETAIL)
        return f"router registration failed: could not {what} ({method} {url}): HTTP {reply.status}" + (
            f": {detail}" if detail else ""
        )

    # -- heartbeats -----------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Send a heartbeat now and then every LIVENESS_INTERVAL seconds, in the background."""
        if self._task is not None:
            return
        if not self._machine_token:
            raise RouterError("heartbeats need a machine token: call prepare() first")
        log.info("heartbeats to %s every %gs", self.liveness_url, self.interval)
        self._task = asyncio.get_running_loop().create_task(self._beat_forever())

    def stop_heartbeat(self) -> None:
        """Stop at once: no heartbeat is sent after this call, one in flight is aborted."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        for transfer in list(self._transfers):
            transfer.abort()

    @property
    def beating(self) -> bool:
        return self._task is not None

    async def _beat_forever(self) -> None:
        """Beat at a fixed rate, one beat at a time (each is bounded below the interval)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.beat()
            except Exception:  # a bug here must not end the heartbeats
                log.exception("heartbeat error")
            next_at = max(next_at + self.interval, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def beat(self) -> bool:
        """Send one heartbeat; count and log (rate-limited) a failure, act on a refusal. True when accepted."""
        reply = await self._call("POST", self.liveness_url, self._machine_token, timeout=self.beat_timeout)
        if reply.ok:
            self._beat_ok()
            return True
        metrics.HEARTBEAT_FAILURES.labels(reply.reason).inc()
        self.status.set_state("failing")
        if reply.status in (401, 403, 404):
            await self._refused(reply.status)
        else:
            self._beat_failed(reply.describe())
        return False

    def _beat_ok(self) -> None:
        if self._failures:
            log.info("heartbeats recovered after %d failed", self._failures)
        self._failures = 0
        self.status.set_state("live")

    async def _refused(self, status: int) -> None:
        """The router refused a heartbeat: register again (401, 404, with the admin token), else say what to do.

        401: the token is refused or the machine disabled; 403: the token is not
        this IP's; 404: the router does not know this machine (any more).
        """
        self._failures += 1
        now = time.monotonic()
        if status in (401, 404) and self._admin_token:
            if now - self._last_registration < REREGISTER_INTERVAL:
                return  # registered again less than a minute ago: the next try waits
            self._last_registration = now
            log.warning("heartbeat refused (HTTP %d): registering with the router again", status)
            try:
                await self.register()
            except RouterError as exc:
                log.error("registering again failed: %s", exc)
            return
        if now - self._last_refusal_log < REFUSAL_LOG_INTERVAL:
            return
        self._last_refusal_log = now
        advice = {
            401: "the router refused MACHINE_API_TOKEN or the machine is disabled: issue a new machine token"
            " (or set ADMIN_API_TOKEN so the node registers itself) and check the machine is enabled",
            403: f"MACHINE_API_TOKEN belongs to another machine than {self.machine_ip}: check MACHINE_IP and the token",
            404: f"the router does not know machine {self.machine_ip}: register it (or set ADMIN_API_TOKEN so the node"
            " registers itself) and check MACHINE_IP",
        }[status]
        log.error("heartbeat refused (HTTP %d, %d in a row): %s", status, self._failures, advice)

    def _beat_failed(self, reason: str) -> None:
        """Log the first failure, then a summary at most every ``summary_interval`` seconds."""
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1:
            log.warning(
                "heartbeat to %s failed: %s (repeats are summarised every %gs)",
                self.liveness_url, reason, self.summary_interval,
            )
        elif now - self._last_failure_log >= self.summary_interval:
            log.warning("heartbeats still failing: %d in a row, last: %s", self._failures, reason)
        else:
            return
        self._last_failure_log = now


def first_token(data: Any) -> str:
    """The first ``api_token`` in a router answer: one token object or a list of them.

    A list may also come wrapped as ``{"data": [...]}`` or ``{"tokens": [...]}``.
    """
    if isinstance(data, dict):
        if isinstance(data.get("api_token"), str):
            return data["api_token"]
        for key in ("data", "tokens", "auth_tokens", "items"):
            if isinstance(data.get(key), list):
                return first_token(data[key])
        return ""
    if isinstance(data, list):
        for item in data:
            token = first_token(item) if isinstance(item, dict) else ""
            if token:
                return token
    return ""
