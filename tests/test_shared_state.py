"""Shared state on a real Redis: limits, key cooling and circuits across nodes and workers, and Redis failing.

Each test starts its own ``redis-server`` (tests/redis_server.py) on a free
loopback port and node processes pointed at it, talks HTTP to them, and looks
at Redis with a raw RESP client. Redis is killed, paused (SIGSTOP) or replaced
by a server that answers nonsense, and the nodes must go on answering.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import NODE_VARIABLES, ROOT, NodeProcess, base_env
from tests.mock_upstream import Behavior
from tests.redis_server import RedisServer, RedisTls

KEYS = ("sk-shared-first-AAAA1111", "sk-shared-second-BBBB2222", "sk-shared-third-CCCC3333")
PASSWORD = "redis-pass-SECRET-9876"
SHARED = r"shared state on Redis at redis"  # the line a node logs once it shares through Redis


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer.start()
    yield server
    server.stop()


def chat(node: NodeProcess, model: str = "openai/mock-model", timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """POST a chat completion; the status, headers and body whatever the status."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(node.url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def fetch(node: NodeProcess, path: str) -> str:
    with urllib.request.urlopen(node.url + path, timeout=10) as response:
        return response.read().decode()


def redis_up(node: NodeProcess) -> float | None:
    """``mira_redis_up`` of the node, or None when it does not export it."""
    for line in fetch(node, "/metrics").splitlines():
        if line.startswith("mira_redis_up "):
            return float(line.split()[1])
    return None


def limits_file(tmp_path: Path, table: dict[str, Any]) -> str:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(table))
    return str(path)


def start_shared(spawn_node: Any, redis: RedisServer, env: dict[str, str] | None = None, lines: int = 1) -> NodeProcess:
    """A node on ``redis``, returned once ``lines`` processes of it say they share through Redis."""
    node = spawn_node({"REDIS_URL": redis.url, **(env or {})})
    for _ in range(lines):
        assert node.wait_for_line(SHARED, 10) is not None, node.output
    if lines > 1:
        deadline = time.monotonic() + 10
        while node.output.count("shared state on Redis at") < lines and time.monotonic() < deadline:
            node.wait_for_line(r"a line that never comes", 0.1)
        assert node.output.count("shared state on Redis at") >= lines, node.output
    return node


def key_positions(upstream: Any, since: int = 0) -> list[int]:
    return [KEYS.index(r.headers["authorization"].removeprefix("Bearer ")) + 1 for r in upstream.requests[since:]]


# -- sharing ------------------------------------------------------------------------------------------------


def test_two_nodes_share_one_rpm_limit(spawn_node, upstream, redis, tmp_path):
    env = {"PROVIDER_LIMITS_FILE": limits_file(tmp_path, {"openai": {"rpm": 3}})}
    first, second = start_shared(spawn_node, redis, env), start_shared(spawn_node, redis, env)
    codes = [chat(node)[0] for node in (first, second, first, second, second)]
    assert codes == [200, 200, 200, 429, 429]
    assert len(upstream.requests) == 3


def test_the_workers_of_one_node_share_one_rpm_limit(spawn_node, upstream, redis, tmp_path):
    env = {"WORKERS": "2", "PROVIDER_LIMITS_FILE": limits_file(tmp_path, {"openai": {"rpm": 4}})}
    node = start_shared(spawn_node, redis, env, lines=2)
    codes = [chat(node)[0] for _ in range(8)]  # a new connection each: the kernel spreads them over the workers
    assert codes.count(200) == 4 and codes.count(429) == 4
    assert len(upstream.requests) == 4


def test_a_key_cooled_on_one_node_is_skipped_by_another(spawn_node, upstream, redis):
    env = {"OPENAI_API_KEY": ",".join(KEYS), "UPSTREAM_RETRIES": "0"}
    first, second = start_shared(spawn_node, redis, env), start_shared(spawn_node, redis, env)
    upstream.set_key_behavior("AAAA1111", Behavior(status=429, error_message="quota", headers={"Retry-After": "120"}))
    assert chat(first)[0] == 200  # key 1 answers 429 and cools; key 2 answers
    assert key_positions(upstream) == [1, 2]
    for _ in range(4):
        assert chat(second)[0] == 200
    assert 1 not in key_positions(upstream, 2)
    assert sorted(set(key_positions(upstream, 2))) == [2, 3]


def test_keys_listed_in_another_order_are_still_the_same_keys(spawn_node, upstream, redis):
    first = start_shared(spawn_node, redis, {"OPENAI_API_KEY": ",".join(KEYS), "UPSTREAM_RETRIES": "0"})
    second = start_shared(spawn_node, redis, {"OPENAI_API_KEY": ",".join(reversed(KEYS)), "UPSTREAM_RETRIES": "0"})
    upstream.set_key_behavior("AAAA1111", Behavior(status=401, error_message="revoked"))
    assert chat(first)[0] == 200
    for _ in range(4):
        assert chat(second)[0] == 200
    assert 1 not in key_positions(upstream, 2)


