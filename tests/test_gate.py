"""Who may call the node: ALLOWED_CLIENTS, TRUSTED_PROXIES, several SERVICE_API_KEYs (SPEC "Who may call the node").

The in-process node listens on 127.0.0.1; a client whose socket is bound to
127.0.0.2 is a second machine as far as the node can tell.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
from typing import Any

import openai
import pytest

from config import ConfigError, load_settings
from tests.conftest import NODE_VARIABLES
from tests.helpers import chat_body, error_of, get, post
from utils.gate import ClientGate, loopback_host

pytestmark = pytest.mark.gen_test(timeout=30)

CHAT = "/v1/chat/completions"
OTHER = "127.0.0.2"  # a second loopback address: another client


def call(url: str, path: str = CHAT, body: Any = None, headers: dict[str, str] | None = None,
         source: str = "127.0.0.1", method: str = "POST") -> tuple[int, dict[str, str], bytes]:
    """One blocking HTTP call from the ``source`` address: status, headers, body."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, payload, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


async def call_from(url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: call(url, **kwargs))


def code_of(body: bytes) -> str | None:
    return json.loads(body)["error"]["code"]


# -- ALLOWED_CLIENTS ---------------------------------------------------------------------------------------


@pytest.mark.node_env(ALLOWED_CLIENTS=f"2001:db8::/32, 198.51.100.0/24, {OTHER}")
async def test_only_listed_clients_are_served(node_url, upstream):
    status, _, _ = await call_from(node_url, body=chat_body(), source=OTHER)
    assert status == 200
    status, headers, body = await call_from(node_url, body=chat_body(), source="127.0.0.1")
    assert status == 403
    assert code_of(body) == "client_forbidden"
    assert headers["Connection"] == "close"
    assert len(upstream.requests) == 1  # the refused request never reached an upstream


@pytest.mark.node_env(ALLOWED_CLIENTS="127.0.0.2/31")
async def test_a_cidr_block_admits_its_addresses(node_url, upstream):
    assert (await call_from(node_url, body=chat_body(), source="127.0.0.3"))[0] == 200
    assert (await call_from(node_url, body=chat_body(), source="127.0.0.4"))[0] == 403


@pytest.mark.node_env(ALLOWED_CLIENTS=OTHER)
async def test_every_v1_route_is_gated_and_the_node_s_own_pages_are_not(node_url, upstream):
    for path in ("/v1/models", "/v1/embeddings", "/v1/verify", "/v1/eval", "/v1/responses", "/v1/completions"):
        method = "GET" if path == "/v1/models" else "POST"
        status, _, body = await call_from(node_url, path=path, body=None if method == "GET" else {}, method=method)
        assert (status, code_of(body)) == (403, "client_forbidden"), path
    for path in ("/health", "/metrics", "/openapi.json"):
        assert (await get(node_url + path)).code == 200, path


@pytest.mark.node_env(ALLOWED_CLIENTS=OTHER, REQUEST_BODY_TIMEOUT="30")
async def test_the_403_comes_before_the_body_and_closes_the_connection(node_url, upstream):
    """Headers announcing a large body, and no body: the answer comes without it, then the socket closes."""
    host, port = node_url.removeprefix("http://").split(":")

    def send_headers_only() -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
                b"Content-Length: 10000000\r\n\r\n"
            )
            received = b""
            while chunk := sock.recv(65536):  # ends when the node closes; a 408 would take 30 s
                received += chunk
            return received

    received = await asyncio.get_running_loop().run_in_executor(None, send_headers_only)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    assert json.loads(body)["error"]["code"] == "client_forbidden"


@pytest.mark.node_env(ALLOWED_CLIENTS=OTHER)
async def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(node_url, upstream):
    status, _, body = await call_from(node_url, body=chat_body(), headers={"X-Forwarded-For": OTHER})
    assert (status, code_of(body)) == (403, "client_forbidden")


@pytest.mark.node_env(ALLOWED_CLIENTS="203.0.113.7", TRUSTED_PROXIES="127.0.0.1/32, 10.0.0.0/8")
async def test_behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client(node_url, upstream, caplog):
    caplog.set_level(logging.INFO, logger="mira.access")
    ok = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7, 10.1.1.1"}  # the client, then one more trusted proxy
    assert (await call_from(node_url, body=chat_body(), headers=ok))[0] == 200
    spoofed = {"X-Forwarded-For": "203.0.113.7, 198.51.100.1"}  # the client wrote the first hop itself
    assert (await call_from(node_url, body=chat_body(), headers=spoofed))[0] == 403
    # From a peer that is not a trusted proxy, the header counts for nothing.
    assert (await call_from(node_url, body=chat_body(), headers=ok, source=OTHER))[0] == 403
    clients = [getattr(r, "client", None) for r in caplog.records if r.name == "mira.access"]
    assert clients == ["203.0.113.7", "198.51.100.1", OTHER]


