"""The Mira service node: builds the Tornado app, serves it, drains on SIGTERM.

Run it with ``python server.py`` (or ``make run``). Settings come from the
environment and ``.env`` (see ``config.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from config import ConfigError, Settings, load_settings
from handlers import chat, health
from handlers.base import NotFoundHandler
from utils.context import NodeContext
from utils.logs import log_request, setup_logging
from utils.redact import Redactor

log = logging.getLogger("mira.server")

ROUTE_MODULES = (health, chat)


def make_app(ctx: NodeContext) -> Application:
    """The Tornado application of one node process."""
    routes: list[Any] = []
    for module in ROUTE_MODULES:
        routes += module.routes
    return Application(
        routes,
        ctx=ctx,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=False,
    )


def mode_of(settings: Settings) -> str:
    return "router" if settings.router_base_url else "standalone"


class Node:
    """One serving process: its app, HTTP server and drain logic."""

    def __init__(self, settings: Settings, sockets: list[socket.socket]) -> None:
        self.settings = settings
        self.sockets = sockets
        self.ctx = NodeContext(settings)
        self.app = make_app(self.ctx)
        # Bodies are streamed through BaseHandler, which enforces MAX_BODY_SIZE itself.
        self.server = HTTPServer(self.app, max_body_size=settings.max_body_size + 1, idle_connection_timeout=75)
        self.stopping = asyncio.Event()
        self.signals = 0

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        if self.signals > 1:
            log.warning("second signal: exiting at once")
            os._exit(0)
        log.info("received %s: draining", signal.Signals(signum).name)
        self.stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        self.server.add_sockets(self.sockets)
        await self.stopping.wait()
        await self.drain()

    async def drain(self) -> None:
        """Stop taking work, let in-flight requests finish, then close the rest."""
        ctx = self.ctx
        ctx.draining = True
        self.server.stop()  # the port refuses new connections from here on
        try:
            await asyncio.wait_for(ctx.wait_idle(), timeout=self.settings.shutdown_timeout)
        except asyncio.TimeoutError:
            log.warning("drain: %d requests still running after %gs; closing them", ctx.in_flight, self.settings.shutdown_timeout)
        try:
            await asyncio.wait_for(self.server.close_all_connections(), timeout=5)
        except asyncio.TimeoutError:
            log.warning("drain: connections did not close in time")
        ctx.close()
        log.info("stopped")


def start_line(settings: Settings, pid_note: str = "") -> str:
    configured = [name for name, p in settings.providers.items() if p.api_key or name == "mira"]
    return (
        f"Mira service node {settings.version} listening on {settings.host}:{settings.port}"
        f" ({mode_of(settings)} mode{pid_note}); providers: {', '.join(configured) or 'none'}"
    )


def serve(settings: Settings, sockets: list[socket.socket]) -> None:
    """Run one serving process until it has drained."""

    async def main() -> None:
        node = Node(settings, sockets)
        await node.run()

    asyncio.run(main())


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"mira: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format, Redactor(settings.secrets()))
    try:
        sockets = bind_sockets(settings.port, settings.host, backlog=2048)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror)
        return 1
    if settings.port == 0:  # an ephemeral port (tests): report the one the system chose
        settings = dataclasses.replace(settings, port=sockets[0].getsockname()[1])
    log.info(start_line(settings))
    try:
        serve(settings, sockets)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
