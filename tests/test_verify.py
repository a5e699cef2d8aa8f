"""POST /v1/verify over real HTTP against the mock upstream."""

from __future__ import annotations

import pytest
import ujson

from tests.helpers import RawClient, error_of, post
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test

STATEMENT = [{"role": "user", "content": "Paris is the capital of France."}]


def verdict_call(is_correct: bool, reason: str) -> Behavior:
    arguments = ujson.dumps({"is_correct": is_correct, "reason": reason})
    return Behavior(tool_call={"name": "verify_statement", "arguments": arguments})


async def verify(node_url: str, **body):
    return await post(node_url + "/v1/verify", {"messages": STATEMENT, **body})


async def test_yes_via_tool_call_with_the_forced_tool_and_system_prompt(node_url, upstream):
    upstream.set_behavior("gpt-4o", verdict_call(True, "It is the capital."))
    response = await verify(node_url, model="openai/gpt-4o")
    assert response.code == 200
    assert ujson.loads(response.body) == {"result": "yes", "content": "It is the capital."}
    assert response.headers["X-Machine-IP"]
    (seen,) = upstream.requests
    body = seen.json
    assert body["model"] == "gpt-4o"
    assert seen.headers["authorization"] == "Bearer sk-openai-SECRET-0001"
    assert body["messages"][0]["role"] == "system" and "verify_statement" in body["messages"][0]["content"]
    assert body["messages"][1:] == STATEMENT
    assert body["tool_choice"] == {"type": "function", "function": {"name": "verify_statement"}}
    (tool,) = body["tools"]
    assert tool["type"] == "function" and tool["function"]["name"] == "verify_statement"
    assert sorted(tool["function"]["parameters"]["required"]) == ["is_correct", "reason"]
    assert "model_provider" not in body and "stream" not in body


async def test_no_via_tool_call_and_the_callers_system_prompt_is_kept(node_url, upstream):
    upstream.default = verdict_call(False, "Lyon is not the capital.")
    messages = [{"role": "system", "content": "Be strict."}, *STATEMENT]
    response = await post(node_url + "/v1/verify", {"messages": messages, "model": "groq/llama"})
    assert ujson.loads(response.body) == {"result": "no", "content": "Lyon is not the capital."}
    assert upstream.requests[0].json["messages"] == messages


@pytest.mark.node_env(VERIFY_DEFAULT_MODEL="mira/judge-1")
async def test_model_defaults_to_verify_default_model(node_url, upstream):
    upstream.default = verdict_call(True, "ok")
    response = await verify(node_url)
    assert response.code == 200
    (seen,) = upstream.requests
    assert seen.json["model"] == "judge-1"
    assert seen.headers["authorization"] == "Bearer mira-SECRET-0005"


@pytest.mark.parametrize("text, result", [("  Yes \n", "yes"), ("No, it is Lyon.", "no")])
async def test_text_fallback_without_a_tool_call(node_url, upstream, text, result):
    upstream.default = Behavior(content=text)
    response = await verify(node_url, model="openai/gpt-4o")
    assert response.code == 200
    assert ujson.loads(response.body) == {"result": result, "content": text.strip()}


async def test_malformed_arguments_are_a_no_not_an_error(node_url, upstream):
    upstream.default = Behavior(tool_call={"name": "verify_statement", "arguments": '{"is_correct": tr'})
    response = await verify(node_url, model="openai/gpt-4o")
    assert response.code == 200
    answer = ujson.loads(response.body)
    assert answer["result"] == "no"
    assert "not valid JSON" in answer["content"]


async def test_consensus_of_three_with_min_yes_two(node_url, upstream):
    upstream.set_behavior("a", verdict_call(True, "right"))
    upstream.set_behavior("b", verdict_call(False, "wrong"))
    upstream.set_behavior("c", Behavior(content="yes"))
    models = ["openai/a", "groq/b", "mira/c"]
    response = await verify(node_url, models=models, min_yes=2)
    assert response.code == 200
    assert ujson.loads(response.body) == {
        "result": "yes",
        "yes_count": 2,
        "min_yes": 2,
        "results": [
            {"model": "openai/a", "result": "yes", "content": "right"},
            {"model": "groq/b", "result": "no", "content": "wrong"},
            {"model": "mira/c", "result": "yes", "content": "yes"},
        ],
    }
    assert sorted(r.json["model"] for r in upstream.requests) == ["a", "b", "c"]
    assert all(r.json["tool_choice"]["function"]["name"] == "verify_statement" for r in upstream.requests)