@pytest.mark.node_env(ALLOWED_CLIENTS=OTHER)
async def test_the_sdk_sees_a_permission_error(node_url, upstream):
    client = openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="dummy", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 403
    assert raised.value.code == "client_forbidden"
    assert upstream.requests == []


# -- SERVICE_API_KEY ---------------------------------------------------------------------------------------

KEYS = ("svc-key-one-111111", "svc-key-two-222222")


@pytest.mark.node_env(SERVICE_API_KEY=" , ".join(KEYS))
async def test_any_of_several_service_keys_is_accepted(node_url, upstream):
    for key in KEYS:
        response = await post(node_url + CHAT, chat_body(), headers={"Authorization": f"Bearer {key}"})
        assert response.code == 200, key
    for auth in ("Bearer svc-key-three-333", f"Basic {KEYS[0]}", f"Bearer {KEYS[0]}x", ""):
        response = await post(node_url + CHAT, chat_body(), headers={"Authorization": auth} if auth else {})
        assert response.code == 401 and error_of(response)["code"] == "invalid_api_key", auth


@pytest.mark.node_env(SERVICE_API_KEY=KEYS[0], ALLOWED_CLIENTS=OTHER)
async def test_with_both_gates_a_request_must_pass_both(node_url, upstream):
    good = {"Authorization": f"Bearer {KEYS[0]}"}
    assert (await call_from(node_url, body=chat_body(), headers=good, source=OTHER))[0] == 200
    assert (await call_from(node_url, body=chat_body(), source=OTHER))[0] == 401
    assert (await call_from(node_url, body=chat_body(), headers=good))[0] == 403


# -- start-up ---------------------------------------------------------------------------------------------


def test_bad_entries_stop_start_up_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NODE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENV_FILE", os.devnull)
    for variable, value in (("ALLOWED_CLIENTS", "10.0.0.1, 10.0.0.300"), ("TRUSTED_PROXIES", "proxy.local")):
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError, match=variable) as raised:
            load_settings()
        assert value.split(",")[-1].strip() in str(raised.value)
        monkeypatch.delenv(variable)
    monkeypatch.setenv("ALLOWED_CLIENTS", "10.0.0.5/8, ::1")
    assert [str(n) for n in load_settings().allowed_clients] == ["10.0.0.0/8", "::1/128"]


def test_a_bad_entry_exits_2(spawn_node: Any) -> None:
    node = spawn_node({"ALLOWED_CLIENTS": "not-an-address"}, ready=False)
    assert node.wait() == 2
    assert "ALLOWED_CLIENTS" in node.output and "not-an-address" in node.output


OPEN_WARNING = "neither ALLOWED_CLIENTS nor SERVICE_API_KEY"


def test_an_open_node_beyond_loopback_warns_once(spawn_node: Any) -> None:
    node = spawn_node({"HOST": "0.0.0.0", "LOG_LEVEL": "ERROR"})  # the warning shows at any level
    node.stop()
    assert node.output.count(OPEN_WARNING) == 1
    for env in ({"HOST": "0.0.0.0", "ALLOWED_CLIENTS": "10.0.0.0/8"}, {"HOST": "0.0.0.0", "SERVICE_API_KEY": KEYS[0]},
                {"HOST": "127.0.0.1"}):
        node = spawn_node(env)
        node.stop()
        assert OPEN_WARNING not in node.output, env


def test_the_gate_reads_addresses_as_addresses() -> None:
    settings = _settings(ALLOWED_CLIENTS="192.0.2.0/24, 2001:db8::/32", TRUSTED_PROXIES="10.0.0.0/8")
    gate = ClientGate(settings)
    assert gate.allows("192.0.2.9") and gate.allows("::ffff:192.0.2.9") and gate.allows("2001:db8::1")
    assert not gate.allows("192.0.3.1") and not gate.allows("junk") and not gate.allows("")
    assert gate.client_of("10.0.0.1", "192.0.2.9") == "192.0.2.9"
    assert gate.client_of("10.0.0.1", "junk, 192.0.2.9") == "192.0.2.9"
    assert gate.client_of("10.0.0.1", "192.0.2.9, junk") == "10.0.0.1"  # an unreadable nearest hop: the peer
    assert gate.client_of("10.0.0.1", "10.0.0.2, 10.0.0.3") == "10.0.0.2"
    assert gate.client_of("10.0.0.1", "192.0.2.9\r\nX: y") == "10.0.0.1"
    assert gate.client_of("192.0.2.1", "10.0.0.2") == "192.0.2.1"
    assert loopback_host("127.0.0.1") and loopback_host("localhost") and loopback_host("::1")
    assert not loopback_host("0.0.0.0") and not loopback_host("::") and not loopback_host("10.0.0.1")


def _settings(**env: str) -> Any:
    saved = {name: os.environ.get(name) for name in NODE_VARIABLES}
    try:
        for name in NODE_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update({"ENV_FILE": os.devnull, **env})
        return load_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
