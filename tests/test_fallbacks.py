"""Fallbacks and provider health: which failures move on to the next model, circuits opening and probing."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import openai
import pytest
import ujson

from tests.helpers import USER, Clock, chat_body, closed_port, error_of, get, post, sse_events
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test(timeout=20)

CHAT = "/v1/chat/completions"
CLOSED = closed_port()


def models_seen(upstream) -> list[str]:
    return [r.json["model"] for r in upstream.requests]


@pytest.mark.node_env(OPENAI_BASE_URL=f"http://127.0.0.1:{CLOSED}/v1", UPSTREAM_RETRIES="1")
async def test_a_primary_that_refuses_connections_falls_back(node_url, upstream):
    response = await post(node_url + CHAT, chat_body("openai/gpt-x", fallbacks=["groq/llama"]))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "groq/llama"
    assert models_seen(upstream) == ["llama"]
    assert "fallbacks" not in upstream.requests[0].json


@pytest.mark.node_env(OPENAI_BASE_URL=f"http://127.0.0.1:{CLOSED}/v1")
async def test_the_sdk_sees_the_fallback_answer(node_url, upstream):
    client = openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="unused", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="openai/gpt-x", messages=USER, extra_body={"fallbacks": ["anthropic/claude"]}
    )
    assert raw.headers["x-mira-model"] == "anthropic/claude"
    assert raw.parse().choices[0].message.content == "Hello from mock"
    await client.close()


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
@pytest.mark.parametrize("status", [401, 403, 404, 408, 429, 500, 502, 503])
async def test_a_failure_another_provider_could_avoid_falls_back(node_url, upstream, status):
    upstream.set_behavior("broken", Behavior(status=status, error_message="primary failed"))
    response = await post(node_url + CHAT, chat_body("openai/broken", fallbacks=["openrouter/meta/llama"]))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "openrouter/meta/llama"
    assert models_seen(upstream) == ["broken", "meta/llama"]


@pytest.mark.parametrize("status", [400, 413, 422])
async def test_the_requests_own_fault_never_falls_back(node_url, upstream, status):
    upstream.set_behavior("picky", Behavior(status=status, error_message="bad request"))
    response = await post(node_url + CHAT, chat_body("openai/picky", fallbacks=["groq/llama"]))
    assert response.code == status
    assert response.headers["X-Mira-Model"] == "openai/picky"
    assert models_seen(upstream) == ["picky"]


@pytest.mark.node_env(UPSTREAM_TIMEOUT="0.3", UPSTREAM_RETRIES="0")
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_timeout_before_the_first_byte_falls_back(node_url, upstream, stream):
    upstream.set_behavior("slow", Behavior(hang=True))
    response = await post(node_url + CHAT, chat_body("openai/slow", stream=stream, fallbacks=["groq/llama"]))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "groq/llama"


@pytest.mark.node_env(UPSTREAM_RETRIES="2")
async def test_a_stream_that_fails_after_its_first_byte_never_falls_back(node_url, upstream):
    upstream.set_behavior("flaky", Behavior(chunks=4, drop_after_chunks=1))
    response = await post(node_url + CHAT, chat_body("openai/flaky", stream=True, fallbacks=["groq/llama"]))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "openai/flaky"
    events = sse_events(response.body)
    assert b'"error"' in events[-1]
    assert models_seen(upstream) == ["flaky"]


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
async def test_when_every_target_fails_the_answer_is_the_primarys_error(node_url, upstream):
    upstream.set_behavior("first", Behavior(status=503, error_message="first is down"))
    upstream.set_behavior("second", Behavior(status=500, error_message="second is down"))
    response = await post(node_url + CHAT, chat_body("openai/first", fallbacks=["groq/second"]))
    assert response.code == 503
    assert "first is down" in error_of(response)["message"]
    assert response.headers["X-Mira-Model"] == "openai/first"
    assert models_seen(upstream) == ["first", "second"]


@pytest.mark.parametrize(("fallbacks", "param"), [
    ("groq/llama", "fallbacks"),
    (["groq/a"] * 9, "fallbacks"),
    (["groq/a", "llama"], "fallbacks[1]"),
    (["groq/a", "nope/x"], "fallbacks[1]"),
    ([3], "fallbacks[0]"),
])
async def test_bad_fallbacks_are_400_naming_the_entry(node_url, upstream, fallbacks, param):
    response = await post(node_url + CHAT, chat_body(fallbacks=fallbacks))
    assert response.code == 400
    assert error_of(response)["param"] == param
    assert upstream.requests == []


FALLBACKS_FILE = Path(tempfile.gettempdir()) / f"mira-test-fallbacks-{os.getpid()}.json"


@pytest.fixture
def fallbacks_file():
    """MODEL_FALLBACKS_FILE for the node of the test (ask for it before the node's fixtures)."""
    FALLBACKS_FILE.write_text(json.dumps({"openai/broken": ["anthropic/claude", "groq/llama"]}))
    yield FALLBACKS_FILE
    FALLBACKS_FILE.unlink()


@pytest.mark.node_env(MODEL_FALLBACKS_FILE=str(FALLBACKS_FILE), UPSTREAM_RETRIES="0")
async def test_the_fallbacks_file_gives_the_list_and_an_empty_list_asks_for_none(fallbacks_file, node_url, upstream):
    upstream.set_behavior("broken", Behavior(status=500))
    upstream.set_behavior("claude", Behavior(status=502))
    response = await post(node_url + CHAT, chat_body("openai/broken"))
    assert response.code == 200 and response.headers["X-Mira-Model"] == "groq/llama"
    assert models_seen(upstream) == ["broken", "claude", "llama"]
    upstream.reset()
    upstream.set_behavior("broken", Behavior(status=500))
    response = await post(node_url + CHAT, chat_body("openai/broken", fallbacks=[]))
    assert response.code == 500
    assert models_seen(upstream) == ["broken"]


# -- circuits -------------------------------------------------------------------------------------


@pytest.fixture
def clock():
    return Clock(1000.0)


@pytest.fixture
def node_options(clock):
    """The in-process node's circuits run on the test's clock."""
    return {"clock": clock}


async def metric(node_url: str, line_start: str) -> str:
    text = (await get(node_url + "/metrics")).body.decode()
    return next((line for line in text.splitlines() if line.startswith(line_start)), line_start + " 0.0")


async def counter(node_url: str, series: str) -> float:
    """A counter's value now (counters are per process, so tests compare before and after)."""
    return float((await metric(node_url, series)).rsplit(" ", 1)[1])


@pytest.mark.node_env(CIRCUIT_FAILURES="2", CIRCUIT_COOLDOWN="30", UPSTREAM_RETRIES="0")
async def test_a_circuit_opens_skips_probes_and_closes(node_url, upstream, clock):
    upstream.set_behavior("down", Behavior(status=500, error_message="broken"))
    for _ in range(2):
        assert (await post(node_url + CHAT, chat_body("openai/down"))).code == 500
    assert len(upstream.requests) == 2
    # open: skipped at once, to the fallback or with a 503
    skipped = await post(node_url + CHAT, chat_body("openai/down"))
    assert skipped.code == 503
    assert error_of(skipped)["code"] == "provider_unavailable"
    assert skipped.headers["Retry-After"] == "30"
    switches = await counter(node_url, 'mira_fallbacks_total{from="openai",to="groq"}')
    moved = await post(node_url + CHAT, chat_body("openai/down", fallbacks=["groq/llama"]))
    assert moved.code == 200 and moved.headers["X-Mira-Model"] == "groq/llama"
    assert models_seen(upstream) == ["down", "down", "llama"]  # nothing reached the open provider
    health = ujson.loads((await get(node_url + "/health")).body)
    assert health["status"] == "ok" and health["providers"]["openai"] == "down" and health["providers"]["groq"] == "up"
    assert (await metric(node_url, 'mira_provider_up{provider="openai"}')).endswith(" 0.0")
    assert await counter(node_url, 'mira_fallbacks_total{from="openai",to="groq"}') == switches + 1
    # after the cooldown one probe goes through; it fails: open again
    clock.now += 31
    assert (await post(node_url + CHAT, chat_body("openai/down"))).code == 500
    assert (await post(node_url + CHAT, chat_body("openai/down"))).code == 503
    # the next probe succeeds: closed
    clock.now += 31
    upstream.set_behavior("down", Behavior())
    assert (await post(node_url + CHAT, chat_body("openai/down"))).code == 200
    assert (await post(node_url + CHAT, chat_body("openai/down"))).code == 200
    assert ujson.loads((await get(node_url + "/health")).body)["providers"]["openai"] == "up"
    assert (await metric(node_url, 'mira_provider_up{provider="openai"}')).endswith(" 1.0")


@pytest.mark.node_env(CIRCUIT_FAILURES="1", UPSTREAM_RETRIES="0")
async def test_4xx_and_429_do_not_count_against_a_provider(node_url, upstream, clock):
    for status in (400, 401, 404, 429):
        upstream.push(Behavior(status=status))
        assert (await post(node_url + CHAT, chat_body("openai/m", fallbacks=[]))).code == status
    assert ujson.loads((await get(node_url + "/health")).body)["providers"]["openai"] == "up"


@pytest.mark.node_env(CIRCUIT_FAILURES="0", UPSTREAM_RETRIES="0")
async def test_circuit_failures_0_turns_circuits_off(node_url, upstream):
    upstream.default = Behavior(status=500)
    for _ in range(4):
        assert (await post(node_url + CHAT, chat_body())).code == 500
    assert len(upstream.requests) == 4


@pytest.mark.node_env(CIRCUIT_FAILURES="2", UPSTREAM_RETRIES="3")
async def test_retries_stop_once_the_circuit_opens(node_url, upstream, clock):
    upstream.default = Behavior(status=503)
    response = await post(node_url + CHAT, chat_body())
    assert response.code == 503
    assert len(upstream.requests) == 2  # two failures opened it: no third attempt
