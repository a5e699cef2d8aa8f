"""Cost in money, through real HTTP: the price of each call, unpriced calls, dollar budgets per provider and node-wide.

The mock upstream reports usage as words: a chat request's prompt tokens are the words of its messages, its
completion tokens the words of the answer (``Behavior.content``); a Messages answer adds ``cache_read`` and
``cache_write``. Prices are chosen so that every rule changes the figure: a cache read priced as input, or an
unpriced call counted as $0, gives another number than the one asserted. Budgets run on a wall clock the test
moves (``Clock``), so the day ends without waiting; two node processes share one budget on a real redis-server.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ujson

import config
from tests.conftest import NodeProcess
from tests.helpers import Clock, error_of, get, post, sample, scrape, sse_events
from tests.mock_upstream import Behavior
from tests.redis_server import RedisServer

pytestmark = pytest.mark.gen_test(timeout=30)

CHAT = "/v1/chat/completions"
MIDNIGHT = calendar.timegm((2026, 12, 3, 0, 0, 0))  # 2026-12-03T00:00:00Z
PRICES = {
    "_prices_as_of": "a comment: ignored",
    "openai/gpt-4o-mini": {"input": 2, "output": 8},  # listed in SUPPORTED_MODELS_FILE; cache prices default to input
    "openai/cached": {"input": 2, "cache_read": 0.5, "output": 8},
    "anthropic/claude-x": {"input": 3, "cache_read": 0.3, "cache_write": 3.75, "output": 15},
    "groq/*": {"input": 1, "output": 1},
}
THREE = [{"role": "user", "content": "one two three"}]  # 3 prompt tokens
FOUR = "a b c d"  # 4 completion tokens
ONE_CALL = (3 * 2 + 4 * 8) / 1e6  # a chat call of THREE answered FOUR at openai/gpt-4o-mini's price: $0.000038
FILES = Path(os.environ.get("TMPDIR", "/tmp"))


@pytest.fixture
def clock() -> Clock:
    return Clock(MIDNIGHT - 3600.0)  # 23:00 UTC


@pytest.fixture
def node_options(clock: Clock) -> dict[str, Any]:
    return {"wall_clock": clock}


def write(name: str, data: Any) -> str:
    path = FILES / f"mira-test-cost-{os.getpid()}-{name}.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def limits(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """PROVIDER_LIMITS_FILE with the test's ``limits`` parameter (none: no file)."""
    yield getattr(request, "param", {})


