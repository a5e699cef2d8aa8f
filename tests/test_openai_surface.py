"""The rest of the OpenAI surface: /v1/responses, /v1/embeddings, /v1/completions, routed like chat."""

from __future__ import annotations

import json

import openai
import pytest

from tests.helpers import RawClient, error_of, get, post, sse_events
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test(timeout=20)


def sdk(node_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="unused", max_retries=0)


async def test_sdk_responses_json(node_url, upstream):
    client = sdk(node_url)
    response = await client.responses.create(model="openai/gpt-4.1-mini", input="Say hello", instructions="Be brief")
    assert response.output_text == "Hello from mock"
    seen = upstream.requests[0]
    assert seen.path == "/v1/responses"
    assert seen.json == {"model": "gpt-4.1-mini", "input": "Say hello", "instructions": "Be brief"}
    await client.close()


async def test_sdk_responses_stream(node_url, upstream):
    client = sdk(node_url)
    stream = await client.responses.create(model="openrouter/llama", input="hi", stream=True)
    kinds, text = [], ""
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text == "Hello from mock"
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    await client.close()


async def test_sdk_embeddings(node_url, upstream):
    client = sdk(node_url)
    result = await client.embeddings.create(model="openai/text-embedding-3-small", input=["a", "b"], dimensions=3)
    assert [item.index for item in result.data] == [0, 1]
    assert upstream.requests[0].path == "/v1/embeddings"
    assert upstream.requests[0].json["dimensions"] == 3
    await client.close()


async def test_sdk_completions_json_and_stream(node_url, upstream):
    client = sdk(node_url)
    reply = await client.completions.create(model="openai/gpt-3.5-turbo-instruct", prompt="Once", max_tokens=5)
    assert reply.choices[0].text == "Hello from mock"
    stream = await client.completions.create(model="openai/gpt-3.5-turbo-instruct", prompt="Once", stream=True)
    pieces = [chunk.choices[0].text async for chunk in stream]
    assert "".join(pieces) == "Hello from mock"
    assert [r.path for r in upstream.requests] == ["/v1/completions", "/v1/completions"]
    await client.close()


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/completions"])
async def test_streams_are_relayed_byte_for_byte(node_url, upstream, path):
    body = {"model": "openai/m", "stream": True, "input": "hi", "prompt": "hi"}
    response = await post(node_url + path, body)
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["X-Mira-Model"] == "openai/m"
    assert response.body == bytes(upstream.requests[0].sent_bytes)


async def test_a_responses_stream_that_fails_mid_way_ends_with_an_error_event(node_url, upstream):
    upstream.push(Behavior(chunks=3, drop_after_chunks=2))
    response = await post(node_url + "/v1/responses", {"model": "openai/m", "input": "hi", "stream": True})
    assert response.code == 200
    last = sse_events(response.body)[-1]
    kind, _, data = last.partition(b"\n")
    assert kind == b"event: error"
    error = json.loads(data.removeprefix(b"data: "))
    assert error["type"] == "error" and error["code"] == "upstream_connection_lost" and error["param"] is None
    assert "ended early" in error["message"]


