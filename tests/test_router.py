"""Router integration: modes, registration, heartbeats, exits (SPEC "Router: registration and liveness").

The node runs as a subprocess (``spawn_node``) where start-up or exit
matters, against :class:`tests.fake_router.FakeRouter` over loopback; the
heartbeat logging is tested in-process on a real :class:`RouterClient`.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import pytest
from prometheus_client import REGISTRY

from config import ConfigError, Settings, load_settings
from tests.conftest import NODE_VARIABLES, SECRETS
from tests.fake_router import ADMIN_TOKEN, FakeRouter
from tests.mock_upstream import Behavior, MockUpstream
from utils.netinfo import detect_local_ip
from utils.redact import Redactor
from utils.router_client import RouterClient, first_token
from utils.upstream.transport import Transport

IP = "10.1.2.3"
MACHINE_TOKEN = "mt-SECRET-given-0042"
CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="session")
def router_server() -> Iterator[FakeRouter]:
    router = FakeRouter().start()
    yield router
    router.stop()


@pytest.fixture
def router(router_server: FakeRouter) -> FakeRouter:
    """The fake router, reset for this test."""
    router_server.reset()
    return router_server


def router_env(router: FakeRouter, **extra: str) -> dict[str, str]:
    """A router-mode environment: fast heartbeats and retries, a fixed MACHINE_IP."""
    env = {
        "ROUTER_BASE_URL": router.base_url,
        "MACHINE_IP": IP,
        "LIVENESS_INTERVAL": "0.2",
        "ROUTER_RETRY_BACKOFF": "0.01",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


def assert_no_secret(output: str, *tokens: str) -> None:
    for token in (*tokens, *SECRETS.values()):
        assert token not in output


def post_chat(port: int, body: dict[str, Any] = CHAT) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- modes ------------------------------------------------------------------------------------


def test_standalone_never_calls_the_router(spawn_node: Any, router: FakeRouter) -> None:
    node = spawn_node({"ADMIN_API_TOKEN": ADMIN_TOKEN, "MACHINE_API_TOKEN": MACHINE_TOKEN, "LIVENESS_INTERVAL": "0.05"})
    assert post_chat(node.port)[0] == 200
    node.stop()
    assert_no_secret(node.output, ADMIN_TOKEN, MACHINE_TOKEN)
    assert "(standalone mode" in node.output
    assert "mira.router" not in node.output
    assert router.calls == []


def test_router_url_without_a_token_exits_naming_the_variables(spawn_node: Any, router: FakeRouter) -> None:
    node = spawn_node(router_env(router), ready=False)
    assert node.wait() != 0
    assert "ROUTER_BASE_URL" in node.output
    assert "MACHINE_API_TOKEN" in node.output and "ADMIN_API_TOKEN" in node.output
    assert "Traceback" not in node.output
    assert router.calls == []


def test_router_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NODE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENV_FILE", os.devnull)
    assert load_settings().router_retry_backoff == 1.0
    monkeypatch.setenv("ROUTER_BASE_URL", "http://127.0.0.1:9/")
    with pytest.raises(ConfigError, match="MACHINE_API_TOKEN.*ADMIN_API_TOKEN"):
        load_settings()
    monkeypatch.setenv("ADMIN_API_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("ROUTER_RETRY_BACKOFF", "0.5")
    settings = load_settings()
    assert (settings.router_base_url, settings.router_retry_backoff) == ("http://127.0.0.1:9", 0.5)
    monkeypatch.setenv("ROUTER_RETRY_BACKOFF", "-1")
    with pytest.raises(ConfigError, match="ROUTER_RETRY_BACKOFF"):
        load_settings()


# -- registration -----------------------------------------------------------------------------


def test_registers_then_beats_with_the_obtained_token(spawn_node: Any, router: FakeRouter) -> None:
    ip = detect_local_ip()  # no MACHINE_IP: the node detects the same address
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN, MACHINE_IP=""))
    assert router.wait_for(lambda r: len(r.beats()) >= 2)
    node.stop()

    admin = router.admin_calls()
    assert [(c.method, c.path) for c in admin] == [
        ("GET", f"/admin/machines/{ip}"),
        ("POST", "/admin/machines/register"),
        ("GET", f"/admin/machines/{ip}/auth-tokens"),
        ("POST", f"/admin/machines/{ip}/auth-tokens"),
    ]
    assert all(c.authorization == f"Bearer {ADMIN_TOKEN}" for c in admin)
    assert [c.status for c in admin] == [404, 200, 200, 200]
    registration = admin[1].json
    assert registration["network_ip"] == ip
    assert re.fullmatch(r"mira-[a-z0-9]{8}", registration["name"])
    assert isinstance(registration["description"], str) and registration["disabled"] is False
    assert isinstance(admin[3].json.get("description"), str)
    # every call before the first beat is an admin call, and beats use the token just created
    assert router.calls[: len(admin)] == admin
    (token,) = router.tokens_of(ip)
    beats = router.beats()
    assert all(b.authorization == f"Bearer {token}" and b.path == f"/liveness/{ip}" and b.status == 200 for b in beats)
    assert "registering with the admin token" in node.output
    assert f"registered with the router as {registration['name']}" in node.output
    assert_no_secret(node.output, ADMIN_TOKEN, token)


def test_reuses_an_existing_machine_name_and_token(spawn_node: Any, router: FakeRouter) -> None:
    existing = ["mt-SECRET-existing-0001", "mt-SECRET-existing-0002"]
    router.add_machine(IP, "node-seven", existing)
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN, MACHINE_NAME="another-name"))
    assert router.wait_for(lambda r: len(r.beats()) >= 1)
    node.stop()

    admin = router.admin_calls()
    assert [(c.method, c.path) for c in admin] == [
        ("GET", f"/admin/machines/{IP}"),
        ("POST", "/admin/machines/register"),
        ("GET", f"/admin/machines/{IP}/auth-tokens"),
    ]
    assert admin[1].json["name"] == "node-seven"
    assert router.tokens_of(IP) == existing  # no new token was created
    assert all(b.authorization == f"Bearer {existing[0]}" and b.status == 200 for b in router.beats())
    assert "registered with the router as node-seven" in node.output
    assert_no_secret(node.output, ADMIN_TOKEN, *existing)


def test_registration_retries_transient_failures(spawn_node: Any, router: FakeRouter) -> None:
    router.fail_first = 2
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN))
    assert router.wait_for(lambda r: len(r.beats()) >= 1 and r.beats()[0].status == 200)
    node.stop()
    first = router.calls[:3]
    assert [(c.method, c.path, c.status) for c in first] == [("GET", f"/admin/machines/{IP}", s) for s in (503, 503, 404)]
    assert "attempt 1 of 5" in node.output and "attempt 2 of 5" in node.output
    assert_no_secret(node.output, ADMIN_TOKEN, *router.tokens_of(IP))


def test_registration_gives_up_after_five_attempts(spawn_node: Any, router: FakeRouter) -> None:
    router.always_fail = True
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN), ready=False)
    assert node.wait() == 1
    assert [(c.method, c.path, c.status) for c in router.calls] == [("GET", f"/admin/machines/{IP}", 503)] * 5
    assert "router registration failed" in node.output and "after 5 attempts" in node.output
    assert "Traceback" not in node.output
    assert_no_secret(node.output, ADMIN_TOKEN)


def test_an_unreachable_router_stops_start_up(spawn_node: Any, router: FakeRouter) -> None:
    env = router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN, ROUTER_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    node = spawn_node(env, ready=False)
    assert node.wait() == 1
    assert "router registration failed" in node.output and "after 5 attempts" in node.output
    assert_no_secret(node.output, ADMIN_TOKEN)


def test_a_refused_admin_token_stops_start_up_at_once(spawn_node: Any, router: FakeRouter) -> None:
    wrong = "adm-SECRET-wrong-9999"
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=wrong), ready=False)
    assert node.wait() == 1
    assert [c.status for c in router.calls] == [401]  # not retried
    assert "refused ADMIN_API_TOKEN" in node.output
    assert_no_secret(node.output, wrong)


# -- heartbeats -------------------------------------------------------------------------------


def test_a_machine_token_skips_registration(spawn_node: Any, router: FakeRouter) -> None:
    router.add_machine(IP, "given", [MACHINE_TOKEN])
    node = spawn_node(router_env(router, MACHINE_API_TOKEN=MACHINE_TOKEN, ADMIN_API_TOKEN=ADMIN_TOKEN))
    assert router.wait_for(lambda r: len(r.beats()) >= 2)
    node.stop()
    assert router.admin_calls() == []
    assert all(b.authorization == f"Bearer {MACHINE_TOKEN}" and b.status == 200 for b in router.beats())
    assert "machine token given" in node.output
    assert_no_secret(node.output, MACHINE_TOKEN, ADMIN_TOKEN)


def test_beats_repeat_and_stop_when_draining(spawn_node: Any, router: FakeRouter, upstream: MockUpstream) -> None:
    router.add_machine(IP, "given", [MACHINE_TOKEN])
    node = spawn_node(router_env(router, MACHINE_API_TOKEN=MACHINE_TOKEN))
    assert router.wait_for(lambda r: len(r.beats()) >= 3)
    arrivals = [b.received_at for b in router.beats()]
    assert all(later - earlier > 0.1 for earlier, later in pairwise(arrivals))  # paced, not a storm

    upstream.push(Behavior(delay=0.8))  # a request that keeps the drain going for a few intervals
    with ThreadPoolExecutor(1) as pool:
        chat = pool.submit(post_chat, node.port)
        assert upstream.wait_for(lambda u: len(u.requests) == 1)
        node.signal()
        assert node.wait_for_line("draining")
        beats_at_drain = len(router.beats())
        assert node.wait() == 0
        assert chat.result()[0] == 200
    assert len(router.beats()) <= beats_at_drain + 1  # at most one already on its way
    assert "ERROR" not in node.output and "Traceback" not in node.output
    assert_no_secret(node.output, MACHINE_TOKEN)


def test_a_hanging_router_does_not_delay_requests(spawn_node: Any, router: FakeRouter) -> None:
    router.add_machine(IP, "given", [MACHINE_TOKEN])
    router.hang = True
    node = spawn_node(router_env(router, MACHINE_API_TOKEN=MACHINE_TOKEN, LIVENESS_INTERVAL="5"))
    assert router.wait_for(lambda r: r.in_flight == 1)
    assert post_chat(node.port)[0] == 200
    assert router.beats()[0].open  # the chat was answered while the beat still hung
    node.signal()
    assert node.wait() == 0
    assert router.wait_for(lambda r: not r.beats()[0].open)  # the beat was given up, not left dangling
    assert len(router.beats()) == 1
    assert "ERROR" not in node.output and "Traceback" not in node.output
    assert_no_secret(node.output, MACHINE_TOKEN)


# -- the client in-process --------------------------------------------------------------------


def failures(reason: str | None = None) -> float:
    """``mira_heartbeat_failures_total``, over every reason or for one."""
    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "mira_heartbeat_failures_total" and reason in (None, sample.labels.get("reason")):
                total += sample.value
    return total


def router_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mira.router"]


def make_client(router: FakeRouter, summary_interval: float | None = None, **settings: Any) -> RouterClient:
    values = {"router_base_url": router.base_url, "machine_api_token": MACHINE_TOKEN, "liveness_interval": 0.2}
    values.update(settings)
    extra = {} if summary_interval is None else {"summary_interval": summary_interval}
    return RouterClient(Settings(**values), Transport(10), IP, Redactor(), **extra)


@pytest.mark.gen_test
async def test_failed_heartbeats_are_logged_rate_limited(router: FakeRouter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mira.router")
    client = make_client(router)
    router.always_fail = True
    before = failures()
    try:
        for _ in range(5):
            assert not await client.beat()
        assert failures() - before == 5
        assert [r.levelname for r in router_logs(caplog)] == ["WARNING"]
        assert "HTTP 503" in router_logs(caplog)[0].getMessage()

        router.always_fail = False
        router.add_machine(IP, "given", [MACHINE_TOKEN])
        assert await client.beat()
        assert "recovered after 5 failed" in router_logs(caplog)[-1].getMessage()
    finally:
        client.transport.close()

    caplog.clear()
    client = make_client(router, summary_interval=0)  # every failure after the first is a summary line
    router.always_fail = True
    try:
        for _ in range(3):
            await client.beat()
        messages = [r.getMessage() for r in router_logs(caplog)]
        assert len(messages) == 3 and "still failing: 3 in a row" in messages[-1]
        assert not any(MACHINE_TOKEN in m for m in messages)
    finally:
        client.transport.close()


@pytest.mark.gen_test
async def test_a_router_that_cannot_be_reached_counts_as_connection(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mira.router")
    settings = Settings(router_base_url=f"http://127.0.0.1:{closed_port()}", machine_api_token=MACHINE_TOKEN,
                        liveness_interval=0.2)
    client = RouterClient(settings, Transport(10), IP, Redactor())
    before = failures("connection")
    try:
        assert not await client.beat()
        assert failures("connection") - before == 1
        message = router_logs(caplog)[0].getMessage()
        assert "Could not connect to router API" in message  # the failure class's words, as for a provider
        assert MACHINE_TOKEN not in message
    finally:
        client.transport.close()


@pytest.mark.gen_test
async def test_heartbeats_never_overlap_and_stop_at_once(router: FakeRouter) -> None:
    router.add_machine(IP, "given", [MACHINE_TOKEN])
    router.hang = True
    client = make_client(router, liveness_interval=0.3)
    before, timeouts = failures(), failures("timeout")
    try:
        client.start_heartbeat()
        assert await router.await_for(lambda r: len(r.beats()) >= 3)
        client.stop_heartbeat()
        assert await router.await_for(lambda r: r.in_flight == 0)  # the beat in flight was aborted
        beats = router.beats()
        for earlier, later in pairwise(beats):
            assert earlier.closed_at is not None and earlier.closed_at <= later.received_at
        assert failures() - before >= 2
        assert failures("timeout") - timeouts >= 2  # each hung beat ran out of its time
        assert not client.beating
    finally:
        client.transport.close()


def test_first_token_reads_the_shapes_a_router_may_answer() -> None:
    assert first_token([{"api_token": "a"}, {"api_token": "b"}]) == "a"
    assert first_token({"data": [{"description": "x"}, {"api_token": "b"}]}) == "b"
    assert first_token({"api_token": "c"}) == "c"
    assert first_token([]) == first_token({}) == first_token(None) == first_token({"tokens": "x"}) == ""


# -- the real router's protocol (SPEC "Router: registration and liveness") --------------------------------


def get_json(port: int, path: str) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
    finally:
        conn.close()


def health_router(port: int) -> str:
    return get_json(port, "/health")[2]["router"]


def scraped_failures(port: int, reason: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    pattern = r"^mira_heartbeat_failures_total\{reason=\"" + re.escape(reason) + r"\"\} (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_null_lookup_means_not_registered(spawn_node: Any, router: FakeRouter) -> None:
    router.null_lookup = True  # the real router answers an unknown machine with 200 null
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN, MACHINE_NAME="node-null"))
    assert router.wait_for(lambda r: len(r.beats()) >= 1 and r.beats()[0].status == 200)
    node.stop()
    admin = router.admin_calls()
    assert [(c.path, c.status) for c in admin[:2]] == [(f"/admin/machines/{IP}", 200), ("/admin/machines/register", 200)]
    assert admin[1].json["name"] == "node-null"
    assert "Traceback" not in node.output


def test_registration_carries_the_traffic_weight_and_models_when_set(spawn_node: Any, router: FakeRouter) -> None:
    env = router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN, TRAFFIC_WEIGHT="0.25",
                     ROUTER_MODELS="openai/gpt-4o, openrouter/meta-llama/llama-3.3-70b-instruct")
    node = spawn_node(env)
    assert router.wait_for(lambda r: len(r.beats()) >= 1)
    node.stop()
    body = router.registrations()[0].json
    assert body["traffic_weight"] == 0.25
    assert body["supported_models"] == ["openai/gpt-4o", "openrouter/meta-llama/llama-3.3-70b-instruct"]
    router.reset()
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN))
    assert router.wait_for(lambda r: len(r.beats()) >= 1)
    node.stop()
    assert "traffic_weight" not in router.registrations()[0].json
    assert "supported_models" not in router.registrations()[0].json


@pytest.mark.parametrize("variable, value, words", [
    ("LIVENESS_INTERVAL", "12", "12"),
    ("TRAFFIC_WEIGHT", "1.5", "between 0 and 1"),
])
def test_settings_the_router_cannot_use_stop_start_up(
    spawn_node: Any, router: FakeRouter, variable: str, value: str, words: str
) -> None:
    node = spawn_node(router_env(router, MACHINE_API_TOKEN=MACHINE_TOKEN, **{variable: value}), ready=False)
    assert node.wait() == 2
    assert variable in node.output and words in node.output
    assert router.calls == []


def test_health_says_whether_the_heartbeats_go_through(spawn_node: Any, router: FakeRouter) -> None:
    router.add_machine(IP, "given", [MACHINE_TOKEN])
    node = spawn_node(router_env(router, MACHINE_API_TOKEN=MACHINE_TOKEN))
    assert router.wait_for(lambda r: any(b.status == 200 for b in r.beats()))
    assert health_router(node.port) == "live"
    router.beat_status = 503
    count = len(router.beats())
    assert router.wait_for(lambda r: len(r.beats()) >= count + 2)
    assert health_router(node.port) == "failing"
    assert get_json(node.port, "/health")[0] == 200
    assert scraped_failures(node.port, "status_503") >= 1
    node.stop()


def test_a_node_that_registered_itself_registers_again_on_401_then_waits_a_minute(
    spawn_node: Any, router: FakeRouter
) -> None:
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN, MACHINE_NAME="node-again"))
    assert router.wait_for(lambda r: any(b.status == 200 for b in r.beats()))
    (first,) = router.tokens_of(IP)
    router.forget(IP)  # the router lost the machine: its token is refused with 401
    assert router.wait_for(lambda r: len(r.registrations()) == 2)
    assert router.wait_for(lambda r: r.beats()[-1].status == 200 and r.tokens_of(IP) != [])
    (second,) = router.tokens_of(IP)
    assert second != first
    assert router.beats()[-1].authorization == f"Bearer {second}"  # it carries on with the new token
    assert health_router(node.port) == "live"
    assert scraped_failures(node.port, "status_401") >= 1
    # Refused again: no second registration within the minute, only failing beats.
    router.beat_status = 404
    count = len(router.beats())
    assert router.wait_for(lambda r: len(r.beats()) >= count + 4)
    assert len(router.registrations()) == 2
    assert health_router(node.port) == "failing"
    node.stop()
    assert node.output.count("registering with the router again") == 1
    assert_no_secret(node.output, ADMIN_TOKEN, first, second)


@pytest.mark.parametrize("status, advice", [(401, "MACHINE_API_TOKEN"), (403, "MACHINE_IP"), (404, "register it")])
def test_a_refused_heartbeat_is_logged_with_what_to_do_once_a_minute(
    spawn_node: Any, router: FakeRouter, status: int, advice: str
) -> None:
    router.add_machine(IP, "given", [MACHINE_TOKEN])
    router.beat_status = status
    node = spawn_node(router_env(router, MACHINE_API_TOKEN=MACHINE_TOKEN))
    assert router.wait_for(lambda r: len(r.beats()) >= 4)
    assert scraped_failures(node.port, f"status_{status}") >= 3
    node.stop()
    refusals = [line for line in node.output.splitlines() if f"heartbeat refused (HTTP {status}" in line]
    assert len(refusals) == 1 and advice in refusals[0]
    assert router.registrations() == []  # no admin token: it cannot register
    assert_no_secret(node.output, MACHINE_TOKEN)


def test_a_403_is_not_cured_by_registering_again(spawn_node: Any, router: FakeRouter) -> None:
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN))
    assert router.wait_for(lambda r: any(b.status == 200 for b in r.beats()))
    router.beat_status = 403
    count = len(router.beats())
    assert router.wait_for(lambda r: len(r.beats()) >= count + 3)
    node.stop()
    assert len(router.registrations()) == 1
    assert "heartbeat refused (HTTP 403" in node.output


def test_answers_carry_the_machine_name_when_it_is_known(spawn_node: Any, router: FakeRouter) -> None:
    router.add_machine(IP, "router-given-name", [])
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN))
    assert router.wait_for(lambda r: len(r.beats()) >= 1)
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(CHAT), {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.getheader("X-Machine-Name") == "router-given-name"
    assert get_json(node.port, "/health")[1].get("X-Machine-Name") is None  # only chat, verify, eval, proxied
    node.stop()
    node = spawn_node({"MACHINE_NAME": "standalone-name"})
    status, _ = post_chat(node.port)
    assert status == 200
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(CHAT), {"Content-Type": "application/json"})
    assert conn.getresponse().getheader("X-Machine-Name") == "standalone-name"
    conn.close()


def test_every_worker_reports_the_router_state_and_name(spawn_node: Any, router: FakeRouter) -> None:
    node = spawn_node(router_env(router, ADMIN_API_TOKEN=ADMIN_TOKEN, MACHINE_NAME="", WORKERS="2"))
    assert router.wait_for(lambda r: any(b.status == 200 for b in r.beats()))
    name = router.registrations()[0].json["name"]
    seen = set()
    for _ in range(20):  # new connections: the kernel spreads them over both workers
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", json.dumps(CHAT), {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        conn.close()
        seen.add((response.getheader("X-Machine-Name"), health_router(node.port)))
    node.stop()
    assert seen == {(name, "live")}
