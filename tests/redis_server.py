"""A real ``redis-server`` on a free loopback port, for tests: started, killed, restarted and stopped by its PID.

``RedisServer.start(password=None)`` runs Debian's ``redis-server`` (found by
``redis_server_path()``) as a child process (tools/childproc.py) with
persistence off (``--save '' --appendonly no``, its working directory a
temporary one removed by ``stop()``), bound to ``127.0.0.1`` on a free port,
and returns once it has logged "Ready to accept connections". For outage
tests: ``kill()`` (SIGKILL, the port is released at once), ``pause()`` /
``resume()`` (SIGSTOP / SIGCONT: a server that accepts connections but never
answers) and ``restart()`` (a fresh, empty server on the same port: keys and
loaded scripts are gone). ``stop()`` sends SIGTERM, then SIGKILL.

``RedisServer.start(tls=RedisTls.issue(ca, directory))`` serves TLS only
(``--port 0 --tls-port N``, no client certificates asked for): ``url`` is
``rediss://127.0.0.1:N/0``, and a client must verify the server's
certificate against ``tls.ca_file`` (a ``trustme.CA``, as tests/test_tls.py
uses).

``command(*args)`` (and ``resp_command(port, *args)``) is a minimal
synchronous RESP2 client over a raw socket (TLS verified against the CA when
the server has one), one connection per call, for looking at the server from
a test: ``KEYS mira:*``, ``TTL key``, ``CLIENT LIST``, ``INFO clients``.
Replies decode to ``str`` / ``int`` / ``None`` / ``list``; an error reply
raises ``RespError``.

``require_redis_server()`` returns the ``redis-server`` path, or skips the
test when it is missing, except under ``CI=true``, where it fails (as
tests/test_dashboards.py does for promtool). A test module builds its fixture
from these::

    @pytest.fixture
    def redis() -> Iterator[RedisServer]:
        server = RedisServer.start()
        yield server
        server.stop()
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest

from tests.helpers import closed_port
from tools.childproc import ChildProcess

INSTALL_HINT = "install Debian's redis-server (apt-get install redis-server)"
READY_LINE = r"Ready to accept connections"
READY_TIMEOUT = 10.0  # seconds for redis-server to log READY_LINE
PORT_TRIES = 5  # free ports tried when another process takes the chosen one first
COMMAND_TIMEOUT = 5.0  # seconds for one resp_command call (connect, send, read)
KEEP_LINES = 2000  # output lines kept in memory


def redis_server_path() -> str | None:
    """The ``redis-server`` executable on PATH, or None."""
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """The ``redis-server`` path; without one: skip the test, but under CI=true fail it."""
    path = redis_server_path()
    if path is None:
        message = f"redis-server is not installed: {INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; under CI=true the Redis tests must run")
        pytest.skip(message)
    return path


# -- a minimal synchronous RESP2 client ----------------------------------------------------


class RespError(Exception):
    """An error reply (``-ERR ...``, ``-NOSCRIPT ...``, ``-NOAUTH ...``) from the server."""


def resp_encode(*args: Any) -> bytes:
    """A command as a RESP array of bulk strings (``str``, ``bytes``, ``int`` and ``float`` arguments)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def resp_read(stream: Any) -> Any:
    """One RESP2 reply from a binary file object: ``str``, ``int``, ``None``, a list, or a ``RespError`` (returned)."""
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis closed the connection mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        if len(data) != size + 2:
            raise ConnectionError("redis closed the connection mid-reply")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [resp_read(stream) for _ in range(count)]
    raise ConnectionError(f"not a RESP2 reply: {line!r}")


