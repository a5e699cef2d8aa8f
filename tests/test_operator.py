"""The operator's first hour: unconfigured providers, CORS for browser SDKs, machine headers, the access line, build info."""

from __future__ import annotations

import asyncio
import logging

import pytest
import ujson
from tornado.httpclient import AsyncHTTPClient

from tests.helpers import chat_body, error_of, get, post
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test(timeout=20)

CHAT = "/v1/chat/completions"
STAINLESS = "authorization,content-type,x-stainless-os,x-stainless-lang,x-stainless-retry-count,x-stainless-timeout"


# -- providers without a key ----------------------------------------------------------------------------


@pytest.mark.node_env(OPENAI_API_KEY="", GROQ_API_KEY="")
async def test_an_unconfigured_provider_is_refused_before_any_call_naming_its_variable(node_url, upstream):
    response = await post(node_url + CHAT, chat_body("openai/gpt-4o-mini"))
    assert response.code == 400
    error = error_of(response)
    assert error["code"] == "provider_not_configured"
    assert error["message"] == "openai is not configured on this node: set OPENAI_API_KEY"
    assert upstream.requests == []  # never sent, never retried


@pytest.mark.node_env(OPENAI_API_KEY="", UPSTREAM_RETRIES="0")
async def test_a_fallback_to_an_unconfigured_provider_is_skipped(node_url, upstream):
    upstream.set_behavior("down", Behavior(status=503))
    response = await post(node_url + CHAT, chat_body("groq/down", fallbacks=["openai/gpt", "openrouter/up"]))
    assert response.code == 200
    assert response.headers["X-Mira-Model"] == "openrouter/up"
    assert [r.json["model"] for r in upstream.requests] == ["down", "up"]


@pytest.mark.node_env(OPENAI_API_KEY="", ANTHROPIC_API_KEY="")
async def test_health_and_models_list_configured_providers_only(node_url, upstream):
    health = ujson.loads((await get(node_url + "/health")).body)
    assert set(health["providers"]) == {"openrouter", "groq", "mira", "ollama"}  # mira and ollama need no key
    models = [m["id"] for m in ujson.loads((await get(node_url + "/v1/models")).body)["data"]]
    assert models and not [m for m in models if m.startswith(("openai/", "anthropic/"))]
    assert any(m.startswith("groq/") for m in models)


