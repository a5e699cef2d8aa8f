"""Provider keys, limits and budgets, through real HTTP: key pools, rpm/tpm windows, the daily budget.

The mock upstream answers by the bearer key it receives (``set_key_behavior``),
so a test can make one key of a pool fail. The ledger runs on a wall clock the
test moves (a :class:`Clock`), so windows and cooldowns pass without waiting.
"""

from __future__ import annotations

import asyncio
import calendar
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import ujson

import config
from tests.helpers import USER, Clock, chat_body, error_of, get, post, sample, scrape, sse_events
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test(timeout=20)

CHAT = "/v1/chat/completions"
KEYS = ("sk-pool-first-AAAA1111", "sk-pool-second-BBBB2222", "sk-pool-third-CCCC3333")
POOL = ",".join(KEYS)
LIMITS_FILE = Path(tempfile.gettempdir()) / f"mira-test-limits-{os.getpid()}.json"
MIDNIGHT = calendar.timegm((2026, 12, 3, 0, 0, 0))  # 2026-12-03T00:00:00Z


@pytest.fixture
def clock() -> Clock:
    return Clock(MIDNIGHT - 3600.0)


@pytest.fixture
def node_options(clock: Clock) -> dict[str, Any]:
    """The in-process node's ledger runs on the test's wall clock."""
    return {"wall_clock": clock}


@pytest.fixture
def limits(request: pytest.FixtureRequest) -> Iterator[Path]:
    """PROVIDER_LIMITS_FILE with the test's ``limits`` parameter (ask for it before the node's fixtures)."""
    LIMITS_FILE.write_text(json.dumps(request.param))
    yield LIMITS_FILE
    LIMITS_FILE.unlink()


def with_limits(table: dict) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("limits", [table], indirect=True, ids=["limits"])


def keys_used(upstream, since: int = 0) -> list[int]:
    """The position (1, 2, 3) in KEYS of the key of each request the upstream saw (from request ``since`` on)."""
    return [KEYS.index(r.headers["authorization"].removeprefix("Bearer ")) + 1 for r in upstream.requests[since:]]


# -- key pools ----------------------------------------------------------------------------------------------


@pytest.mark.node_env(OPENAI_API_KEY=POOL)
async def test_a_pools_keys_are_taken_in_turn(node_url, upstream):
    for _ in range(4):
        assert (await post(node_url + CHAT, chat_body())).code == 200
    assert keys_used(upstream) == [1, 2, 3, 1]


@pytest.mark.node_env(OPENAI_API_KEY=POOL, UPSTREAM_RETRIES="0", CIRCUIT_FAILURES="1")
@pytest.mark.parametrize("status", [429, 401])
async def test_a_429_or_401_on_one_key_is_answered_from_the_next_in_the_same_request(node_url, upstream, status):
    upstream.set_key_behavior("AAAA1111", Behavior(status=status, error_message="slow down"))
    response = await post(node_url + CHAT, chat_body())
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "openai/mock-model"
    assert keys_used(upstream) == [1, 2]
    # not a circuit failure (one would open it here), not a fallback
    health = ujson.loads((await get(node_url + "/health")).body)
    assert health["providers"]["openai"] == "up"


@pytest.mark.node_env(OPENAI_API_KEY=POOL, UPSTREAM_RETRIES="0")
async def test_a_stream_switches_key_before_its_first_byte(node_url, upstream):
    upstream.set_key_behavior("AAAA1111", Behavior(status=429, error_message="slow down"))
    response = await post(node_url + CHAT, chat_body(stream=True))
    assert response.code == 200
    assert sse_events(response.body)[-1] == b"data: [DONE]"
    assert keys_used(upstream) == [1, 2]


@pytest.mark.node_env(OPENAI_API_KEY=POOL, UPSTREAM_RETRIES="0")
async def test_a_cooled_key_is_skipped_until_its_retry_after_is_over(node_url, upstream, clock):
    upstream.set_key_behavior("BBBB2222", Behavior(status=429, error_message="slow", headers={"Retry-After": "30"}))
    for _ in range(2):
        assert (await post(node_url + CHAT, chat_body())).code == 200
    assert keys_used(upstream) == [1, 2, 3]
    for _ in range(4):
        assert (await post(node_url + CHAT, chat_body())).code == 200
    assert keys_used(upstream, 3) == [1, 3, 1, 3]
    text = await scrape(node_url)
    assert sample(text, 'mira_provider_key_cooling{key="2",provider="openai"}') == 1.0
    assert sample(text, 'mira_provider_key_cooling{key="1",provider="openai"}') == 0.0
    clock.now += 31
    upstream.set_key_behavior("BBBB2222", Behavior())  # key 2 works again
    for _ in range(3):
        assert (await post(node_url + CHAT, chat_body())).code == 200
    assert keys_used(upstream, 7) == [1, 2, 3]  # key 2 is back in its turn


