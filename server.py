"""The Mira service node: builds the Tornado app, serves it, drains on SIGTERM.

Run it with ``python server.py`` (or ``make run``). Settings come from the
environment and ``.env`` (see ``config.py``). ``python server.py --version``
prints VERSION; ``python server.py --check-config`` (``make check-config``)
reads and checks the settings and files as start-up does, prints them, and
exits without listening or calling anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from typing import Any

from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.web import Application

from config import (
    ConfigError,
    EnvFile,
    Settings,
    effective_settings,
    load_settings,
    read_env_file,
    read_setting,
    setting_typos,
)
from handlers import eval as evaluation
from handlers import health, messages, meta, proxy, status, verify
from handlers.base import NotFoundHandler
from utils import collector, eventloop, metrics, tracing
from utils.context import NodeContext
from utils.deadlines import Deadlines
from utils.gate import loopback_host
from utils.http1 import ServerConnection
from utils.logs import log_request, setup_logging
from utils.redact import PROCESS_REDACTOR, escape_control
from utils.router_client import RouterClient, RouterError, RouterStatus, token_source
from utils.upstream.providers import unconfigured_references

log = logging.getLogger("mira.server")

ROUTE_MODULES = (health, proxy, messages, meta, verify, evaluation, status)
CUT_GRACE = 2.0  # seconds for requests cut at the end of the drain to send their last words
READ_CHUNK = 16 * 1024  # bytes per socket read of a client connection (Tornado's chunk_size)


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


def collect_less() -> None:
    """Before serving: what start-up made (modules, the app, ~31,000 objects) is never walked again, the collector's
    full collections come a tenth as often, and while the heap is large (thousands of streams held) each full
    collection walks only what is newer than the last one (utils/collector.py; bench/PERFORMANCE.md, issue 34)."""
    collector.install()


def mode_of(settings: Settings) -> str:
    return "router" if settings.router_base_url else "standalone"


IDLE_TIMEOUT = 75.0  # seconds a connection has, from its accept and from each answer's end, to send a request's headers


class NodeServer(HTTPServer):
    """Tornado's HTTP server, its idle-connection limit kept in one deadline set rather than a timer a request.

    Tornado's own limit (``idle_connection_timeout``, a header timeout it always sets) wraps the header read of
    every request in ``gen.with_timeout``: a future, a timer and its callbacks, 3 % of a proxied request's
    instructions (bench/PERFORMANCE.md, issue 34). Here a connection gets ``idle_connection_timeout`` seconds from
    its accept, and again from the end of each answer (``BaseHandler.on_finish``), to send the headers of its next
    request; the handler made for those headers takes the deadline off (``BaseHandler.set_default_headers``), so
    no request, however long, is cut by it. A connection that misses it is closed, as Tornado would close it, and
    one that closes leaves the set.
    """

    def initialize(self, request_callback: Any, ctx: NodeContext, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(request_callback, **kwargs)
        self.conn_params.header_timeout = None  # the deadlines below are the limit
        self.idle = ctx.idle_connections = Deadlines()
        self.idle_timeout = ctx.idle_timeout = float(kwargs.get("idle_connection_timeout") or 3600)

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        # Tornado's, with the node's connection class (utils.http1: a faster parse of header lines).
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = ServerConnection(stream, self.conn_params, context)
        self._connections.add(conn)
        conn.start_serving(self)
        self.idle.add(stream, self.idle_timeout, stream.close)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.idle.discard(getattr(server_conn, "stream", None))


class Node:
    """One serving process: its app, HTTP server and drain logic."""

    def __init__(
        self, settings: Settings, sockets: list[socket.socket], heartbeat: bool = True, status: RouterStatus | None = None
    ) -> None:
        self.settings = settings
        self.sockets = sockets
        self.ctx = NodeContext(settings, status)
        # Router work (registration, heartbeats): in router mode, by the one process given heartbeat=True.
        self.router = None
        if settings.router_base_url and heartbeat:
            self.router = RouterClient(
                settings, self.ctx.upstream.transport, self.ctx.machine_ip, self.ctx.redactor, self.ctx.router_status
            )
        self.app = make_app(self.ctx)
        # Bodies are streamed through BaseHandler, which enforces MAX_BODY_SIZE itself. Tornado allocates and
        # zeroes a fresh read buffer of chunk_size for every socket read (a 64 KB one by default, twice a
        # request); 16 KB holds a typical request whole and costs a quarter of that.
        self.server = NodeServer(
            self.app, self.ctx, max_body_size=settings.max_body_size + 1, idle_connection_timeout=IDLE_TIMEOUT,
            chunk_size=READ_CHUNK,
        )
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
        if self.router is not None:
            try:
                await self.router.prepare()  # registers when no MACHINE_API_TOKEN is given
            except RouterError:
                await self.ctx.aclose()
                raise
        await self.ctx.start()
        collect_less()
        self.server.add_sockets(self.sockets)
        if self.router is not None:
            self.router.start_heartbeat()
        await self.stopping.wait()
        await self.drain()

    async def drain(self) -> None:
        """Stop taking work, let in-flight requests finish, then close the rest."""
        if self.router is not None:
            self.router.stop_heartbeat()
        ctx = self.ctx
        ctx.draining = True
        self.server.stop()  # the port refuses new connections from here on
        try:
            await asyncio.wait_for(ctx.wait_idle(), timeout=self.settings.shutdown_timeout)
        except TimeoutError:
            cut = ctx.cut_in_flight()
            log.warning("drain: %d requests still running after %gs; ending them", cut, self.settings.shutdown_timeout)
            try:  # their upstream calls are aborted: each answers node_shutting_down in a few loop turns
                await asyncio.wait_for(ctx.wait_idle(), timeout=CUT_GRACE)
            except TimeoutError:
                log.warning("drain: %d requests did not end; closing their connections", ctx.in_flight)
        try:
            await asyncio.wait_for(self.server.close_all_connections(), timeout=5)
        except TimeoutError:
            log.warning("drain: connections did not close in time")
        await ctx.aclose()
        metrics.flush()
        tracing.stop()  # the last spans, for at most tracing.SHUTDOWN_WAIT seconds
        log.info("stopped")


def start_line(settings: Settings, loop: str, pid_note: str = "") -> str:
    """The start-up line: version, address, mode, the event loop (``loop``: utils.eventloop.choose's), providers."""
    configured = [name for name, p in settings.providers.items() if p.configured]
    token_note = f", {token_source(settings)}" if settings.router_base_url else ""
    return (
        f"Mira service node {settings.version} listening on {settings.host}:{settings.port}"
        f" ({mode_of(settings)} mode{token_note}, {loop} event loop{pid_note}); providers:"
        f" {', '.join(configured) or 'none'}"
    )


def serve(
    settings: Settings, sockets: list[socket.socket], heartbeat: bool = True, status: RouterStatus | None = None,
    worker: int | None = None,
) -> None:
    """Run one serving process until it has drained, on the event loop :func:`utils.eventloop.install` set.

    ``worker``: this process is that worker of WORKERS; it says so once its loop runs, naming the loop.
    """

    async def main() -> None:
        if worker is not None:
            loop = eventloop.name_of(asyncio.get_running_loop())
            log.info("worker %d serving (pid %d) on %s", worker, os.getpid(), loop)
        tracing.start(settings, PROCESS_REDACTOR)  # with OTEL_EXPORTER_OTLP_ENDPOINT: in this process, after any fork
        node = Node(settings, sockets, heartbeat=heartbeat, status=status)
        await node.run()

    asyncio.run(main())


def serve_exit_code(
    settings: Settings, sockets: list[socket.socket], heartbeat: bool = True, status: RouterStatus | None = None,
    worker: int | None = None,
) -> int:
    """:func:`serve`, with start-up failures turned into exit codes (2: configuration, 1: router)."""
    try:
        serve(settings, sockets, heartbeat, status, worker)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except RouterError as exc:
        log.error("%s", exc)
        return 1
    return 0


# -- worker processes ----------------------------------------------------------------------------

MAX_RESTARTS = 10


def reserve_port(settings: Settings) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket: it holds the port for the workers."""
    family, kind, proto, _, address = socket.getaddrinfo(
        settings.host or None, settings.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


class Supervisor:
    """The parent of WORKERS processes, each with its own SO_REUSEPORT listening socket.

    The kernel spreads connections over the workers' sockets. The parent passes
    SIGTERM/SIGINT on to every worker (each drains on its own), restarts a worker
    that dies unexpectedly, and exits 0 once all have stopped after a signal.
    Only worker 0 talks to the router.
    """

    def __init__(self, settings: Settings, status: RouterStatus) -> None:
        self.settings = settings
        self.status = status  # shared with every worker (made before they fork)
        self.children: dict[int, int] = {}  # pid -> worker index
        self.stopping = False
        self.restarts = 0

    def spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)
                sockets = bind_sockets(self.settings.port, self.settings.host, backlog=2048, reuse_port=True)
                # the event loop policy main() installed came along with the fork
                code = serve_exit_code(self.settings, sockets, heartbeat=index == 0, status=self.status, worker=index)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = index

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:
            log.warning("second %s: workers exit at once", signal.Signals(signum).name)
        else:
            log.info("received %s: draining %d workers", signal.Signals(signum).name, len(self.children))
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        for index in range(self.settings.workers):
            self.spawn(index)
        worst = 0
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in self.children:
                continue
            index = self.children.pop(pid)
            mark_worker_dead(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                worst = max(worst, code if code > 0 else 0)
                continue
            if code in (1, 2) or self.restarts >= MAX_RESTARTS:
                log.error("worker %d (pid %d) exited with %d: stopping the node", index, pid, code)
                self.stopping = True
                worst = code if code > 0 else 1
                self.on_signal(signal.SIGTERM, None)
                continue
            self.restarts += 1
            log.warning("worker %d (pid %d) died (%d): restarting it", index, pid, code)
            self.spawn(index)
        log.info("all workers stopped")
        return worst


def mark_worker_dead(pid: int) -> None:
    """Let Prometheus' multi-process mode drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def multiprocess_metrics_dir() -> bool:
    """Make sure PROMETHEUS_MULTIPROC_DIR is set before prometheus_client is imported.

    prometheus_client picks its storage at import time, so when the node has
    to create the folder it re-executes itself with the variable set; the
    return value says whether this process owns (and so removes) the folder.
    """
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        folder = tempfile.mkdtemp(prefix="mira-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
        os.environ["MIRA_METRICS_DIR_OWNED"] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # counters of an earlier run
        if name.endswith(".db"):
            os.unlink(os.path.join(folder, name))
    return os.environ.get("MIRA_METRICS_DIR_OWNED") == "1"


def config_error(message: str) -> None:
    """Report a configuration error before logging is set up (JSON when LOG_FORMAT asks for it)."""
    if os.environ.get("LOG_FORMAT", "").strip().lower() == "json":
        import ujson

        print(ujson.dumps({"level": "ERROR", "logger": "mira.server", "message": message}), file=sys.stderr)
    else:
        print(f"mira: {message}", file=sys.stderr)


def warn_if_open(settings: Settings) -> None:
    """One warning, at any LOG_LEVEL, when the node listens beyond loopback with neither gate set."""
    if loopback_host(settings.host) or settings.allowed_clients or settings.service_api_keys:
        return
    log.warning(
        "listening on %s with neither ALLOWED_CLIENTS nor SERVICE_API_KEY set: anyone who reaches port %d can spend"
        " the provider keys (on the Mira network, set ALLOWED_CLIENTS to the router's addresses)",
        settings.host, settings.port,
    )


def raise_fd_limit() -> None:
    """Lift the soft open-file limit to the hard one: each open stream holds two sockets."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = 1 << 20
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


USAGE = """usage: python server.py [--version | --check-config]
  (no argument)   run the node (settings from the environment and ENV_FILE, default .env)
  --version       print VERSION (what /health reports) and exit
  --check-config  read and check every setting and file as start-up does, print the effective settings
                  (secrets masked) and the names that look like settings but are not; exit 0, or 2 on a bad
                  setting. Listens on no port, calls no router, provider or Redis."""


def read_configuration() -> tuple[Settings, EnvFile, list[str]]:
    """Start-up's reading of the configuration: the settings, checked (ConfigError when one is bad), the
    ``.env`` file they were read from, and a warning line for each name of that file or of the environment
    that looks like a setting but is not one (config.setting_typos), for each alias or fallback that names
    a provider without a key, and for EVENT_LOOP=uvloop without uvloop (utils.eventloop.choose)."""
    settings = load_settings()
    env_file = read_env_file()
    warnings = setting_typos(os.environ, env_file.values, env_file.name or ".env") + unconfigured_references(settings)
    loop_warning = eventloop.choose(settings.event_loop)[1]
    return settings, env_file, warnings + ([loop_warning] if loop_warning else [])


def print_version() -> int:
    """``--version``: VERSION as start-up reads it (the environment, then ENV_FILE's file)."""
    try:
        version = read_setting("VERSION")
    except ConfigError as exc:
        config_error(f"configuration error: {exc}")
        return 2
    print(escape_control(version))
    return 0


def check_config() -> int:
    """``--check-config``: every setting and file read and checked as start-up does; nothing listened on or called.

    Prints ``NAME=value (source)`` for each setting (secrets masked), then the warnings about names that are
    not settings; exit 0. A bad setting: start-up's message, exit 2.
    """
    try:
        settings, env_file, typos = read_configuration()
    except ConfigError as exc:
        config_error(f"configuration error: {exc}")
        return 2
    for line in effective_settings(settings, env_file, os.environ):
        print(escape_control(line))
    for line in typos:
        print(escape_control(f"warning: {line}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        return print_version()
    if args == ["--check-config"]:
        return check_config()
    if args:
        print(USAGE, file=sys.stderr)
        return 2
    raise_fd_limit()
    try:
        settings, _, typos = read_configuration()
    except ConfigError as exc:
        config_error(f"configuration error: {exc}")
        return 2
    owned_metrics_dir = settings.workers > 1 and multiprocess_metrics_dir()
    loop = eventloop.choose(settings.event_loop)[0]
    eventloop.install(loop)  # before any event loop exists, and before the workers fork: theirs is this one too
    for secret in settings.secrets():
        PROCESS_REDACTOR.add(secret)
    setup_logging(settings.log_level, settings.log_format, PROCESS_REDACTOR)
    for line in typos:  # before the node listens
        log.warning("%s", line)
    try:
        if settings.workers > 1:
            reservation = reserve_port(settings)
        else:
            sockets = bind_sockets(settings.port, settings.host, backlog=2048)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror)
        return 1
    if settings.port == 0:  # an ephemeral port (tests): report the one the system chose
        bound = reservation if settings.workers > 1 else sockets[0]
        settings = dataclasses.replace(settings, port=bound.getsockname()[1])
    status = RouterStatus(routed=bool(settings.router_base_url), name=settings.machine_name)
    warn_if_open(settings)
    if settings.workers == 1:
        log.info(start_line(settings, loop))
        return serve_exit_code(settings, sockets, status=status)
    log.info(start_line(settings, loop, f", {settings.workers} workers"))
    try:
        return Supervisor(settings, status).run()
    finally:
        reservation.close()
        if owned_metrics_dir:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