@pytest.mark.node_env(ANTHROPIC_API_KEY="")
async def test_the_messages_route_refuses_an_unconfigured_provider_in_anthropics_shape(node_url, upstream):
    body = {"model": "anthropic/claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    response = await post(node_url + "/v1/messages", body)
    assert response.code == 400
    error = ujson.loads(response.body)["error"]
    assert error["code"] == "provider_not_configured" and "set ANTHROPIC_API_KEY" in error["message"]


# -- CORS for pages using the OpenAI and Anthropic JavaScript SDKs --------------------------------------


async def test_a_preflight_allows_the_headers_it_asks_for(node_url, upstream):
    response = await AsyncHTTPClient().fetch(
        node_url + CHAT, method="OPTIONS", raise_error=False,
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": STAINLESS + ",anthropic-dangerous-direct-browser-access"},
    )
    assert response.code == 204
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed >= set(STAINLESS.split(",")) | {"anthropic-dangerous-direct-browser-access"}
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_answers_expose_the_nodes_own_headers(node_url, upstream):
    response = await post(node_url + CHAT, chat_body(), headers={"Origin": "https://app.example"})
    assert response.code == 200
    exposed = {h.strip() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == {"X-Request-ID", "X-Mira-Model", "X-Mira-Cost-USD", "Retry-After"}


@pytest.mark.node_env(CORS_ORIGINS="https://app.example")
async def test_an_origin_not_listed_gets_no_cors_headers(node_url, upstream):
    response = await post(node_url + CHAT, chat_body(), headers={"Origin": "https://other.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Expose-Headers" not in response.headers
    listed = await post(node_url + CHAT, chat_body(), headers={"Origin": "https://app.example"})
    assert listed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-Mira-Model" in listed.headers["Access-Control-Expose-Headers"]


# -- machine headers only for callers that passed the gates --------------------------------------------


@pytest.mark.node_env(SERVICE_API_KEY="svc-key-0001", MACHINE_NAME="node-a", MACHINE_IP="10.0.0.9")
async def test_no_machine_headers_on_a_401(node_url, upstream):
    refused = await post(node_url + CHAT, chat_body())
    assert refused.code == 401
    assert "X-Machine-IP" not in refused.headers and "X-Machine-Name" not in refused.headers
    served = await post(node_url + CHAT, chat_body(), headers={"Authorization": "Bearer svc-key-0001"})
    assert served.code == 200
    assert served.headers["X-Machine-IP"] == "10.0.0.9" and served.headers["X-Machine-Name"] == "node-a"


@pytest.mark.node_env(ALLOWED_CLIENTS="203.0.113.7", MACHINE_NAME="node-a")
async def test_no_machine_headers_on_a_403(node_url, upstream):
    refused = await post(node_url + CHAT, chat_body())
    assert refused.code == 403
    assert "X-Machine-IP" not in refused.headers and "X-Machine-Name" not in refused.headers


# -- the access line and build info --------------------------------------------------------------------


async def test_the_access_line_names_the_model_and_the_bytes_of_every_answer(node_url, upstream, caplog):
    caplog.set_level(logging.INFO, logger="mira.access")
    json_answer = await post(node_url + CHAT, chat_body("openai/gpt-4o-mini"))
    stream = await post(node_url + CHAT, chat_body("groq/llama", stream=True))
    refused = await post(node_url + CHAT, b"{not json")
    records = [r for r in caplog.records if r.name == "mira.access"]
    assert [getattr(r, "model", None) for r in records] == ["openai/gpt-4o-mini", "groq/llama", None]
    assert [getattr(r, "bytes", None) for r in records] == [len(json_answer.body), len(stream.body), len(refused.body)]
    line = records[0].getMessage()
    assert " model=openai/gpt-4o-mini " in line and f" bytes={len(json_answer.body)}" in line


async def test_build_info_names_the_version_and_the_event_loop(node_url, upstream, event_loop_name):
    text = (await get(node_url + "/metrics")).body.decode()
    assert f'mira_build_info{{event_loop="{event_loop_name}",version="9.9.9-test"}} 1.0' in text


# -- UPSTREAM_RETRY_MAX_WAIT -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_a_retry_after_longer_than_the_max_wait_is_not_waited_for(node_url, upstream, status):
    upstream.default = Behavior(status=status, error_message="busy", headers={"Retry-After": "7"})
    pending = asyncio.ensure_future(post(node_url + CHAT, chat_body()))
    response = await asyncio.wait_for(pending, timeout=5)  # not 7 s, twice
    assert response.code == status
    assert response.headers["Retry-After"] == "7"
    assert len(upstream.requests) == 1  # not retried


@pytest.mark.node_env(UPSTREAM_RETRY_MAX_WAIT="10", UPSTREAM_RETRIES="1")
async def test_a_retry_after_within_the_max_wait_is_retried(node_url, upstream):
    upstream.push(Behavior(status=503, error_message="busy", headers={"Retry-After": "0"}))
    response = await post(node_url + CHAT, chat_body())
    assert response.code == 200
    assert len(upstream.requests) == 2


async def test_a_long_retry_after_goes_to_the_next_fallback_at_once(node_url, upstream):
    upstream.set_behavior("busy", Behavior(status=429, error_message="busy", headers={"Retry-After": "60"}))
    response = await asyncio.wait_for(post(node_url + CHAT, chat_body("openai/busy", fallbacks=["groq/free"])), timeout=5)
    assert response.code == 200 and response.headers["X-Mira-Model"] == "groq/free"
    assert [r.json["model"] for r in upstream.requests] == ["busy", "free"]


@pytest.mark.node_env(UPSTREAM_RETRIES="1")
@pytest.mark.parametrize("junk", ["nan", "inf", "-3", "soon"])
async def test_a_retry_after_that_is_not_a_number_gets_the_ordinary_back_off(node_url, upstream, junk):
    upstream.push(Behavior(status=503, error_message="busy", headers={"Retry-After": junk}))
    response = await post(node_url + CHAT, chat_body())
    assert response.code == 200
    assert len(upstream.requests) == 2  # retried after the ordinary (short) back-off


async def test_an_alias_or_fallback_to_an_unconfigured_provider_is_a_start_up_warning(spawn_node, tmp_path):
    aliases = tmp_path / "aliases.json"
    aliases.write_text('{"fast": "openai/gpt-4o-mini"}')
    fallbacks = tmp_path / "fallbacks.json"
    fallbacks.write_text('{"groq/llama": ["openai/gpt-4o"]}')
    node = spawn_node({"OPENAI_API_KEY": None, "MODEL_ALIASES_FILE": str(aliases), "MODEL_FALLBACKS_FILE": str(fallbacks)})
    assert node.wait_for_line(
        r"MODEL_ALIASES_FILE: 'fast' -> openai/gpt-4o-mini, but openai is not configured \(set OPENAI_API_KEY\)"
    )
    assert node.wait_for_line(r"MODEL_FALLBACKS_FILE: 'groq/llama' falls back to openai/gpt-4o, but openai is not configured")