@pytest.mark.node_env(OPENAI_API_KEY=POOL, UPSTREAM_RETRIES="0", KEY_COOLDOWN="10")
async def test_without_retry_after_a_key_rests_for_key_cooldown(node_url, upstream, clock):
    upstream.set_key_behavior("AAAA1111", Behavior(status=401, error_message="bad key"))
    assert (await post(node_url + CHAT, chat_body())).code == 200
    clock.now += 9
    for _ in range(2):
        assert (await post(node_url + CHAT, chat_body())).code == 200
    assert keys_used(upstream, 2) == [3, 2]
    clock.now += 2
    for _ in range(2):
        assert (await post(node_url + CHAT, chat_body())).code == 200
    assert keys_used(upstream, 4) == [3, 1, 2]  # key 1 is tried again, answers 401 again, and rests again


@pytest.mark.node_env(OPENAI_API_KEY=POOL, UPSTREAM_RETRIES="2")
async def test_every_key_cooling_and_no_fallback_is_429_provider_keys_cooling(node_url, upstream, clock):
    upstream.default = Behavior(status=429, error_message="quota", headers={"Retry-After": "20"})
    response = await post(node_url + CHAT, chat_body())
    assert response.code == 429
    error = error_of(response)
    assert error["code"] == "provider_keys_cooling"
    assert "openai" in error["message"]
    assert response.headers["Retry-After"] == "20"
    assert keys_used(upstream) == [1, 2, 3]  # each key once: no retries while a key is left
    clock.now += 5
    again = await post(node_url + CHAT, chat_body())
    assert again.code == 429 and again.headers["Retry-After"] == "15"
    assert len(upstream.requests) == 3  # skipped like an open circuit


@pytest.mark.node_env(OPENAI_API_KEY=POOL, UPSTREAM_RETRIES="0")
async def test_every_key_cooling_moves_on_to_the_fallback(node_url, upstream):
    for key in KEYS:
        upstream.set_key_behavior(key[-8:], Behavior(status=429, error_message="quota"))
    response = await post(node_url + CHAT, chat_body(fallbacks=["groq/llama"]))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "groq/llama"
    response = await post(node_url + CHAT, chat_body(fallbacks=["groq/llama"]))
    assert response.headers["X-Mira-Model"] == "groq/llama"
    assert [r.json["model"] for r in upstream.requests[4:]] == ["llama"]  # every key still cooling: not tried


@pytest.mark.node_env(UPSTREAM_RETRIES="1")
async def test_with_one_key_a_429_is_retried_as_before_and_nothing_cools(node_url, upstream):
    upstream.set_behavior("busy", Behavior(status=429, error_message="busy"))
    response = await post(node_url + CHAT, chat_body("openai/busy"))
    assert response.code == 429
    assert error_of(response)["code"] != "provider_keys_cooling"
    assert len(upstream.requests) == 2
    upstream.reset()
    assert (await post(node_url + CHAT, chat_body())).code == 200


@pytest.mark.node_env(OPENAI_API_KEY=POOL, UPSTREAM_RETRIES="0", LOG_FORMAT="json")
async def test_logs_metrics_and_errors_name_keys_by_position_only(node_url, upstream, caplog):
    caplog.set_level(logging.DEBUG)
    upstream.set_key_behavior("AAAA1111", Behavior(status=429, error_message=f"key {KEYS[0]} is over quota"))
    upstream.set_key_behavior("BBBB2222", Behavior(status=400, error_message=f"bad request for key {KEYS[1]}"))
    response = await post(node_url + CHAT, chat_body())
    assert response.code == 400
    assert b"sk-pool" not in response.body and b"BBBB2222" not in response.body
    text = await scrape(node_url)
    assert 'mira_provider_key_cooling{key="1",provider="openai"} 1.0' in text
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "key 1 of 3" in logged
    for key in KEYS:
        for piece in (key, key[:8], key[-8:]):
            assert piece not in logged and piece not in text