def test_a_circuit_opened_on_one_node_is_seen_on_another_within_a_second(spawn_node, upstream, redis):
    env = {"CIRCUIT_FAILURES": "1", "CIRCUIT_COOLDOWN": "30", "UPSTREAM_RETRIES": "0"}
    first, second = start_shared(spawn_node, redis, env), start_shared(spawn_node, redis, env)
    upstream.set_behavior("down", Behavior(status=500, error_message="broken"))
    assert chat(first, "openai/down")[0] == 500
    opened = time.monotonic()
    seen = None
    while time.monotonic() - opened < 3:
        if json.loads(fetch(second, "/health"))["providers"]["openai"] == "down":
            seen = time.monotonic() - opened
            break
        second.wait_for_line(r"a line that never comes", 0.05)
    assert seen is not None, "the second node never saw the circuit open"
    status, headers, body = chat(second, "openai/down")
    assert status == 503 and json.loads(body)["error"]["code"] == "provider_unavailable"
    assert len(upstream.requests) == 1


def test_every_key_is_under_the_prefix_and_expires(spawn_node, upstream, redis, tmp_path):
    env = {
        "REDIS_PREFIX": "t23:",
        "OPENAI_API_KEY": ",".join(KEYS),
        "UPSTREAM_RETRIES": "0",
        "CIRCUIT_FAILURES": "1",
        "PROVIDER_LIMITS_FILE": limits_file(tmp_path, {"openai": {"rpm": 100, "tpm": 10000, "tokens_per_day": 100000}}),
    }
    node = start_shared(spawn_node, redis, env)
    upstream.set_key_behavior("AAAA1111", Behavior(status=429, error_message="quota"))
    upstream.set_behavior("down", Behavior(status=502, error_message="broken"))
    for model in ("openai/mock-model", "openai/mock-model", "anthropic/down"):
        chat(node, model)
    deadline = time.monotonic() + 5
    keys: list[str] = []
    while time.monotonic() < deadline:  # the token counts and the circuit are written in the background
        keys = sorted(redis.command("KEYS", "*"))
        if any(k.startswith("t23:day:") for k in keys) and any(k.startswith("t23:circuit:") for k in keys):
            break
        node.wait_for_line(r"a line that never comes", 0.05)
    assert {k.split(":")[1] for k in keys} == {"win", "day", "cool", "turn", "circuit"}, keys
    for key in keys:
        assert key.startswith("t23:"), key
        assert redis.command("PTTL", key) > 0, key
        assert "AAAA1111" not in key and "sk-shared" not in key


# -- Redis failing ------------------------------------------------------------------------------------------


def test_redis_killed_mid_run_then_back(spawn_node, upstream, redis, tmp_path):
    env = {"PROVIDER_LIMITS_FILE": limits_file(tmp_path, {"openai": {"rpm": 1000}}), "REDIS_TIMEOUT": "0.5"}
    node = start_shared(spawn_node, redis, env)
    assert chat(node)[0] == 200 and redis_up(node) == 1
    redis.kill()
    for _ in range(5):
        assert chat(node, timeout=2)[0] == 200  # decided in process: served, never failed by Redis
    assert node.wait_for_line(r"Redis at redis://127\.0\.0\.1:\d+/0 failed", 5) is not None, node.output
    assert redis_up(node) == 0
    redis.restart()
    assert node.wait_for_line(r"Redis at .* recovered after", 10) is not None, node.output
    assert redis_up(node) == 1
    assert chat(node)[0] == 200
    assert any(k.startswith("mira:win:") for k in redis.command("KEYS", "*"))  # shared again, scripts reloaded


def test_a_paused_redis_is_passed_over_after_redis_timeout(spawn_node, upstream, redis, tmp_path):
    env = {"PROVIDER_LIMITS_FILE": limits_file(tmp_path, {"openai": {"rpm": 1000}}), "REDIS_TIMEOUT": "0.3"}
    node = start_shared(spawn_node, redis, env)
    redis.pause()
    try:
        for _ in range(3):
            assert chat(node, timeout=5)[0] == 200
        assert node.wait_for_line(r"no answer within REDIS_TIMEOUT", 5) is not None, node.output
        assert redis_up(node) == 0
    finally:
        redis.resume()
    assert node.wait_for_line(r"recovered after", 10) is not None, node.output


def window_calls(redis: RedisServer) -> int:
    flat = redis.command("HGETALL", "mira:win:openai")
    return sum(int(count) for field, count in zip(flat[::2], flat[1::2], strict=True) if field.startswith("c:"))


