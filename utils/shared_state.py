"""Shared state on Redis: limit windows, key cooling and circuits across workers and nodes.

With REDIS_URL set, every worker of every node that points at the same Redis
keeps its provider limits, its key pools' cooling and its circuits there, so a
limit holds for all of them together and a key or provider one of them found
failing is passed over by the others. Without REDIS_URL this module is never
imported and no connection is opened.

* :class:`RedisLink`: the connection, the Lua scripts (loaded once, called by
  their SHA), REDIS_TIMEOUT on every call, and what happens when Redis fails:
  one warning, a summary each minute, "recovered"; ``mira_redis_up``; a
  reconnection in the background. While Redis is away no request waits for it.
* :class:`SharedLedger`: the :class:`~utils.upstream.ledger.Ledger` of the
  attempt engine, one script call (one round trip, atomic in Redis) per
  decision; while Redis is away it decides from the in-process
  :class:`~utils.upstream.ledger.LocalLedger`, which it keeps warm.
* :class:`SharedCircuits`: a circuit that opens or closes here is written to
  Redis; every process reads them all twice a second (one MGET), so an open
  circuit is seen everywhere within a second.

Every key is under REDIS_PREFIX and expires: a window 62 s after its last
call, a day's count an hour after the day, a pool's cooling when its last key
is free, a circuit with its cooldown. Pools are shared by key, not position: a
key is named in Redis by a short hash of it (never the key), so nodes may list
the same keys in any order.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from config import NODE_WIDE, ProviderLimits, Settings, redis_address
from utils import metrics
from utils.upstream.ledger import DAY, GO, KEYS_COOLING, NODE_TOKENS, NODE_USD, LocalLedger, Ticket, session_key
from utils.upstream.routing import Circuit

log = logging.getLogger("mira.redis")

RECONNECT_EVERY = 1.0  # seconds between reconnection attempts while Redis is away
SUMMARY_EVERY = 60.0  # seconds between "still away" summaries
CIRCUIT_POLL = 0.5  # seconds between reads of the shared circuits
# the script's refusal codes
REFUSALS = ("", "rpm", "tpm", "tokens_per_day", KEYS_COOLING, "usd_per_day", NODE_TOKENS, NODE_USD)

# take(provider): the provider's limits, the node-wide budgets ("*"), then a key that is not cooling, then count
# the call. KEYS: window hash, day count, cooling hash, turn, and with dollar or node-wide budgets (the "budgets"
# form) the day's cost, the node's day count and the node's day's cost. ARGV: now, rpm, tpm, tokens_per_day (-1:
# none), the next 00:00 UTC, the session's key position (-1: none), the pool's key ids in order, and in the budgets
# form usd_per_day, the node's tokens_per_day and usd_per_day (-1: none). Answer: {key position, refusal code,
# retry after}. A provider without such budgets sends the short form: what it does not use costs it nothing.
TAKE = """
local now = tonumber(ARGV[1])
local rpm, tpm, tpd = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local budgets = #KEYS > 4
local count = #ARGV - 6 - (budgets and 3 or 0)
local usd, node_tpd, node_usd = -1, -1, -1
if budgets then usd, node_tpd, node_usd = tonumber(ARGV[7 + count]), tonumber(ARGV[8 + count]), tonumber(ARGV[9 + count]) end
local second = math.floor(now)
local function wait(moment) return math.max(1, math.ceil(moment - now)) end
local function reached(key, limit) return limit >= 0 and tonumber(redis.call('GET', key) or '0') >= limit end
if reached(KEYS[2], tpd) then return {0, 3, wait(tonumber(ARGV[5]))} end
if reached(KEYS[5], usd) then return {0, 5, wait(tonumber(ARGV[5]))} end
if rpm >= 0 or tpm >= 0 then
  local flat = redis.call('HGETALL', KEYS[1])
  local steps, stale, calls, tokens = {}, {}, 0, 0
  for i = 1, #flat, 2 do
    local at, count = tonumber(string.sub(flat[i], 3)), tonumber(flat[i + 1])
    if at <= second - 60 then
      stale[#stale + 1] = flat[i]
    else
      local kind = string.sub(flat[i], 1, 1)
      if kind == 'c' then calls = calls + count else tokens = tokens + count end
      steps[#steps + 1] = {at, kind, count}
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
  table.sort(steps, function(a, b) return a[1] < b[1] end)
  local function room(kind, left, limit)
    for _, step in ipairs(steps) do
      if step[2] == kind then
        left = left - step[3]
        if left < limit then return step[1] + 60 end
      end
    end
    return second + 60
  end
  if rpm >= 0 and calls >= rpm then return {0, 1, wait(math.max(room('c', calls, rpm), now + 1))} end
  if tpm >= 0 and tokens >= tpm then return {0, 2, wait(math.max(room('t', tokens, tpm), now + 1))} end
end
if reached(KEYS[6], node_tpd) then return {0, 6, wait(tonumber(ARGV[5]))} end
if reached(KEYS[7], node_usd) then return {0, 7, wait(tonumber(ARGV[5]))} end
local key, pinned = 0, tonumber(ARGV[6])
if count > 1 then
  key = -1
  if pinned >= 0 and tonumber(redis.call('HGET', KEYS[3], ARGV[7 + pinned]) or '0') <= now then
    key = pinned
  else
    local turn = tonumber(redis.call('GET', KEYS[4]) or '0')
    local soonest = nil
    for offset = 0, count - 1 do
      local at = (turn + offset) % count
      local free = tonumber(redis.call('HGET', KEYS[3], ARGV[7 + at]) or '0')
      if free <= now then key = at break end
      if soonest == nil or free < soonest then soonest = free end
    end
    if key < 0 then return {0, 4, wait(soonest)} end
    redis.call('SET', KEYS[4], key + 1, 'EX', 86400)
  end
end
if rpm >= 0 then
  redis.call('HINCRBY', KEYS[1], 'c:' .. second, 1)
  redis.call('EXPIRE', KEYS[1], 62)
end
return {key, 0, 0}
"""

# cool(key): KEYS: cooling hash. ARGV: the key's id, the time it is free again, now.
COOL = """
local free = tonumber(ARGV[2])
if free > tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local latest = free
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do latest = math.max(latest, tonumber(value)) end
redis.call('PEXPIRE', KEYS[1], math.ceil((latest - tonumber(ARGV[3])) * 1000) + 1000)
return 1
"""

# spend(tokens, cost): KEYS: window hash, day count, and in the cost form the day's cost, the node's day count and
# day's cost. ARGV: now, tokens, count tpm (1/0), count the day (1/0), the day's end, and in the cost form the cost
# in USD ('': unpriced) and count the node's day (1/0). Answer: the day's count; in the cost form {the day's count,
# the day's cost, the node's count, the node's cost} (0 or '' for what was not counted; the costs as text: a
# script's number would lose its fraction).
SPEND = """
local today = 0
local expires = tonumber(ARGV[5]) + 3600
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 't:' .. math.floor(tonumber(ARGV[1])), ARGV[2])
  redis.call('EXPIRE', KEYS[1], 62)
end
if ARGV[4] == '1' then
  today = redis.call('INCRBY', KEYS[2], ARGV[2])
  redis.call('EXPIREAT', KEYS[2], expires)
end
if #ARGV < 6 then return today end
local usd, node_today, node_usd = '', 0, ''
if ARGV[6] ~= '' then
  usd = redis.call('INCRBYFLOAT', KEYS[3], ARGV[6])
  redis.call('EXPIREAT', KEYS[3], expires)
end
if ARGV[7] == '1' then
  node_today = redis.call('INCRBY', KEYS[4], ARGV[2])
  redis.call('EXPIREAT', KEYS[4], expires)
  if ARGV[6] ~= '' then
    node_usd = redis.call('INCRBYFLOAT', KEYS[5], ARGV[6])
    redis.call('EXPIREAT', KEYS[5], expires)
  end
end
return {today, usd, node_today, node_usd}
"""

# A connection is only trusted once a script answers what it must (a server that speaks RESP but not Redis fails it).
PROBE = "return {7, 'mira', 11}"
PROBE_ANSWER = [7, b"mira", 11]

SCRIPTS = {"take": TAKE, "cool": COOL, "spend": SPEND, "probe": PROBE}


class Garbage(Exception):
    """Redis answered something the node did not ask for."""


class RedisLink:
    """One process's connection to REDIS_URL (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.address = redis_address(settings.redis_url)
        self.timeout = settings.redis_timeout
        self.prefix = settings.redis_prefix
        self.client = redis_client(settings)
        self.shas: dict[str, str] = {}
        self.up = False
        self.down_since = time.monotonic()
        self.reason = "not connected yet"
        self.passed_over = 0  # decisions made in process while Redis was away, since the last summary
        self._warned = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._pending: list[tuple[str, Sequence[str | bytes], Sequence[Any], asyncio.Future[Any]]] = []  # this turn's calls
        self._armed = False
        self._reloading = False
        metrics.redis_up(False)

    async def start(self) -> None:
        """One try at connecting, then the watcher keeps the connection; while Redis is away, decisions are local."""
        if await self._connect():
            self._up()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def _up(self) -> None:
        if self._warned:
            log.warning("Redis at %s recovered after %.0fs; %d decisions were made in process meanwhile",
                        self.address, time.monotonic() - self.down_since, self.passed_over)
        else:
            log.info("shared state on Redis at %s", self.address)
        self._warned = False
        self.up = True
        metrics.redis_up(True)

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self._tasks):
            task.cancel()
        try:
            await asyncio.wait_for(self.client.aclose(), 1.0)
        except Exception:  # noqa: BLE001 (closing a broken connection may fail any way it likes)
            pass

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def run(self, name: str, keys: Sequence[str | bytes], args: Sequence[Any]) -> Awaitable[Any]:
        """The script ``name``'s answer, or None when Redis is away, slower than REDIS_TIMEOUT, or failing.

        The calls of one loop turn go to Redis together, in one pipeline (one
        write, one read): each script is still atomic on its own, and a busy node
        pays a fraction of redis-py's cost per call (measured: 35 against 200 µs
        of CPU with 50 calls a turn).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.up:
            self.passed_over += 1
            future.set_result(None)
            return future
        self._pending.append((self.shas[name], keys, args, future))
        if not self._armed:
            self._armed = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._armed = False
        batch, self._pending = self._pending, []
        self.fire(self._send(batch))

    async def _send(self, batch: list[tuple[str, Sequence[str | bytes], Sequence[Any], asyncio.Future[Any]]]) -> None:
        answers: list[Any] = [None] * len(batch)
        if self.up:
            pipe = self.client.pipeline(transaction=False)
            for sha, keys, args, _ in batch:
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
            try:
                async with asyncio.timeout(self.timeout):
                    answers = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # noqa: BLE001 (whatever Redis does, the node decides in process)
                self.failed(exc)
                answers = [None] * len(batch)
        for (*_, future), answer in zip(batch, answers, strict=True):
            if isinstance(answer, Exception):
                if "NOSCRIPT" in str(answer):  # Redis restarted between two calls: its scripts are gone
                    self._reload()
                else:
                    self.failed(answer)
                answer = None
            if not future.done():
                future.set_result(answer)

    def _reload(self) -> None:
        if not self._reloading:
            self._reloading = True
            self.fire(self._load_again())

    async def _load_again(self) -> None:
        try:
            async with asyncio.timeout(max(self.timeout, 1.0)):
                await self._load()
        except Exception as exc:  # noqa: BLE001
            self.failed(exc)
        finally:
            self._reloading = False

    async def command(self, *args: Any) -> Any:
        """One plain command (MGET, SET), or None as :meth:`run`."""
        if not self.up:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await self.client.execute_command(*args)
        except Exception as exc:  # noqa: BLE001
            self.failed(exc)
            return None

    def fire(self, call: Any) -> None:
        """Run a call in the background (what the request does not wait for: tokens, circuits)."""
        task = asyncio.get_running_loop().create_task(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def failed(self, exc: BaseException) -> None:
        """Redis failed a call: pass it over until the watcher reconnects."""
        if not self.up:
            return
        self.up = False
        self.down_since = time.monotonic()
        self.reason = describe(exc)
        self.passed_over = 0
        metrics.redis_up(False)
        log.warning("Redis at %s failed (%s): deciding limits, key cooling and circuits in process until it answers"
                    " again", self.address, self.reason)
        self._warned = True
        self._wake.set()

    async def _load(self) -> None:
        for name, source in SCRIPTS.items():
            self.shas[name] = await self.client.script_load(source)

    async def _connect(self) -> bool:
        try:
            async with asyncio.timeout(max(self.timeout, 1.0)):
                await self.client.ping()
                await self._load()
                if await self.client.evalsha(self.shas["probe"], 0) != PROBE_ANSWER:
                    raise Garbage()
        except Exception as exc:  # noqa: BLE001
            self.reason = describe(exc)
            return False
        return True

    async def _watch(self) -> None:
        """Reconnect while Redis is away: a warning, a summary a minute, then "recovered"."""
        summary_at = time.monotonic() + SUMMARY_EVERY
        while True:
            if self.up:
                self._wake.clear()
                await self._wake.wait()
                summary_at = time.monotonic() + SUMMARY_EVERY
                continue
            if await self._connect():
                self._up()
                continue
            if not self._warned:
                self._warned = True
                log.warning("Redis at %s cannot be reached (%s): deciding limits, key cooling and circuits in process"
                            " until it answers", self.address, self.reason)
            elif time.monotonic() >= summary_at:
                summary_at = time.monotonic() + SUMMARY_EVERY
                log.warning("Redis at %s still away for %.0fs (%s): %d decisions made in process in the last minute",
                            self.address, time.monotonic() - self.down_since, self.reason, self.passed_over)
                self.passed_over = 0
            await asyncio.sleep(RECONNECT_EVERY)


def redis_client(settings: Settings) -> Any:
    """redis-py's asyncio client for REDIS_URL, with the node's timeouts and TLS.

    Its own retries are off but one, at once, for a pooled connection that a
    restarted Redis closed; every call is bounded by REDIS_TIMEOUT. With
    ``rediss://`` one TLS context, built once from UPSTREAM_CA_BUNDLE (else the
    system store), serves every connection: redis-py would build one per
    connection, some 50 ms of CPU each, and add the system store to a bundle.
    """
    from redis.asyncio import ConnectionPool, Redis  # imported only with REDIS_URL
    from redis.asyncio.connection import SSLConnection, parse_url
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as LostConnection
    from redis.retry import Retry

    options: dict[str, Any] = dict(parse_url(settings.redis_url))
    options.update(
        socket_timeout=settings.redis_timeout, socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(LostConnection,)), health_check_interval=0,
        client_name="mira-node",
    )
    if options.get("connection_class") is SSLConnection:
        context = ssl.create_default_context(cafile=settings.upstream_ca_bundle or None)

        class SharedContextConnection(SSLConnection):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.ssl_context.context = context  # RedisSSLContext.get() hands it out as it is

        options["connection_class"] = SharedContextConnection
    return Redis.from_pool(ConnectionPool(**options))


def describe(exc: BaseException) -> str:
    """A short reason for a log line (never the URL: redis-py may put it in a message)."""
    if isinstance(exc, TimeoutError):
        return "no answer within REDIS_TIMEOUT"
    if isinstance(exc, Garbage):
        return "an answer the node did not expect"
    name = type(exc).__name__
    return "connection refused or lost" if "Connection" in name or isinstance(exc, OSError) else name


def key_id(key: str) -> str:
    """A pool key's name in Redis: 12 hex digits of its SHA-256, never the key."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class SharedLedger:
    """Key pools, limits and budgets on Redis, with the in-process ledger for when Redis is away."""

    def __init__(
        self, link: RedisLink, local: LocalLedger, pools: Mapping[str, Sequence[str]],
        limits: Mapping[str, ProviderLimits], circuits: SharedCircuits,
    ) -> None:
        """``pools``: provider -> its keys in order (only their hashes go to Redis)."""
        self.link = link
        self.local = local  # decides while Redis is away; its clock is the ledger's
        self.circuits = circuits
        # Every argument that does not change from call to call is encoded once, here (redis-py passes bytes on as
        # they are, and would encode a str or an int on every call): keys, limits, key ids.
        self._keys = {name: tuple(link.key(kind, name).encode() for kind in ("win", "cool", "turn")) for name in pools}
        self._ids = {name: [key_id(key) for key in keys] for name, keys in pools.items()}
        self._id_args = {name: tuple(ident.encode() for ident in ids) for name, ids in self._ids.items()}
        none = ProviderLimits()
        self._limits = {name: limits.get(name, none) for name in pools}
        self._node = limits.get(NODE_WIDE)  # the node-wide budgets, checked by every take when there are any
        node = self._node or none
        # what a take sends besides the time and the keys: the window limits and the daily budget, and in the
        # budgets form (a dollar budget, or a node-wide entry) those budgets (see TAKE)
        self._windows = {
            name: _args(lim.rpm, lim.tpm, lim.tokens_per_day) for name, lim in self._limits.items()
        }
        self._budgets = {
            name: _args(lim.usd_per_day, node.tokens_per_day, node.usd_per_day)
            if lim.usd_per_day is not None or self._node is not None else ()
            for name, lim in self._limits.items()
        }
        self._days: dict[str, tuple[int, tuple[bytes, ...]]] = {}  # provider -> (day, _day_keys)

    def _day_keys(self, provider: str, day: int) -> tuple[bytes, ...]:
        """The day's count, the day's cost, the node's count and the node's cost keys of ``day``, then the day's end
        (made once a day)."""
        made = self._days.get(provider)
        if made is None or made[0] != day:
            named, date = self.link.key, str(day)
            keys = (named("day", provider, date), named("usd", provider, date), named("day", NODE_WIDE, date),
                    named("usd", NODE_WIDE, date), str((day + 1) * DAY))
            made = self._days[provider] = (day, tuple(key.encode() for key in keys))
        return made[1]

    async def start(self) -> None:
        """Connect (one try, so that the first requests share already), then keep it and poll the circuits."""
        await self.link.start()
        self.circuits.start()

    async def aclose(self) -> None:
        self.circuits.stop()
        await self.link.aclose()

    async def take(self, provider: str, session: str = "") -> Ticket:
        now = self.local.clock()
        window, cooling, turn = self._keys[provider]
        day = int(now // DAY)
        days = self._day_keys(provider, day)
        ids = self._id_args[provider]
        pinned = str(session_key(session, len(ids))).encode() if session and len(ids) > 1 else NONE
        budgets = self._budgets[provider]
        keys = (window, days[0], cooling, turn, days[1], days[2], days[3]) if budgets else (window, days[0], cooling, turn)
        answer = await self.link.run(
            "take", keys, (repr(now).encode(), *self._windows[provider], days[4], pinned, *ids, *budgets),
        )
        if answer is None:
            return self.local.take(provider, session)
        try:
            key, code, wait = (int(part) for part in answer)
            ticket = GO if not code and not key else Ticket(key, REFUSALS[code], wait)
            if not 0 <= key < max(len(self._ids[provider]), 1):
                raise ValueError
        except (TypeError, ValueError, IndexError):
            self.link.failed(Garbage())
            return self.local.take(provider, session)
        if not code:
            self.local.count(provider)
        return ticket

    async def cool(self, provider: str, key: int, seconds: float) -> None:
        self.local.cool_now(provider, key, seconds)
        now = self.local.clock()
        await self.link.run("cool", (self._keys[provider][1],), (self._ids[provider][key], repr(now + seconds), repr(now)))

    def spend(self, provider: str, tokens: int, cost: float | None = None) -> None:
        self.local.spend(provider, tokens, cost, show=not self.link.up)  # up: the metrics show Redis's counts
        limits = self._limits[provider]
        windowed = tokens > 0 and (limits.tpm is not None or limits.tokens_per_day is not None)
        costed = cost is not None or self._node is not None  # the cost form of SPEND
        if not (windowed or costed) or not self.link.up:
            return
        self.link.fire(self._spend(provider, tokens, cost, limits, costed))

    async def _spend(self, provider: str, tokens: int, cost: float | None, limits: ProviderLimits, costed: bool) -> None:
        now = self.local.clock()
        day = int(now // DAY)
        days = self._day_keys(provider, day)
        counted = tokens > 0
        args = (repr(now).encode(), str(tokens).encode(), YES if counted and limits.tpm is not None else NO,
                YES if counted and limits.tokens_per_day is not None else NO, days[4])
        if not costed:
            today = await self.link.run("spend", (self._keys[provider][0], days[0]), args)
            if isinstance(today, int) and today > 0:
                metrics.tokens_today(provider, today)
            return
        answer = await self.link.run(
            "spend", (self._keys[provider][0], *days[:4]),
            (*args, b"" if cost is None else repr(cost).encode(), YES if self._node is not None else NO),
        )
        if not isinstance(answer, list) or len(answer) != 4:
            return
        today, usd, node_today, node_usd = answer
        if isinstance(today, int) and today > 0:
            metrics.tokens_today(provider, today)
        if self._node is not None and self._node.tokens_per_day is not None and isinstance(node_today, int):
            metrics.tokens_today(NODE_WIDE, node_today)
        for name, text in ((provider, usd), (NODE_WIDE, node_usd)):
            if text:
                try:
                    metrics.cost_today(name, float(text))
                except ValueError:  # not a number: not shown
                    pass


YES, NO, NONE = b"1", b"0", b"-1"  # script arguments: a flag, and a limit or a position that is not there


def _args(*limits: float | None) -> tuple[bytes, ...]:
    """Limits as a script reads them, encoded: the number, or -1 for none."""
    return tuple(NONE if value is None else str(value).encode() for value in limits)


class SharedCircuits:
    """Circuits shared through Redis: written when they change here, read twice a second."""

    def __init__(self, link: RedisLink, circuits: Mapping[str, Circuit]) -> None:
        self.link = link
        self.circuits = dict(circuits)
        self._names = list(self.circuits)
        self._keys = [link.key("circuit", name) for name in self._names]
        self._poller: asyncio.Task[None] | None = None
        for circuit in self.circuits.values():
            circuit.on_change = self._changed

    def start(self) -> None:
        if self._names:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()

    def _changed(self, circuit: Circuit, opened: bool) -> None:
        """This process opened (value: until when, wall clock) or closed (value: ``c`` and when) a circuit."""
        if not self.link.up:
            return
        key = self.link.key("circuit", circuit.name)
        now = time.time()
        if opened:
            value, ttl = f"{now + circuit.cooldown:.3f}", circuit.cooldown
        else:
            value, ttl = f"c{now:.3f}", max(CIRCUIT_POLL * 4, 2.0)
        self.link.fire(self.link.command("SET", key, value, "PX", max(1, math.ceil(ttl * 1000))))

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(CIRCUIT_POLL)
            if not self.link.up:
                continue
            values = await self.link.command("MGET", *self._keys)
            if isinstance(values, list) and len(values) == len(self._names):
                self.apply(dict(zip(self._names, values, strict=True)), time.time())

    def apply(self, values: Mapping[str, Any], now: float) -> None:
        """Bring this process's circuits in line with what Redis holds."""
        for name, raw in values.items():
            if raw is None:
                continue
            circuit = self.circuits[name]
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                if text.startswith("c"):
                    if not circuit.up and float(text[1:]) > circuit.opened_wall:
                        circuit.close()
                    continue
                until = float(text)
            except ValueError:
                continue
            if circuit.up and until > now:
                circuit.open_for(min(until - now, circuit.cooldown))