def test_every_key_of_a_pool_is_a_secret(monkeypatch):
    for name in config.ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENV_FILE", os.devnull)
    monkeypatch.setenv("GROQ_API_KEY", " gsk-one-111111111 , gsk-two-222222222 ,")
    settings = config.load_settings()
    assert settings.providers["groq"].api_keys == ("gsk-one-111111111", "gsk-two-222222222")
    assert {"gsk-one-111111111", "gsk-two-222222222"} <= set(settings.secrets())
    assert "gsk-one" not in repr(settings)


# -- limits and budgets -------------------------------------------------------------------------------------


@with_limits({"openai": {"rpm": 2}})
@pytest.mark.node_env(PROVIDER_LIMITS_FILE=str(LIMITS_FILE), CIRCUIT_FAILURES="1")
async def test_rpm_refusals_never_reach_the_upstream(limits, node_url, upstream, clock):
    before = sample(await scrape(node_url), 'mira_limit_refusals_total{limit="rpm",provider="openai"}')
    for _ in range(2):
        assert (await post(node_url + CHAT, chat_body())).code == 200
    clock.now += 20
    refused = await post(node_url + CHAT, chat_body())
    assert refused.code == 429
    error = error_of(refused)
    assert error["code"] == "rate_limited"
    assert "openai" in error["message"] and "rpm" in error["message"]
    assert refused.headers["Retry-After"] == "40"
    assert len(upstream.requests) == 2
    after = sample(await scrape(node_url), 'mira_limit_refusals_total{limit="rpm",provider="openai"}')
    assert after == before + 1
    health = ujson.loads((await get(node_url + "/health")).body)
    assert health["providers"]["openai"] == "up"  # a refusal is no circuit failure
    # the fallback takes it; once the window slides, the provider again
    moved = await post(node_url + CHAT, chat_body(fallbacks=["anthropic/claude"]))
    assert moved.code == 200 and moved.headers["X-Mira-Model"] == "anthropic/claude"
    clock.now += 41
    assert (await post(node_url + CHAT, chat_body())).headers["X-Mira-Model"] == "openai/mock-model"


@with_limits({"openai": {"tpm": 10}})
@pytest.mark.node_env(PROVIDER_LIMITS_FILE=str(LIMITS_FILE))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_tpm_counts_the_tokens_answers_report(limits, node_url, upstream, clock, stream):
    upstream.default = Behavior(content="one two three four")  # 1 prompt + 4 completion tokens (the mock counts words)
    body = chat_body(messages=[{"role": "user", "content": "hi"}], stream=stream)
    for _ in range(2):
        assert (await post(node_url + CHAT, body)).code == 200
    clock.now += 1
    refused = await post(node_url + CHAT, body)
    assert refused.code == 429 and error_of(refused)["code"] == "rate_limited"
    assert "tpm" in error_of(refused)["message"]
    assert refused.headers["Retry-After"] == "59"
    assert len(upstream.requests) == 2


@with_limits({"openai": {"tokens_per_day": 8}})
@pytest.mark.node_env(PROVIDER_LIMITS_FILE=str(LIMITS_FILE))
async def test_the_daily_budget_is_refused_until_the_next_utc_midnight(limits, node_url, upstream, clock):
    upstream.default = Behavior(content="one two three four five six seven")
    clock.now = MIDNIGHT - 30  # 23:59:30 UTC
    hi = chat_body(messages=[{"role": "user", "content": "hi"}])
    assert (await post(node_url + CHAT, hi)).code == 200  # 0 < 8: sent; it reports 1 + 7 tokens
    text = await scrape(node_url)
    assert sample(text, 'mira_tokens_today{provider="openai"}') == 8
    refused = await post(node_url + CHAT, chat_body())
    assert refused.code == 429
    error = error_of(refused)
    assert error["code"] == "budget_exceeded" and "tokens_per_day" in error["message"]
    assert refused.headers["Retry-After"] == "30"
    client = openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as raised:
        await client.chat.completions.create(model="openai/mock-model", messages=USER)
    assert raised.value.code == "budget_exceeded"
    await client.close()
    assert len(upstream.requests) == 1
    clock.now = MIDNIGHT + 1  # a new day
    assert (await post(node_url + CHAT, chat_body())).code == 200


