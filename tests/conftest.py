"""Shared fixtures: the mock upstream, an in-process node, a node subprocess.

In-process tests use pytest-tornado: ``app`` builds the node's application
with settings read from a clean environment (``node_env`` plus any
``@pytest.mark.node_env(NAME=value)`` overrides), ``node_url`` serves it on a
free loopback port, and test coroutines (``@pytest.mark.gen_test``) talk HTTP
to it. The mock upstream runs in its own thread, so synchronous clients can
run in an executor without blocking anything.

Every event loop of the test process (pytest-tornado's ``io_loop``, the mock
upstream's, an ``asyncio.run``) is the one the node runs on by default:
uvloop, installed as server.py installs it (``utils.eventloop``).
``pytest --event-loop asyncio`` runs the in-process tests on asyncio's
standard loop instead; a node in its own process reads EVENT_LOOP as always.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import ENV_VARIABLES, PROVIDERS, SETTING_OF, load_settings
from tests.mock_upstream import MockUpstream
from tools.childproc import ChildProcess
from utils import eventloop

ROOT = Path(__file__).resolve().parent.parent

# Every variable the node reads, cleared before each test builds its settings.
NODE_VARIABLES = list(ENV_VARIABLES)

# Recognisable secrets: tests assert they never leak.
SECRETS = {
    "OPENAI_API_KEY": "sk-openai-SECRET-0001",
    "OPENROUTER_API_KEY": "sk-or-SECRET-0002",
    "ANTHROPIC_API_KEY": "sk-ant-SECRET-0003",
    "GROQ_API_KEY": "gsk-SECRET-0004",
    "MIRA_API_KEY": "mira-SECRET-0005",
    "OLLAMA_API_KEY": "ollama-SECRET-0006",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--event-loop", choices=eventloop.EVENT_LOOPS, default=SETTING_OF["EVENT_LOOP"].default,
        help="the event loop of the in-process tests (default: the node's default, uvloop)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "node_env(**vars): environment overrides for the node under test")
    # before any test makes a loop: the policy the node installs at start-up (server.main), so that the in-process
    # node runs on the loop a real one runs on
    loop, warning = eventloop.choose(config.getoption("event_loop"))
    if warning:
        raise pytest.UsageError(warning)
    eventloop.install(loop)


@pytest.fixture(scope="session")
def event_loop_name(pytestconfig: pytest.Config) -> str:
    """The event loop the in-process tests run on (``--event-loop``): what the in-process node reports."""
    return str(pytestconfig.getoption("event_loop"))


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[MockUpstream]:
    up = MockUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def upstream(upstream_server: MockUpstream) -> MockUpstream:
    """The mock upstream, reset for this test."""
    upstream_server.reset()
    return upstream_server


def base_env(upstream: MockUpstream) -> dict[str, str]:
    """A node environment with every provider pointed at the mock upstream."""
    env = {
        "ENV_FILE": os.devnull,
        "UPSTREAM_RETRY_BACKOFF": "0.01",
        "UPSTREAM_TIMEOUT": "5",
        "UPSTREAM_CONNECT_TIMEOUT": "2",
        "LOG_LEVEL": "INFO",
        "VERSION": "9.9.9-test",
    }
    for row in PROVIDERS.values():
        env[row.url_var] = upstream.base_url
        env[row.key_var] = SECRETS[row.key_var]
    return env


@pytest.fixture
def node_env(request: pytest.FixtureRequest, upstream: MockUpstream) -> dict[str, str]:
    env = base_env(upstream)
    for marker in reversed(list(request.node.iter_markers("node_env"))):
        env.update({k: str(v) for k, v in marker.kwargs.items()})
    return env


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No node setting in the environment and no .env file: settings read now are the defaults and what a test sets."""
    for name in NODE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENV_FILE", os.devnull)
    return monkeypatch


@pytest.fixture
def settings(node_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in NODE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in node_env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.fixture
def node_options() -> dict[str, Any]:
    """Keyword arguments of the in-process node's NodeContext (a module overrides it for a test clock, say)."""
    return {}


@pytest.fixture
def app(settings: Any, io_loop: Any, node_options: dict[str, Any]) -> Iterator[Any]:
    from server import make_app
    from utils.context import NodeContext

    ctx = NodeContext(settings, **node_options)
    io_loop.run_sync(ctx.start)
    yield make_app(ctx)
    io_loop.run_sync(ctx.aclose)


@pytest.fixture
def idle_timeout() -> float:
    """The in-process node's IDLE_TIMEOUT (a module overrides it to see connections closed)."""
    from server import IDLE_TIMEOUT

    return IDLE_TIMEOUT


@pytest.fixture
def http_server(request: pytest.FixtureRequest, io_loop: Any, _unused_port: Any, app: Any, idle_timeout: float) -> Any:
    """pytest-tornado's server fixture, with the node's server class (server.NodeServer) in place of Tornado's."""
    from server import NodeServer

    server = NodeServer(app, app.settings["ctx"], idle_connection_timeout=idle_timeout)
    server.add_socket(_unused_port[0])

    def stop() -> None:
        server.stop()
        io_loop.run_sync(server.close_all_connections, timeout=request.config.option.async_test_timeout)

    request.addfinalizer(stop)
    return server


@pytest.fixture
def node_url(http_server: Any, http_port: int) -> str:
    """Base URL of the in-process node (no trailing slash)."""
    return f"http://127.0.0.1:{http_port}"


@pytest.fixture
def ctx(app: Any) -> Any:
    """The in-process node's shared state."""
    return app.settings["ctx"]


# -- a node in its own process ------------------------------------------------------------


class NodeProcess(ChildProcess):
    """``python server.py`` started with a given environment, its stdout and stderr captured (tools/childproc.py)."""

    def __init__(self, env: dict[str, str], args: list[str] | None = None) -> None:
        full = {k: v for k, v in os.environ.items() if k not in NODE_VARIABLES}
        full.update({"PORT": "0", "HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
        full.update(env)
        super().__init__([sys.executable, str(ROOT / "server.py"), *(args or [])], name="node", env=full)
        self.port = 0

    def wait_ready(self, timeout: float = 15.0) -> int:
        match = self.wait_for_line(r"listening on [^ ]+:(\d+)", timeout)
        if match is None:
            raise AssertionError("node did not start:\n" + self.output)
        self.port = int(match.group(1))
        return self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0, **options: Any) -> int | None:
        """SIGTERM; after ``timeout`` seconds SIGKILL to the node's process group (its workers too)."""
        return super().stop(timeout, **{"kill_group": True, **options})


@pytest.fixture
def spawn_node(upstream: MockUpstream) -> Iterator[Any]:
    """Factory: ``spawn_node(env, ready=True)`` starts a node process; all are stopped after the test."""
    started: list[NodeProcess] = []

    def spawn(env: dict[str, str | None] | None = None, ready: bool = True, args: list[str] | None = None) -> NodeProcess:
        full = base_env(upstream)
        full.update(env or {})  # a value of None removes the variable
        node = NodeProcess({k: v for k, v in full.items() if v is not None}, args)
        started.append(node)
        if ready:
            node.wait_ready()
        return node

    yield spawn
    for node in started:
        node.stop()
