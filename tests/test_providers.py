"""The models the Mira network sends: the ``ollama/`` provider and DEFAULT_PROVIDER (SPEC "Providers")."""

from __future__ import annotations

import os

import openai
import pytest
import ujson

from config import ConfigError, load_settings
from tests.conftest import NODE_VARIABLES, SECRETS
from tests.helpers import chat_body, error_of, post

pytestmark = pytest.mark.gen_test(timeout=30)

CHAT = "/v1/chat/completions"


async def test_ollama_models_go_to_ollama(node_url, upstream):
    response = await post(node_url + CHAT, chat_body("ollama/llama3.1"))
    assert response.code == 200
    (seen,) = upstream.requests
    assert seen.json["model"] == "llama3.1"
    assert seen.headers["authorization"] == f"Bearer {SECRETS['OLLAMA_API_KEY']}"
    assert response.headers["X-Mira-Model"] == "ollama/llama3.1"


@pytest.mark.node_env(OLLAMA_API_KEY="")
async def test_ollama_needs_no_key(node_url, upstream):
    csv = "question\nIs water wet?\n"
    response = await post(node_url + "/v1/eval", {"csv": csv, "models": ["ollama/llama3.1"], "eval_system_prompt": "yes"})
    assert response.code == 200
    (seen,) = upstream.requests
    assert "authorization" not in seen.headers


@pytest.mark.node_env(DEFAULT_PROVIDER="openrouter")
async def test_a_model_naming_no_provider_goes_whole_to_the_default(node_url, upstream):
    for model in ("meta-llama/llama-3.3-70b-instruct", "gpt-4o"):
        upstream.reset()
        response = await post(node_url + CHAT, chat_body(model))
        assert response.code == 200, model
        assert upstream.requests[0].json["model"] == model
        assert upstream.requests[0].headers["authorization"] == f"Bearer {SECRETS['OPENROUTER_API_KEY']}"
        assert response.headers["X-Mira-Model"] == f"openrouter/{model}"
    upstream.reset()
    response = await post(node_url + CHAT, chat_body("groq/llama-3.1-8b"))  # a provider prefix still routes
    assert response.code == 200
    assert upstream.requests[0].json["model"] == "llama-3.1-8b"
    client = openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="dummy", max_retries=0)
    reply = await client.chat.completions.create(model="qwen/qwen-2.5", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    assert upstream.requests[-1].json["model"] == "qwen/qwen-2.5"


async def test_without_a_default_an_unknown_provider_is_400(node_url, upstream):
    response = await post(node_url + CHAT, chat_body("meta-llama/llama-3.3-70b-instruct"))
    assert response.code == 400
    assert error_of(response)["code"] == "unknown_provider"
    assert "ollama" in error_of(response)["message"]
    assert upstream.requests == []
    client = openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="dummy", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "PROVIDER/MODEL" in raised.value.message


@pytest.mark.node_env(DEFAULT_PROVIDER="openrouter")
async def test_verify_and_fallbacks_use_the_default_too(node_url, upstream):
    response = await post(node_url + "/v1/verify", {"messages": [{"role": "user", "content": "2+2=4"}],
                                                      "model": "meta-llama/llama-3.3-70b-instruct"})
    assert response.code == 200
    assert upstream.requests[0].json["model"] == "meta-llama/llama-3.3-70b-instruct"
    assert "result" in ujson.loads(response.body)


def test_default_provider_must_name_a_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NODE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ENV_FILE", os.devnull)
    monkeypatch.setenv("DEFAULT_PROVIDER", "nobody")
    with pytest.raises(ConfigError, match="DEFAULT_PROVIDER"):
        load_settings()
    monkeypatch.setenv("DEFAULT_PROVIDER", "ollama")
    assert load_settings().default_provider == "ollama"