@with_limits({"openai": {"tokens_per_day": 1}})
@pytest.mark.node_env(PROVIDER_LIMITS_FILE=str(LIMITS_FILE))
async def test_a_stream_in_flight_is_never_cut_by_a_budget(limits, node_url, upstream, ctx):
    upstream.default = Behavior(chunks=10, chunk_delay=0.1)  # the stream lasts about 1 s
    streamed = asyncio.ensure_future(post(node_url + CHAT, chat_body(stream=True)))
    # the stream is admitted once the upstream has it: wait for that rather than race the JSON call to the node
    assert await upstream.await_for(lambda u: u.in_flight >= 1, timeout=10)
    spent = await post(node_url + CHAT, chat_body())  # a JSON call spends the budget while the stream runs
    assert spent.code == 200
    assert not streamed.done() and upstream.in_flight == 1, "the stream ended before the budget was spent"
    response = await streamed
    assert response.code == 200 and sse_events(response.body)[-1] == b"data: [DONE]"
    assert (await post(node_url + CHAT, chat_body())).code == 429


@with_limits({"openai": {"rpm": 0}})
@pytest.mark.node_env(PROVIDER_LIMITS_FILE=str(LIMITS_FILE))
async def test_verify_and_eval_calls_are_refused_the_same_way(limits, node_url, upstream):
    verified = await post(node_url + "/v1/verify", {"messages": USER, "model": "openai/judge"})
    assert verified.code == 429 and error_of(verified)["code"] == "rate_limited"
    graded = await post(
        node_url + "/v1/eval", {"csv": "question\nhello\n", "models": ["openai/judge"], "eval_system_prompt": "Grade."}
    )
    assert graded.code == 200
    assert "error: The rpm limit of openai API is reached" in graded.body.decode()
    assert upstream.requests == []


# -- start-up checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{not json", "not JSON at line 1, column 2"),
        ('["openai"]', "must be a JSON object"),
        ('{"nosuch": {"rpm": 1}}', "unknown provider 'nosuch'"),
        ('{"openai": {"rpm": -1}}', "openai.rpm must be a whole number, 0 or more"),
        ('{"openai": {"tpm": 1.5}}', "openai.tpm must be a whole number"),
        ('{"openai": {"rmp": 5}}', "unknown limit 'rmp'"),
        ('{"openai": 5}', "must be an object"),
    ],
)
def test_a_bad_limits_file_stops_start_up_naming_the_problem(tmp_path, monkeypatch, content, named):
    path = tmp_path / "limits.json"
    path.write_text(content)
    for name in config.ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENV_FILE", os.devnull)
    monkeypatch.setenv("PROVIDER_LIMITS_FILE", str(path))
    with pytest.raises(config.ConfigError, match="PROVIDER_LIMITS_FILE") as raised:
        config.load_settings()
    assert named in str(raised.value)


def test_the_node_exits_2_on_a_bad_limits_file(spawn_node, tmp_path):
    path = tmp_path / "limits.json"
    path.write_text('{"openai": {"tpm": -5}}')
    node = spawn_node({"PROVIDER_LIMITS_FILE": str(path)}, ready=False)
    assert node.wait() == 2
    assert "PROVIDER_LIMITS_FILE" in node.output and "openai.tpm" in node.output


@pytest.mark.parametrize(
    ("status", "retry_after", "rest"),
    [(429, "30", 30.0), (429, "1000", 300.0), (429, "0", 1.0), (429, None, 45.0), (429, "soon", 45.0),
     (429, "Thu, 03 Dec 2026 00:02:00 GMT", 120.0),  # an HTTP date: the seconds until it
     (429, "Thu, 03 Dec 2026 00:00:00 GMT", 1.0),  # one already past: the shortest rest
     (401, "30", 45.0)],
)
def test_a_pooled_key_rests_for_retry_after_capped_at_five_minutes_else_key_cooldown(status, retry_after, rest):
    from utils.upstream.failures import UpstreamStatus
    from utils.upstream.policy import Policy

    settings = dataclasses.replace(config.Settings(), key_cooldown=45.0)
    failure = UpstreamStatus("openai", status, b"", retry_after)
    assert Policy.cools_key(failure)
    assert Policy(settings).key_rest(failure, now=MIDNIGHT) == rest