@pytest.fixture
def node_env(node_env: dict[str, str], limits: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The conftest environment with PRICES_FILE (unless a test says ``PRICES_FILE=""``), the limits, and REDIS_URL
    when the test asks for ``redis``."""
    env = dict(node_env)
    made = []
    if env.get("PRICES_FILE") != "":
        env["PRICES_FILE"] = write("prices", PRICES)
        made.append(env["PRICES_FILE"])
    else:
        del env["PRICES_FILE"]
    if limits:
        env["PROVIDER_LIMITS_FILE"] = write("limits", limits)
        made.append(env["PROVIDER_LIMITS_FILE"])
    if "redis" in request.fixturenames:
        env["REDIS_URL"] = request.getfixturevalue("redis").url
    yield env
    for path in made:
        Path(path).unlink(missing_ok=True)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    server = RedisServer.start()
    yield server
    server.stop()


def with_limits(table: dict[str, Any]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("limits", [table], indirect=True, ids=["limits"])


def body(model: str = "openai/gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": THREE, **extra}


def messages_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "messages": THREE, **extra}


def cost_header(response: Any) -> float | None:
    value = response.headers.get("X-Mira-Cost-USD")
    return None if value is None else float(value)


# -- the cost of a call -----------------------------------------------------------------------------------------


async def test_a_json_answer_carries_its_cost_from_the_usage_and_the_price(node_url, upstream):
    upstream.default = Behavior(content=FOUR)
    before = await scrape(node_url)
    response = await post(node_url + CHAT, body())
    assert response.code == 200
    assert response.headers["X-Mira-Cost-USD"] == "0.000038"  # (3 x $2 + 4 x $8) / 1e6
    after = await scrape(node_url)
    series = 'mira_cost_usd_total{model="openai/gpt-4o-mini",provider="openai"}'
    assert sample(after, series) - sample(before, series) == pytest.approx(ONE_CALL)
    node = 'mira_node_cost_today_usd{provider="openai"}'
    assert sample(after, node) - sample(before, node) == pytest.approx(ONE_CALL)


async def test_cache_reads_and_writes_are_priced_at_their_own_prices(node_url, upstream):
    # relayed Messages: 3 fresh input tokens, 1,000 read from the cache, 200 written to it, 5 output tokens
    upstream.default = Behavior(content="a b c d e", cache_read=1000, cache_write=200)
    expected = (3 * 3 + 1000 * 0.3 + 200 * 3.75 + 5 * 15) / 1e6
    relayed = await post(node_url + "/v1/messages", messages_body("anthropic/claude-x"))
    assert relayed.code == 200 and cost_header(relayed) == pytest.approx(expected)
    # the same answer to a chat client (translated both ways) costs the same
    translated = await post(node_url + CHAT, body("anthropic/claude-x"))
    assert translated.code == 200 and cost_header(translated) == pytest.approx(expected)
    assert expected != (1203 * 3 + 5 * 15) / 1e6  # what pricing the cache as ordinary input would give


def openai_answer(prompt: int, cached: int, completion: int) -> dict[str, Any]:
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
             "prompt_tokens_details": {"cached_tokens": cached}}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


async def test_openai_cached_tokens_are_priced_as_cache_reads_which_default_to_input(node_url, upstream):
    upstream.default = Behavior(json_body=openai_answer(1000, 800, 10))
    cached = await post(node_url + CHAT, body("openai/cached"))
    assert cost_header(cached) == pytest.approx((200 * 2 + 800 * 0.5 + 10 * 8) / 1e6)
    default = await post(node_url + CHAT, body())  # no cache_read price: the cache reads at input's
    assert cost_header(default) == pytest.approx((1000 * 2 + 10 * 8) / 1e6)


async def test_a_provider_star_price_covers_its_other_models(node_url, upstream):
    upstream.default = Behavior(content=FOUR)
    response = await post(node_url + CHAT, body("groq/any-model-at-all"))
    assert cost_header(response) == pytest.approx((3 + 4) / 1e6)


async def test_an_unpriced_call_has_no_cost_and_is_counted_as_unpriced(node_url, upstream):
    upstream.default = Behavior(content=FOUR)
    before = await scrape(node_url)
    response = await post(node_url + CHAT, body("openai/no-price-for-me"))
    assert response.code == 200
    assert "X-Mira-Cost-USD" not in response.headers  # never $0
    after = await scrape(node_url)
    unpriced = 'mira_unpriced_calls_total{model="other",provider="openai"}'
    assert sample(after, unpriced) == sample(before, unpriced) + 1
    assert sample(after, 'mira_cost_usd_total{model="other",provider="openai"}') == sample(
        before, 'mira_cost_usd_total{model="other",provider="openai"}')


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")
async def test_a_custom_provider_is_unpriced(node_url, upstream):
    upstream.default = Behavior(content=FOUR)
    before = await scrape(node_url)
    custom = {"base_url": upstream.base_url, "api_key": "sk-caller-own-key-1234", "provider_name": "mine"}
    response = await post(node_url + CHAT, body("openai/gpt-4o-mini", model_provider=custom))
    assert response.code == 200 and "X-Mira-Cost-USD" not in response.headers
    after = await scrape(node_url)
    series = 'mira_unpriced_calls_total{model="custom",provider="custom"}'
    assert sample(after, series) == sample(before, series) + 1


@pytest.mark.node_env(PRICES_FILE="")
async def test_without_prices_file_nothing_is_priced(node_url, upstream, ctx):
    upstream.default = Behavior(content=FOUR)
    before = await scrape(node_url)
    response = await post(node_url + CHAT, body())
    assert response.code == 200 and "X-Mira-Cost-USD" not in response.headers
    after = await scrape(node_url)
    assert sample(after, 'mira_unpriced_calls_total{model="openai/gpt-4o-mini",provider="openai"}') == sample(
        before, 'mira_unpriced_calls_total{model="openai/gpt-4o-mini",provider="openai"}')
    assert ctx.prices is None and ctx.upstream.prices is None
    status = ujson.loads((await get(node_url + "/status.json")).body)
    assert all("usd_today" not in p for p in status["providers"])


@pytest.mark.node_env(LOG_FORMAT="json")
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_access_line_carries_the_cost_and_json_logs_cost_usd(node_url, upstream, caplog, stream):
    caplog.set_level(logging.INFO, logger="mira.access")
    upstream.default = Behavior(content=FOUR)
    before = await scrape(node_url)
    response = await post(node_url + CHAT, body(stream=stream))
    assert response.code == 200
    if stream:
        assert sse_events(response.body)[-1] == b"data: [DONE]"
        assert "X-Mira-Cost-USD" not in response.headers  # a stream's headers are gone before its usage is known
    request_id = response.headers["X-Request-ID"]
    (line,) = [r for r in caplog.records if r.name == "mira.access" and r.getMessage().startswith(request_id)]
    assert " tokens=3/4 cost=0.000038" in line.getMessage()
    assert line.__dict__["cost_usd"] == pytest.approx(ONE_CALL)
    after = await scrape(node_url)
    series = 'mira_cost_usd_total{model="openai/gpt-4o-mini",provider="openai"}'
    assert sample(after, series) - sample(before, series) == pytest.approx(ONE_CALL)


async def test_an_unpriced_answer_has_no_cost_in_its_access_line(node_url, upstream, caplog):
    caplog.set_level(logging.INFO, logger="mira.access")
    response = await post(node_url + CHAT, body("openai/no-price"))
    (line,) = [r for r in caplog.records if r.name == "mira.access"
               and r.getMessage().startswith(response.headers["X-Request-ID"])]
    assert " tokens=" in line.getMessage() and "cost=" not in line.getMessage()
    assert "cost_usd" not in line.__dict__


# -- dollar budgets -------------------------------------------------------------------------------------------


BUDGET = 0.00005  # two calls of ONE_CALL: the first two are sent (0, then $0.000038 < budget), the third is refused


@with_limits({"openai": {"usd_per_day": BUDGET}})
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_providers_dollar_budget_refuses_calls_until_the_next_utc_midnight(limits, node_url, upstream, clock, stream):
    upstream.default = Behavior(content=FOUR)
    clock.now = MIDNIGHT - 100.5  # 23:58:19.5 UTC
    for _ in range(2):
        assert (await post(node_url + CHAT, body(stream=stream))).code == 200
    text = await scrape(node_url)
    assert sample(text, 'mira_cost_today_usd{provider="openai"}') == pytest.approx(2 * ONE_CALL)
    assert sample(text, 'mira_budget_usd_per_day{provider="openai"}') == BUDGET
    refusals = sample(text, 'mira_limit_refusals_total{limit="usd_per_day",provider="openai"}')
    refused = await post(node_url + CHAT, body(stream=stream))
    assert refused.code == 429
    error = error_of(refused)
    assert error["code"] == "budget_exceeded" and "usd_per_day" in error["message"] and "openai" in error["message"]
    assert refused.headers["Retry-After"] == "101"  # to 00:00:00 UTC, rounded up
    assert len(upstream.requests) == 2
    assert sample(await scrape(node_url), 'mira_limit_refusals_total{limit="usd_per_day",provider="openai"}') == refusals + 1
    # another provider has no dollar budget: it is not refused; a fallback to it takes the request
    moved = await post(node_url + CHAT, body(fallbacks=["groq/m"]))
    assert moved.code == 200 and moved.headers["X-Mira-Model"] == "groq/m"
    clock.now = MIDNIGHT + 1  # a new day
    assert (await post(node_url + CHAT, body(stream=stream))).code == 200


@with_limits({"openai": {"usd_per_day": BUDGET}})
@pytest.mark.node_env(EVAL_CONCURRENCY="1")
async def test_eval_cells_spend_the_budget_and_are_refused_once_it_is_reached(limits, node_url, upstream):
    upstream.default = Behavior(content=FOUR)
    csv = "q\none\ntwo\nthree\nfour\n"
    graded = await post(node_url + "/v1/eval", {"csv": csv, "models": ["openai/gpt-4o-mini"], "eval_system_prompt": "x"})
    assert graded.code == 200
    cells = [line.split(",", 1)[1] for line in graded.body.decode().splitlines()[1:]]
    assert cells.count(FOUR) == 2, cells
    assert [c for c in cells if c != FOUR] == [
        "error: The daily dollar budget (usd_per_day) of openai API is spent; it renews at 00:00 UTC"] * 2
    assert len(upstream.requests) == 2


@with_limits({"*": {"usd_per_day": BUDGET}})
async def test_the_node_wide_dollar_budget_counts_every_provider(limits, node_url, upstream, clock):
    upstream.default = Behavior(content=FOUR)
    assert (await post(node_url + CHAT, body())).code == 200  # openai: $0.000038
    assert (await post(node_url + CHAT, body("groq/m"))).code == 200  # groq/*: $0.000007 -> $0.000045
    assert (await post(node_url + "/v1/messages", messages_body("anthropic/claude-x"))).code == 200  # over it now
    text = await scrape(node_url)
    assert sample(text, 'mira_cost_today_usd{provider="*"}') > BUDGET
    assert sample(text, 'mira_budget_usd_per_day{provider="*"}') == BUDGET
    for model in ("openai/gpt-4o-mini", "groq/m", "anthropic/claude-x"):
        refused = await post(node_url + CHAT, body(model))
        assert refused.code == 429, model
        error = error_of(refused)
        assert error["code"] == "budget_exceeded" and "node's daily dollar budget" in error["message"]
        assert refused.headers["Retry-After"] == "3600"
    assert len(upstream.requests) == 3
    assert sample(await scrape(node_url), 'mira_limit_refusals_total{limit="node_usd_per_day",provider="groq"}') >= 1


@with_limits({"*": {"tokens_per_day": 10}})
@pytest.mark.node_env(PRICES_FILE="")
async def test_the_node_wide_token_budget_counts_every_provider(limits, node_url, upstream):
    upstream.default = Behavior(content=FOUR)  # 7 tokens a call
    assert (await post(node_url + CHAT, body())).code == 200
    assert (await post(node_url + CHAT, body("groq/m"))).code == 200
    refused = await post(node_url + CHAT, body("mira/m"))
    assert refused.code == 429 and error_of(refused)["code"] == "budget_exceeded"
    assert "tokens_per_day" in error_of(refused)["message"]
    assert sample(await scrape(node_url), 'mira_tokens_today{provider="*"}') == 14


ROUTES = [  # (path, body, how a refusal looks): every route that calls a provider
    ("chat", CHAT, body(), "json"),
    ("chat-stream", CHAT, body(stream=True), "json"),
    ("responses", "/v1/responses", {"model": "openai/gpt-4o-mini", "input": "one two three"}, "json"),
    ("embeddings", "/v1/embeddings", {"model": "openai/gpt-4o-mini", "input": ["a", "b"]}, "json"),
    ("completions", "/v1/completions", {"model": "openai/gpt-4o-mini", "prompt": "one two"}, "json"),
    ("messages-relayed", "/v1/messages", messages_body("anthropic/claude-x"), "anthropic"),
    ("messages-translated", "/v1/messages", messages_body("openai/gpt-4o-mini", stream=True), "anthropic"),
    ("verify", "/v1/verify", {"messages": THREE, "model": "openai/gpt-4o-mini"}, "json"),
    ("eval", "/v1/eval", {"csv": "q\nhi\n", "models": ["groq/m"], "eval_system_prompt": "x"}, "cell"),
]


@with_limits({"*": {"usd_per_day": 0.00001}})
@pytest.mark.parametrize(("path", "request_body", "shape"), [r[1:] for r in ROUTES], ids=[r[0] for r in ROUTES])
async def test_a_spent_budget_is_refused_on_every_route(limits, node_url, upstream, path, request_body, shape):
    upstream.default = Behavior(content=FOUR)
    assert (await post(node_url + CHAT, body())).code == 200  # $0.000038: the node's $0.00001 is spent
    refused = await post(node_url + path, request_body)
    if shape == "cell":
        assert refused.code == 200
        assert "error: The node's daily dollar budget" in refused.body.decode()
    else:
        assert refused.code == 429, refused.body
        error = error_of(refused) if shape == "json" else json.loads(refused.body)["error"]
        assert error["code"] == "budget_exceeded"
    assert len(upstream.requests) == 1


SPENDING = [(name, path, request_body) for name, path, request_body, _ in ROUTES if name != "messages-relayed"]


@with_limits({"openai": {"usd_per_day": 0.000001}, "groq": {"usd_per_day": 0.000001}})
@pytest.mark.parametrize(("path", "request_body"), [r[1:] for r in SPENDING], ids=[r[0] for r in SPENDING])
async def test_every_routes_answer_spends_the_budget(limits, node_url, upstream, path, request_body):
    upstream.default = Behavior(content=FOUR)
    spent = await post(node_url + path, request_body)  # at least $0.000004 on every route: the $0.000001 is spent
    assert spent.code == 200, spent.body
    assert b"error:" not in spent.body
    model = "groq/m" if path == "/v1/eval" else "openai/gpt-4o-mini"
    refused = await post(node_url + CHAT, body(model))
    assert refused.code == 429 and error_of(refused)["code"] == "budget_exceeded"


# -- unpriced models under a dollar budget ---------------------------------------------------------------------


@with_limits({"openai": {"usd_per_day": 1}})
async def test_an_unpriced_model_under_a_dollar_budget_is_refused_before_it_is_sent(limits, node_url, upstream):
    refused = await post(node_url + CHAT, body("openai/no-price"))
    assert refused.code == 400
    error = error_of(refused)
    assert error["code"] == "unpriced_model" and error["param"] == "model"
    assert "openai/no-price" in error["message"] and "PRICES_FILE" in error["message"]
    assert upstream.requests == []
    # a provider without a dollar budget still takes an unpriced model (counted as unpriced)
    assert (await post(node_url + CHAT, body("mira/no-price"))).code == 200
    # a priced fallback takes a request whose primary is unpriced; an unpriced fallback is skipped
    moved = await post(node_url + CHAT, body("openai/no-price", fallbacks=["openai/gpt-4o-mini"]))
    assert moved.code == 200 and moved.headers["X-Mira-Model"] == "openai/gpt-4o-mini"
    upstream.set_behavior("gpt-4o-mini", Behavior(status=503, error_message="down"))
    seen = len(upstream.requests)
    failed = await post(node_url + CHAT, body(fallbacks=["openai/no-price"]))
    assert failed.code == 503  # the primary's error: the unpriced fallback was skipped, never sent
    assert [r.json["model"] for r in upstream.requests[seen:]] == ["gpt-4o-mini"] * 3  # the primary and its retries
    # the Messages routes, verify and eval alike
    messages = await post(node_url + "/v1/messages", messages_body("openai/no-price"))
    assert messages.code == 400 and json.loads(messages.body)["error"]["code"] == "unpriced_model"
    verified = await post(node_url + "/v1/verify", {"messages": THREE, "model": "openai/no-price"})
    assert verified.code == 400 and error_of(verified)["code"] == "unpriced_model"
    graded = await post(node_url + "/v1/eval", {"csv": "q\nhi\n", "models": ["openai/no-price"], "eval_system_prompt": "x"})
    assert "error: openai/no-price has no price in PRICES_FILE" in graded.body.decode()


@with_limits({"*": {"usd_per_day": 1}})
@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")
async def test_under_the_node_wide_budget_every_providers_unpriced_model_is_refused(limits, node_url, upstream):
    for model in ("openai/no-price", "mira/no-price", "ollama/llama3.1"):
        refused = await post(node_url + CHAT, body(model))
        assert refused.code == 400 and error_of(refused)["code"] == "unpriced_model", model
        assert 'the node ("*")' in error_of(refused)["message"]
    assert upstream.requests == []
    # a per-request custom provider spends the caller's key: no budget applies to it
    custom = {"base_url": upstream.base_url, "api_key": "sk-caller-own-key-1234", "provider_name": "mine"}
    assert (await post(node_url + CHAT, body("whatever", model_provider=custom))).code == 200


# -- the status page's figures -----------------------------------------------------------------------------------


def row(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in status["providers"] if p["name"] == name)


@with_limits({"openai": {"usd_per_day": 1}, "*": {"usd_per_day": 2, "tokens_per_day": 1000}})
async def test_status_json_shows_usd_today_and_each_dollar_budgets_use(limits, node_url, upstream):
    upstream.default = Behavior(content=FOUR)
    before = ujson.loads((await get(node_url + "/status.json")).body)
    assert (await post(node_url + CHAT, body())).code == 200
    status = ujson.loads((await get(node_url + "/status.json")).body)
    openai = row(status, "openai")
    assert openai["usd_today"] - row(before, "openai")["usd_today"] == pytest.approx(ONE_CALL)
    assert openai["limits"]["usd_per_day"] == {"limit": 1, "used": pytest.approx(ONE_CALL)}
    node = row(status, "*")
    assert node["limits"]["usd_per_day"] == {"limit": 2, "used": pytest.approx(ONE_CALL)}
    assert node["limits"]["tokens_per_day"] == {"limit": 1000, "used": 7}
    assert node["usd_today"] == pytest.approx(sum(p["usd_today"] or 0 for p in status["providers"] if p["name"] != "*"))
    assert row(status, "groq")["usd_today"] == row(before, "groq")["usd_today"]


# -- shared on Redis --------------------------------------------------------------------------------------------


@with_limits({"openai": {"usd_per_day": BUDGET}, "*": {"usd_per_day": 1}})
async def test_on_redis_the_budget_is_refused_until_midnight_on_the_injected_clock(limits, redis, node_url, upstream, clock):
    upstream.default = Behavior(content=FOUR)
    # Redis expires a day's count an hour after the day (by its own clock): the test's day is today's
    midnight = (int(time.time() // 86400) + 1) * 86400
    day = midnight // 86400 - 1
    clock.now = midnight - 30
    for number in (1, 2):
        assert (await post(node_url + CHAT, body())).code == 200
        await wait_for(lambda n=number: float(redis.command("GET", f"mira:usd:openai:{day}") or 0) > (n - 0.5) * ONE_CALL)
    assert float(redis.command("GET", f"mira:usd:openai:{day}")) == pytest.approx(2 * ONE_CALL)
    assert float(redis.command("GET", f"mira:usd:*:{day}")) == pytest.approx(2 * ONE_CALL)
    refused = await post(node_url + CHAT, body())
    assert refused.code == 429 and error_of(refused)["code"] == "budget_exceeded"
    assert refused.headers["Retry-After"] == "30"
    assert 0 < redis.command("TTL", f"mira:usd:openai:{day}") <= midnight + 3600 - time.time() + 1  # an hour after the day
    clock.now = midnight + 1
    assert (await post(node_url + CHAT, body())).code == 200


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def chat(node: NodeProcess, model: str) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps({"model": model, "messages": THREE}).encode()
    request = urllib.request.Request(node.url + CHAT, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


@pytest.mark.parametrize(
    ("table", "key"),
    [({"openai": {"usd_per_day": BUDGET}}, "openai"), ({"*": {"usd_per_day": BUDGET}}, "*")],
    ids=["provider", "node-wide"],
)
def test_two_nodes_share_one_dollar_budget_on_redis(spawn_node, upstream, tmp_path, table, key):
    upstream.default = Behavior(content=FOUR)
    server = RedisServer.start()
    try:
        prices, limits_path = tmp_path / "prices.json", tmp_path / "limits.json"
        prices.write_text(json.dumps(PRICES))
        limits_path.write_text(json.dumps(table))
        env = {"REDIS_URL": server.url, "PRICES_FILE": str(prices), "PROVIDER_LIMITS_FILE": str(limits_path)}
        first, second = spawn_node(env), spawn_node(env)
        for node in (first, second):
            assert node.wait_for_line(r"shared state on Redis at redis", 10) is not None, node.output
        day = int(time.time() // 86400)

        def spent() -> float:
            return float(server.command("GET", f"mira:usd:{key}:{day}") or 0)

        for number, node in enumerate((first, second), start=1):
            status, headers, _ = chat(node, "openai/gpt-4o-mini")
            assert status == 200 and float(headers["x-mira-cost-usd"]) == pytest.approx(ONE_CALL)
            deadline = time.monotonic() + 5
            while spent() < number * ONE_CALL * 0.999 and time.monotonic() < deadline:
                time.sleep(0.02)  # the cost is written to Redis just after the answer
            assert spent() == pytest.approx(number * ONE_CALL)
        for node in (first, second):  # $0.000076 spent of $0.00005, on both nodes together: both refuse
            status, headers, raw = chat(node, "openai/gpt-4o-mini")
            assert status == 429 and json.loads(raw)["error"]["code"] == "budget_exceeded"
            assert 0 < int(headers["retry-after"]) <= 86400
        assert len(upstream.requests) == 2
    finally:
        server.stop()


# -- start-up checks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{not json", "not JSON at line 1, column 2"),
        ("[]", "must be a JSON object"),
        ('{"gpt-4o": {"input": 1, "output": 1}}', "'gpt-4o' must be PROVIDER/MODEL"),
        ('{"nosuch/m": {"input": 1, "output": 1}}', "'nosuch/m': unknown provider 'nosuch'"),
        ('{"openai/gpt-4o": 5}', "openai/gpt-4o: must be an object"),
        ('{"openai/gpt-4o": {"input": 1}}', "openai/gpt-4o: 'output' is required"),
        ('{"openai/gpt-4o": {"output": 1}}', "openai/gpt-4o: 'input' is required"),
        ('{"openai/gpt-4o": {"input": 1, "output": "2"}}', "openai/gpt-4o.output must be a number of USD per million"),
        ('{"openai/gpt-4o": {"input": -1, "output": 2}}', "openai/gpt-4o.input must be a number of USD per million"),
        ('{"openai/gpt-4o": {"input": true, "output": 2}}', "openai/gpt-4o.input must be a number"),
        ('{"openai/gpt-4o": {"input": 1, "output": 2, "cached_input": 0.5}}', "openai/gpt-4o: unknown field 'cached_input'"),
    ],
)
def test_a_bad_prices_file_stops_start_up_naming_the_model_and_field(tmp_path, monkeypatch, content, named):
    path = tmp_path / "prices.json"
    path.write_text(content)
    clean(monkeypatch)
    monkeypatch.setenv("PRICES_FILE", str(path))
    with pytest.raises(config.ConfigError, match="PRICES_FILE") as raised:
        config.load_settings()
    assert named in str(raised.value)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({"openai": {"usd_per_day": "5"}}, "openai.usd_per_day must be a number of USD, 0 or more"),
        ({"openai": {"usd_per_day": -1}}, "openai.usd_per_day must be a number of USD, 0 or more"),
        ({"*": {"rpm": 5}}, "the node-wide entry: unknown limit 'rpm' (one of tokens_per_day, usd_per_day)"),
        ({"*": {"tokens_per_day": 1.5}}, "*.tokens_per_day must be a whole number"),
    ],
)
def test_a_bad_dollar_budget_stops_start_up(tmp_path, monkeypatch, table, named):
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(table))
    clean(monkeypatch)
    monkeypatch.setenv("PROVIDER_LIMITS_FILE", str(path))
    monkeypatch.setenv("PRICES_FILE", str(Path(config.ROOT) / "data" / "prices.example.json"))
    with pytest.raises(config.ConfigError, match="PROVIDER_LIMITS_FILE") as raised:
        config.load_settings()
    assert named in str(raised.value)


def test_a_dollar_budget_without_prices_stops_start_up(tmp_path, monkeypatch):
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"*": {"usd_per_day": 10}}))
    clean(monkeypatch)
    monkeypatch.setenv("PROVIDER_LIMITS_FILE", str(path))
    with pytest.raises(config.ConfigError, match="usd_per_day for \\* but PRICES_FILE is not set"):
        config.load_settings()


def test_the_node_exits_2_on_a_bad_prices_file(spawn_node, tmp_path):
    path = tmp_path / "prices.json"
    path.write_text('{"openai/gpt-4o": {"input": 2.5, "output": "ten"}}')
    node = spawn_node({"PRICES_FILE": str(path)}, ready=False)
    assert node.wait() == 2
    assert "PRICES_FILE" in node.output and "openai/gpt-4o.output" in node.output


def test_the_shipped_example_prices_the_demos_models_and_is_dated(monkeypatch):
    clean(monkeypatch)
    monkeypatch.setenv("PRICES_FILE", str(Path(config.ROOT) / "data" / "prices.example.json"))
    settings = config.load_settings()
    raw = json.loads((Path(config.ROOT) / "data" / "prices.example.json").read_text())
    assert raw["_prices_as_of"][:4].isdigit()
    from tools.demo import DEMO_ALIASES

    demo = {"openai/gpt-4o-mini", "groq/llama-3.1-8b-instant", "openai/gpt-4.1-mini", "openai/text-embedding-3-small",
            "openai/gpt-3.5-turbo-instruct", *DEMO_ALIASES.values()}
    assert demo <= set(settings.prices)
    assert settings.prices["anthropic/claude-haiku-4-5"].cache_read < settings.prices["anthropic/claude-haiku-4-5"].input


def clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in config.ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENV_FILE", os.devnull)