async def test_consensus_calls_models_concurrently_and_a_disconnect_aborts_them(node_url, http_port, upstream):
    upstream.default = Behavior(hang=True)  # no model answers until its caller goes away
    client = RawClient(http_port)
    await client.send("/v1/verify", {"messages": STATEMENT, "models": ["openai/a", "openai/b", "openai/c"]})
    assert await upstream.await_for(lambda u: len(u.requests) == 3 and u.in_flight == 3)
    client.close()
    assert await upstream.await_for(lambda u: all(r.closed_at is not None for r in u.requests) and u.in_flight == 0)


@pytest.mark.node_env(UPSTREAM_RETRIES="1")
async def test_a_failing_model_counts_as_no_with_its_error(node_url, upstream):
    upstream.set_behavior("a", verdict_call(True, "right"))
    upstream.set_behavior("b", Behavior(status=503, error_message="overloaded"))
    upstream.set_behavior("c", Behavior(tool_call={"name": "verify_statement", "arguments": "[]"}))
    response = await verify(node_url, models=["openai/a", "openai/b", "openai/c"])
    answer = ujson.loads(response.body)
    assert response.code == 200
    assert (answer["result"], answer["yes_count"], answer["min_yes"]) == ("no", 1, 2)
    failed = answer["results"][1]
    assert failed["result"] == "no"
    assert failed["content"] == "error: Error from openai API: overloaded"
    assert "not a JSON object" in answer["results"][2]["content"]
    assert sum(1 for r in upstream.requests if r.json["model"] == "b") == 2  # retried once
    assert "SECRET" not in response.body.decode()


async def test_a_single_failing_model_is_the_requests_error(node_url, upstream):
    upstream.default = Behavior(status=400, error_message="no such model")
    response = await verify(node_url, model="openai/nope")
    assert response.code == 400
    assert error_of(response)["message"] == "Error from openai API: no such model"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": STATEMENT, "models": ["openai/a", "openai/b"], "min_yes": 3}, "min_yes"),
        ({"messages": STATEMENT, "models": ["openai/a", "openai/b"], "min_yes": 0}, "min_yes"),
        ({"messages": STATEMENT, "models": ["openai/a", "unknown/b"]}, "models[1]"),
        ({"messages": STATEMENT, "model": "no-prefix"}, "model"),
        ({"messages": []}, "messages"),
        ([1, 2], None),
    ],
)
async def test_bad_input_is_400_before_any_call(node_url, upstream, body, param):
    response = await post(node_url + "/v1/verify", body)
    assert response.code == 400
    assert error_of(response)["param"] == param
    assert upstream.requests == []


async def test_invalid_json_is_400(node_url, upstream):
    response = await post(node_url + "/v1/verify", b"{not json")
    assert response.code == 400
    assert error_of(response)["type"] == "invalid_request_error"


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")  # the mock upstream is on loopback
async def test_custom_provider(node_url, upstream):
    upstream.default = verdict_call(True, "custom ok")
    provider = {"base_url": upstream.base_url, "api_key": "sk-custom-SECRET-9", "provider_name": "mine"}
    response = await verify(node_url, model="some/model", model_provider=provider)
    assert ujson.loads(response.body) == {"result": "yes", "content": "custom ok"}
    (seen,) = upstream.requests
    assert seen.json["model"] == "some/model"
    assert seen.headers["authorization"] == "Bearer sk-custom-SECRET-9"
    assert "model_provider" not in seen.json


@pytest.mark.node_env(ALLOW_CUSTOM_PROVIDERS="false")
async def test_custom_provider_refused_when_disabled(node_url, upstream):
    provider = {"base_url": upstream.base_url, "api_key": "k"}
    response = await verify(node_url, model="some/model", model_provider=provider)
    assert response.code == 400
    assert error_of(response)["param"] == "model_provider"