def test_scripts_flushed_from_redis_are_loaded_again(spawn_node, upstream, redis, tmp_path):
    node = start_shared(spawn_node, redis, {"PROVIDER_LIMITS_FILE": limits_file(tmp_path, {"openai": {"rpm": 100}})})
    assert chat(node)[0] == 200 and window_calls(redis) == 1
    redis.command("SCRIPT", "FLUSH")  # as a restarted Redis would have lost them
    assert chat(node)[0] == 200  # NOSCRIPT: decided in process while the scripts load again
    for _ in range(20):
        assert chat(node)[0] == 200
        if window_calls(redis) > 1:
            break
    assert window_calls(redis) > 1, node.output
    assert redis_up(node) == 1


class NonsenseRedis:
    """A TCP server that speaks RESP but answers every script call with nonsense."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while True:
                head = stream.readline()
                if not head.startswith(b"*"):
                    return
                words = []
                for _ in range(int(head[1:])):
                    size = int(stream.readline()[1:])
                    words.append(stream.read(size + 2)[:-2].upper())
                if words[0] == b"PING":
                    conn.sendall(b"+PONG\r\n")
                elif words[0] == b"SCRIPT":
                    conn.sendall(b"$40\r\n" + b"0" * 40 + b"\r\n")
                elif words[0] in (b"HELLO", b"CLIENT", b"SELECT"):
                    conn.sendall(b"+OK\r\n")
                else:
                    conn.sendall(b"*2\r\n$5\r\nhello\r\n:7\r\n")  # not {key, code, seconds}

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


def test_a_redis_answering_nonsense_is_passed_over(spawn_node, upstream, tmp_path):
    nonsense = NonsenseRedis()
    try:
        env = {"REDIS_URL": f"redis://127.0.0.1:{nonsense.port}/0", "OPENAI_API_KEY": ",".join(KEYS),
               "PROVIDER_LIMITS_FILE": limits_file(tmp_path, {"openai": {"rpm": 2}})}
        node = spawn_node(env)
        codes = [chat(node)[0] for _ in range(3)]
        assert codes == [200, 200, 429]  # the in-process ledger decided each
        assert node.wait_for_line(r"an answer the node did not expect", 5) is not None, node.output
        assert redis_up(node) == 0
        assert key_positions(upstream) == [1, 2]
    finally:
        nonsense.close()


def test_the_redis_password_never_reaches_a_log_line(spawn_node, upstream, tmp_path):
    server = RedisServer.start(password=PASSWORD)
    try:
        node = start_shared(spawn_node, server, {"LOG_LEVEL": "DEBUG", "OPENAI_API_KEY": ",".join(KEYS)})
        assert chat(node)[0] == 200
        wrong = server.url.replace(PASSWORD, PASSWORD[::-1])
        refused = spawn_node({"REDIS_URL": wrong, "LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"})
        assert chat(refused)[0] == 200
        assert refused.wait_for_line(r"cannot be reached", 5) is not None, refused.output
        server.kill()
        assert chat(node)[0] == 200
        node.wait_for_line(r"failed", 5)
    finally:
        server.stop()
    for output in (node.output, refused.output):
        for secret in (PASSWORD, PASSWORD[::-1]):
            assert secret[:8] not in output and secret[-8:] not in output


def test_rediss_is_verified_against_upstream_ca_bundle(spawn_node, upstream, tmp_path):
    ca = trustme.CA()
    tls = RedisTls.issue(ca, tmp_path)
    server = RedisServer.start(tls=tls)
    try:
        trusted = start_shared_tls(spawn_node, server, {"UPSTREAM_CA_BUNDLE": str(tls.ca_file)})
        assert chat(trusted)[0] == 200 and redis_up(trusted) == 1
        untrusted = spawn_node({"REDIS_URL": server.url})  # the system store does not know this CA
        assert untrusted.wait_for_line(r"cannot be reached", 5) is not None, untrusted.output
        assert chat(untrusted)[0] == 200 and redis_up(untrusted) == 0
    finally:
        server.stop()


def start_shared_tls(spawn_node: Any, server: RedisServer, env: dict[str, str]) -> NodeProcess:
    node = spawn_node({"REDIS_URL": server.url, **env})
    assert node.wait_for_line(r"shared state on Redis at rediss://", 10) is not None, node.output
    return node


def test_without_redis_url_nothing_connects_and_redis_is_never_imported(spawn_node, upstream):
    node = spawn_node({})
    assert chat(node)[0] == 200
    assert redis_up(node) is None
    probe = (
        "import asyncio, sys\n"
        "from config import load_settings\n"
        "from utils.context import NodeContext\n"
        "async def main():\n"
        "    ctx = NodeContext(load_settings())\n"
        "    await ctx.start()\n"
        "    print(ctx.shared, 'redis' in sys.modules, 'utils.shared_state' in sys.modules)\n"
        "    await ctx.aclose()\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in NODE_VARIABLES}
    env.update(base_env(upstream))
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "None False False", out.stdout + out.stderr

