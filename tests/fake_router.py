"""A fake Mira router for the test suite: machine registration and liveness.

It is a :class:`tests.loopback_server.LoopbackServer` (a Tornado ``HTTPServer``
on its own event loop in a background thread, bound to a free loopback port)
and records every call (method, path, ``Authorization`` header, JSON body,
arrival and end times)::

    router = FakeRouter().start()
    router.add_machine("10.0.0.7", "node-seven", tokens=["mt-existing"])
    router.fail_first = 2                    # the next two calls get a 503
    ...                                      # ROUTER_BASE_URL=router.base_url
    assert router.wait_for(lambda r: len(r.beats()) >= 3)
    router.stop()

Endpoints (admin ones need ``Bearer admin_token``, liveness a token of the machine):

* ``GET /admin/machines/{ip}``: 200 with the machine, or 404 (``null_lookup``: 200 ``null``, as the real router);
* ``POST /admin/machines/register``: creates (or updates) the machine, 200;
* ``GET /admin/machines/{ip}/auth-tokens``: 200 ``[{"api_token", "description"}, ...]``;
* ``POST /admin/machines/{ip}/auth-tokens``: 200 with a new ``{"api_token", ...}``;
* ``POST /liveness/{ip}``: 200, or 401 for a token the machine does not have (``beat_status``: that status, always).

Switches: ``fail_first`` (the next K calls get 503), ``always_fail`` (every
call gets 503), ``hang`` (no call is ever answered; it ends when the client
leaves), ``refuse`` (``(status, text)``: every call gets that answer, as a
router that echoes what it was sent might give).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import tornado.web

from tests.loopback_server import LoopbackServer, json_or_none

ADMIN_TOKEN = "adm-SECRET-router-0001"


@dataclasses.dataclass
class Call:
    """One call as the router saw it.

    ``finished_at`` is set when it was answered, ``closed_at`` when the
    client went away first (a hanging call it gave up on).
    """

    method: str
    path: str
    authorization: str
    json: Any
    received_at: float
    status: int | None = None
    finished_at: float | None = None
    closed_at: float | None = None

    @property
    def open(self) -> bool:
        return self.finished_at is None and self.closed_at is None


class FakeRouter(LoopbackServer):
    """The router's admin and liveness API, served from a background thread."""

    thread_name = "fake-router"

    def __init__(self) -> None:
        """Create a stopped fake with no machines; call :meth:`start` to serve."""
        super().__init__()
        self.reset()

    def make_app(self) -> tornado.web.Application:
        """The admin and liveness endpoints; 404 (after the checks) elsewhere."""
        args = {"router": self}
        return tornado.web.Application(
            [
                (r"/admin/machines/register", _RegisterHandler, args),
                (r"/admin/machines/([^/]+)/auth-tokens", _TokensHandler, args),
                (r"/admin/machines/([^/]+)", _MachineHandler, args),
                (r"/liveness/([^/]+)", _LivenessHandler, args),
            ],
            default_handler_class=_Handler,
            default_handler_args=args,
            log_function=lambda handler: None,  # quiet: the calls are recorded instead
        )

    # ---- configuration ----------------------------------------------------

    def reset(self) -> None:
        """Forget machines, calls and switches."""
        with self._cond:
            self.admin_token = ADMIN_TOKEN
            self.machines: dict[str, dict[str, Any]] = {}
            self.fail_first = 0
            self.always_fail = False
            self.hang = False
            self.refuse: tuple[int, str] | None = None
            self.null_lookup = False
            self.beat_status: int | None = None
            self._calls: list[Call] = []
            self._serial = itertools.count(1)
            self._cond.notify_all()

    def add_machine(self, ip: str, name: str, tokens: list[str] | tuple[str, ...] = ()) -> None:
        """An already registered machine, with these machine tokens."""
        with self._cond:
            self.machines[ip] = {
                "network_ip": ip, "name": name, "description": "pre-registered", "disabled": False,
                "tokens": [{"api_token": t, "description": "pre-issued"} for t in tokens],
            }

    def forget(self, ip: str) -> None:
        """Drop a machine and its tokens, as a router whose database was reset would."""
        with self._cond:
            self.machines.pop(ip, None)

    def registrations(self) -> list[Call]:
        """The ``POST /admin/machines/register`` calls since reset."""
        return [c for c in self.calls if c.path == "/admin/machines/register"]

    def tokens_of(self, ip: str) -> list[str]:
        """The machine tokens the router holds for ``ip``, oldest first."""
        with self._cond:
            machine = self.machines.get(ip)
            return [t["api_token"] for t in machine["tokens"]] if machine else []

    # ---- observation ------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """A snapshot of every call since reset, in arrival order."""
        with self._cond:
            return [copy.deepcopy(c) for c in self._calls]

    def beats(self) -> list[Call]:
        """The liveness calls since reset."""
        return [c for c in self.calls if c.path.startswith("/liveness/")]

    def admin_calls(self) -> list[Call]:
        return [c for c in self.calls if c.path.startswith("/admin/")]

    @property
    def in_flight(self) -> int:
        with self._cond:
            return sum(1 for c in self._calls if c.open)

    # ---- called from the handlers (router thread) ---------------------------

    def _record(self, call: Call) -> bool:
        """Record a call; True when it is to fail (503)."""
        with self._cond:
            self._calls.append(call)
            fail = self.always_fail or self.fail_first > 0
            if self.fail_first > 0:
                self.fail_first -= 1
            self._cond.notify_all()
            return fail

    def _end(self, call: Call, status: int | None) -> None:
        with self._cond:
            if status is None:
                call.closed_at = time.monotonic()
            else:
                call.status, call.finished_at = status, time.monotonic()
            self._cond.notify_all()

    def _new_token(self) -> str:
        return f"mt-SECRET-issued-{next(self._serial):04d}"