def resp_command(
    port: int,
    *args: Any,
    password: str | None = None,
    timeout: float = COMMAND_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> Any:
    """Send one command to the server at ``127.0.0.1:port`` (AUTH first with ``password``); return its decoded reply.

    With ``ssl_context`` the connection is TLS (the certificate checked for ``127.0.0.1``).
    Raises ``RespError`` for an error reply (nested error replies inside an array are returned, not raised)
    and ``OSError`` when the server cannot be reached or does not answer within ``timeout``.
    """
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        if ssl_context is not None:
            sock = stack.enter_context(ssl_context.wrap_socket(sock, server_hostname="127.0.0.1"))
        stream = stack.enter_context(sock.makefile("rb"))
        commands = ([("AUTH", password)] if password is not None else []) + [args]
        sock.sendall(b"".join(resp_encode(*command) for command in commands))
        replies = [resp_read(stream) for _ in commands]
    for reply in replies:
        if isinstance(reply, RespError):
            raise reply
    return replies[-1]


# -- the server ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisTls:
    """The files of a TLS server: its certificate (chain) and key, and the CA a client verifies them against."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    @classmethod
    def issue(cls, ca: Any, directory: Path) -> RedisTls:
        """Files in ``directory`` for a certificate that ``ca`` (a ``trustme.CA``) issues for 127.0.0.1 and localhost."""
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        files = cls(directory / "redis-cert.pem", directory / "redis-key.pem", directory / "redis-ca.pem")
        files.cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(files.key_file))
        ca.cert_pem.write_to_path(str(files.ca_file))
        return files

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only ``ca_file``."""
        return ssl.create_default_context(cafile=str(self.ca_file))


class RedisServer(ChildProcess):
    """``redis-server`` on ``127.0.0.1:port``, persistence off, its output captured (tools/childproc.py).

    The constructor starts the process; ``start()`` (a classmethod) also picks a free port and waits until the
    server is ready. ``restart()`` runs a new process on the same port in this same object.
    """

    def __init__(
        self,
        port: int,
        *,
        password: str | None = None,
        tls: RedisTls | None = None,
        executable: str | None = None,
        echo: bool = False,
    ) -> None:
        self.port = port
        self.password = password
        self.tls = tls
        self.executable = executable or require_redis_server()
        self.paused = False
        self._echo = echo
        self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self._launch()

    def _launch(self) -> None:
        """Start a ``redis-server`` process (again) on ``self.port``; ``ChildProcess`` state starts afresh."""
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert_file),
                "--tls-key-file", str(self.tls.key_file),
                "--tls-ca-cert-file", str(self.tls.ca_file),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        argv = [
            self.executable,
            *ports,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.password is not None:
            argv += ["--requirepass", self.password]
        self.paused = False
        super().__init__(argv, name=f"redis-{self.port}", cwd=self._dir, echo=self._echo, keep=KEEP_LINES, die_with_parent=True)

    @classmethod
    def start(
        cls, password: str | None = None, *, tls: RedisTls | None = None, executable: str | None = None, echo: bool = False
    ) -> Self:
        """A ready server on a free loopback port (another port is tried if the chosen one was taken meanwhile)."""
        path = executable or require_redis_server()
        attempt = 0
        while True:
            attempt += 1
            server = cls(closed_port(), password=password, tls=tls, executable=path, echo=echo)
            try:
                server.wait_ready()
            except AssertionError:
                server.stop()
                if attempt >= PORT_TRIES or "Address already in use" not in server.output:
                    raise
            else:
                return server

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> int:
        """Block until the server logs that it accepts connections; return the port (AssertionError if it does not)."""
        if self.wait_for_line(READY_LINE, timeout) is None:
            raise AssertionError(f"redis-server did not start on port {self.port}:\n{self.tail(40)}")
        return self.port

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0`` (``rediss://`` with TLS; the CA file is not in it)."""
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password is not None else ""
        scheme = "rediss" if self.tls is not None else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def command(self, *args: Any, timeout: float = COMMAND_TIMEOUT) -> Any:
        """One command over a fresh connection (``resp_command``), authenticated and TLS as the server wants."""
        context = self.tls.client_context() if self.tls is not None else None
        return resp_command(self.port, *args, password=self.password, timeout=timeout, ssl_context=context)

    # -- outages ---------------------------------------------------------------------------

    def kill(self, group: bool = False) -> None:
        """SIGKILL by PID (``group``: its process group) and reap it: the port is free and clients see it gone."""
        self.resume()
        super().kill(group)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self.join(5)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections and buffers commands, nothing is answered."""
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after ``pause()``; the buffered commands are answered."""
        if self.paused:
            self.signal(signal.SIGCONT)
            self.paused = False

    def restart(self, timeout: float = READY_TIMEOUT) -> int:
        """Stop the server if it still runs, start an empty one on the same port, wait until it is ready."""
        self.stop(keep_dir=True)
        self._launch()
        return self.wait_ready(timeout)

    def stop(self, timeout: float = 10.0, *, keep_dir: bool = False, **options: Any) -> int | None:
        """SIGCONT if paused, SIGTERM by PID, SIGKILL after ``timeout``; then remove its working directory."""
        self.resume()
        code = super().stop(timeout, **options)
        if not keep_dir:
            shutil.rmtree(self._dir, ignore_errors=True)
        return code

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