async def test_a_completions_stream_that_fails_mid_way_ends_with_an_error_event(node_url, upstream):
    upstream.push(Behavior(chunks=3, drop_after_chunks=1))
    response = await post(node_url + "/v1/completions", {"model": "openai/m", "prompt": "hi", "stream": True})
    assert response.code == 200
    error = json.loads(sse_events(response.body)[-1].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_connection_lost"


async def test_the_sdk_raises_on_a_mid_stream_error(node_url, upstream):
    upstream.push(Behavior(chunks=3, drop_after_chunks=1))
    client = sdk(node_url)
    with pytest.raises(openai.APIError):
        stream = await client.completions.create(model="openai/m", prompt="hi", stream=True)
        async for _ in stream:
            pass
    await client.close()


async def test_a_client_disconnect_aborts_the_upstream(node_url, http_port, upstream):
    upstream.push(Behavior(chunks=5, hang_after_chunks=1))
    client = RawClient(http_port)
    await client.send("/v1/responses", {"model": "openai/m", "input": "hi", "stream": True})
    head = await client.read_head()
    assert head.status == 200
    assert await client.read_some(head)
    client.close()
    assert await upstream.await_for(lambda u: u.requests[0].closed_at is not None)


async def test_routing_strips_the_prefix_and_keeps_the_rest(node_url, upstream):
    response = await post(node_url + "/v1/embeddings", {"model": "openrouter/openai/text-embedding-3-large", "input": "x"})
    assert response.code == 200
    assert upstream.requests[0].json == {"model": "openai/text-embedding-3-large", "input": "x"}  # no provider.ignore


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")  # the mock upstream is on loopback
async def test_a_custom_provider_gets_the_endpoints_path(node_url, upstream):
    provider = {"base_url": upstream.base_url, "api_key": "sk-custom-SECRET-4242", "provider_name": "local"}
    response = await post(node_url + "/v1/responses", {"model": "my-model", "input": "hi", "model_provider": provider})
    assert response.code == 200
    seen = upstream.requests[0]
    assert seen.path == "/v1/responses" and seen.json["model"] == "my-model" and "model_provider" not in seen.json
    assert seen.headers["authorization"] == "Bearer sk-custom-SECRET-4242"


async def test_fallbacks_work_on_every_route(node_url, upstream):
    upstream.set_behavior("down", Behavior(status=503))
    body = {"model": "openai/down", "input": "hi", "fallbacks": ["openrouter/up"]}
    response = await post(node_url + "/v1/embeddings", body)
    assert response.code == 200 and response.headers["X-Mira-Model"] == "openrouter/up"
    assert "fallbacks" not in upstream.requests[-1].json


@pytest.fixture
def node_env(node_env, upstream):
    """In this module groq/ is a provider that offers none of these endpoints (a path the mock does not serve)."""
    return {**node_env, "GROQ_BASE_URL": upstream.base_url + "/no-such-api"}


async def test_a_provider_without_the_endpoint_answers_with_its_own_status(node_url, upstream):
    response = await post(node_url + "/v1/responses", {"model": "groq/llama", "input": "hi"})
    assert response.code == 404
    assert error_of(response)["message"].startswith("Error from groq API: Unknown path")


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/embeddings", "/v1/completions"])
@pytest.mark.parametrize(("body", "param"), [
    ({"input": "hi"}, "model"),
    ({"model": "gpt-4o", "input": "hi"}, "model"),
    ({"model": "nope/x", "input": "hi"}, "model"),
    ({"model": "openai/m", "fallbacks": ["bad"]}, "fallbacks[0]"),
])
async def test_a_body_must_name_a_routable_model(node_url, upstream, path, body, param):
    response = await post(node_url + path, body)
    assert response.code == 400
    assert error_of(response)["param"] == param
    assert upstream.requests == []


async def test_no_messages_rule_and_every_field_passes(node_url, upstream):
    body = {"model": "openai/m", "prompt": ["a", "b"], "suffix": "z", "echo": True, "best_of": 2, "logit_bias": {"50256": -100}}
    response = await post(node_url + "/v1/completions", body)
    assert response.code == 200
    assert upstream.requests[0].json == {**body, "model": "m"}


async def test_metrics_and_access_log_cover_the_new_routes(node_url, upstream, caplog):
    caplog.set_level("INFO", logger="mira.access")
    for path in ("/v1/responses", "/v1/embeddings", "/v1/completions"):
        assert (await post(node_url + path, {"model": "openai/m", "input": "hi", "prompt": "hi"})).code == 200
    text = (await get(node_url + "/metrics")).body.decode()
    for route in ("responses", "embeddings", "completions"):
        assert f'mira_requests_total{{route="{route}",status="200"}}' in text
    logged = [r.getMessage() for r in caplog.records if r.name == "mira.access"]
    assert any(" POST /v1/embeddings 200 " in line and "provider=openai" in line for line in logged)