class _Handler(tornado.web.RequestHandler):
    """Records the call, applies the switches, checks the bearer; 404 for unknown paths."""

    admin = True

    def initialize(self, router: FakeRouter) -> None:
        self.router = router
        self.call: Call | None = None
        self.gone = asyncio.Event()

    async def prepare(self) -> None:
        self.call = Call(
            method=self.request.method or "",
            path=self.request.path,
            authorization=self.request.headers.get("Authorization", ""),
            json=json_or_none(self.request),
            received_at=time.monotonic(),
        )
        fail = self.router._record(self.call)
        if self.router.hang:
            await self.gone.wait()
            raise tornado.web.Finish()
        if self.router.refuse is not None:
            self.set_status(self.router.refuse[0])
            self.finish(self.router.refuse[1])
        elif fail:
            self.reply(503, {"detail": "router unavailable"})
        elif self.admin and self.call.authorization != f"Bearer {self.router.admin_token}":
            self.reply(401, {"detail": "invalid admin token"})
        elif type(self) is _Handler:
            self.reply(404, {"detail": "not found"})

    def reply(self, status: int, body: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def reply_machine(self, ip: str, view: Callable[[dict[str, Any]], Any]) -> None:
        """200 with ``view(machine)`` for a known machine, else 404."""
        with self.router._cond:
            machine = self.router.machines.get(ip)
            if machine is None:
                self.reply(404, {"detail": "machine not found"})
            else:
                self.reply(200, view(machine))

    def lookup_machine(self, ip: str) -> None:
        if self.router.null_lookup and ip not in self.router.machines:
            self.reply(200, None)
        else:
            self.reply_machine(ip, _public)

    def on_finish(self) -> None:
        if self.call is not None and not self.call.closed_at:
            self.router._end(self.call, self.get_status())

    def on_connection_close(self) -> None:
        self.gone.set()
        if self.call is not None and self.call.finished_at is None:
            self.router._end(self.call, None)


def _public(machine: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in machine.items() if k != "tokens"}


class _MachineHandler(_Handler):
    def get(self, ip: str) -> None:
        self.lookup_machine(ip)


class _RegisterHandler(_Handler):
    def post(self) -> None:
        body = self.call.json if self.call else None
        if not isinstance(body, dict) or not isinstance(body.get("network_ip"), str) or not isinstance(body.get("name"), str):
            self.reply(422, {"detail": "network_ip and name are required"})
            return
        with self.router._cond:
            machine = self.router.machines.setdefault(body["network_ip"], {"tokens": []})
            machine.update({k: body[k] for k in ("network_ip", "name", "description", "disabled", "traffic_weight",
                                                 "supported_models") if k in body})
            self.reply(200, _public(machine))


class _TokensHandler(_Handler):
    def get(self, ip: str) -> None:
        self.reply_machine(ip, lambda machine: machine["tokens"])

    def post(self, ip: str) -> None:
        body = self.call.json if self.call else None
        with self.router._cond:
            machine = self.router.machines.get(ip)
            if machine is None:
                self.reply(404, {"detail": "machine not found"})
                return
            token = {"api_token": self.router._new_token(), "description": (body or {}).get("description", "")}
            machine["tokens"].append(token)
            self.reply(200, token)


class _LivenessHandler(_Handler):
    admin = False

    def post(self, ip: str) -> None:
        valid = self.call is not None and self.call.authorization.removeprefix("Bearer ") in self.router.tokens_of(ip)
        if self.router.beat_status is not None:
            self.reply(self.router.beat_status, {"detail": f"refused with {self.router.beat_status}"})
        elif valid:
            self.reply(200, {"status": "ok"})
        else:
            self.reply(401, {"detail": "invalid machine token"})
