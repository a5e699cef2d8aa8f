"""POST /v1/chat/completions: the proxy, through the OpenAI SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import email.utils
import time

import openai
import pytest
import ujson

from tests.helpers import USER, RawClient, chat_body, closed_port, dechunk, error_of, get, post, sse_events
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test


def sdk(node_url: str, **kwargs) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="unused", max_retries=0, **kwargs)


def sync_sdk(node_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=node_url + "/v1", api_key="unused", max_retries=0)


# -- the OpenAI SDK as a client ------------------------------------------------------------


async def test_sdk_json_completion(node_url, upstream):
    async with sdk(node_url) as client:
        reply = await client.chat.completions.create(model="openai/gpt-4o", messages=USER)
    assert reply.choices[0].message.content == "Hello from mock"
    assert reply.model == "gpt-4o"
    (seen,) = upstream.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.json["model"] == "gpt-4o"
    assert seen.headers["authorization"] == "Bearer sk-openai-SECRET-0001"
    assert seen.json["messages"] == USER


async def test_sync_sdk_from_a_thread(node_url, upstream):
    def call() -> str:
        with sync_sdk(node_url) as client:
            reply = client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=USER)
            return reply.choices[0].message.content

    assert await asyncio.get_running_loop().run_in_executor(None, call) == "Hello from mock"
    assert upstream.requests[0].headers["authorization"] == "Bearer gsk-SECRET-0004"


async def test_sdk_stream_reassembles_content(node_url, upstream):
    upstream.default = Behavior(content="The quick brown fox jumps", chunks=5)
    async with sdk(node_url) as client:
        stream = await client.chat.completions.create(
            model="openai/gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "The quick brown fox jumps"
    assert len(pieces) == 5
    assert upstream.requests[0].json["stream_options"] == {"include_usage": True}


async def test_sdk_raises_upstream_errors_with_their_status_and_message(node_url, upstream):
    upstream.push(Behavior(status=404, error_message="The model `nope` does not exist"))
    async with sdk(node_url) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="openai/nope", messages=USER)
    assert caught.value.status_code == 404
    assert "Error from openai API: The model `nope` does not exist" in caught.value.message


async def test_sdk_stream_raises_on_an_upstream_error_before_the_first_byte(node_url, upstream):
    upstream.push(Behavior(status=400, error_message="bad temperature"))
    async with sdk(node_url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="openai/gpt-4o", messages=USER, stream=True)
    assert "Error from openai API: bad temperature" in caught.value.message


async def test_sdk_stream_raises_when_the_upstream_breaks_mid_stream(node_url, upstream):
    upstream.default = Behavior(chunks=4, drop_after_chunks=2)
    async with sdk(node_url) as client:
        stream = await client.chat.completions.create(model="openai/gpt-4o", messages=USER, stream=True)
        received = []
        with pytest.raises(openai.APIError) as caught:
            async for chunk in stream:
                received.append(chunk)
    assert len(received) == 2
    assert "ended early" in str(caught.value)
    assert len(upstream.requests) == 1  # never retried once bytes reached the client


async def test_sdk_validation_error(node_url, upstream):
    async with sdk(node_url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model="openai/gpt-4o", messages=[{"role": "system", "content": "x"}])
    assert "At least one user message is required" in caught.value.message
    assert upstream.requests == []


# -- routing and pass-through -----------------------------------------------------------------


async def test_every_field_reaches_the_upstream_unchanged(node_url, upstream):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        ]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"sky\"}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "blue"},
        {"role": "user", "content": "And now? ünïcödé / slashes"},
    ]
    extra = {
        "temperature": 0.25, "max_tokens": 17, "top_p": 0.9, "stop": ["\n\n", "END"], "n": 2, "seed": 42,
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}}, "parallel_tool_calls": False,
        "logprobs": True, "top_logprobs": 3, "user": "user-1", "frequency_penalty": 0.5, "presence_penalty": -0.5,
        "logit_bias": {"50256": -100}, "metadata": {"k": "v"}, "some_future_field": {"nested": [1, 2.5, None, True]},
        "max_completion_tokens": 9, "reasoning_effort": "low",
    }
    response = await post(node_url + "/v1/chat/completions", {"model": "openai/gpt-4o", "messages": messages, **extra})
    assert response.code == 200, response.body
    sent = upstream.requests[0].json
    assert sent == {"model": "gpt-4o", "messages": messages, **extra}


async def test_a_lone_surrogate_in_a_string_is_passed_on_escaped(node_url, upstream):
    raw = b'{"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "odd \\ud800 text"}]}'
    response = await post(node_url + "/v1/chat/completions", raw)
    assert response.code == 200, response.body
    assert upstream.requests[0].json["messages"][0]["content"] == "odd \ud800 text"


async def test_openrouter_model_keeps_its_slashes(node_url, upstream):
    response = await post(node_url + "/v1/chat/completions", chat_body("openrouter/anthropic/claude-3.5-sonnet"))
    assert response.code == 200
    seen = upstream.requests[0]
    assert seen.json["model"] == "anthropic/claude-3.5-sonnet"
    assert seen.headers["authorization"] == "Bearer sk-or-SECRET-0002"
    assert "provider" not in seen.json


@pytest.mark.node_env(OPENROUTER_IGNORED_PROVIDERS="Azure, DeepInfra")
async def test_openrouter_ignored_providers(node_url, upstream):
    await post(node_url + "/v1/chat/completions", chat_body("openrouter/meta-llama/llama-3.1-70b-instruct"))
    await post(node_url + "/v1/chat/completions", chat_body("openrouter/x/y", provider={"order": ["Groq"]}))
    await post(node_url + "/v1/chat/completions", chat_body("openai/gpt-4o"))
    first, second, third = (r.json for r in upstream.requests)
    assert first["provider"] == {"ignore": ["Azure", "DeepInfra"]}
    assert second["provider"] == {"order": ["Groq"]}  # the request's own choice wins
    assert "provider" not in third


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")  # the mock upstream is on loopback
async def test_custom_model_provider(node_url, upstream):
    body = chat_body("my-local-model", model_provider={
        "base_url": upstream.base_url, "api_key": "sk-custom-SECRET-7777", "provider_name": "local"})
    response = await post(node_url + "/v1/chat/completions", body)
    assert response.code == 200
    seen = upstream.requests[0]
    assert seen.json["model"] == "my-local-model"  # sent as is
    assert "model_provider" not in seen.json
    assert seen.headers["authorization"] == "Bearer sk-custom-SECRET-7777"


@pytest.mark.node_env(ALLOW_CUSTOM_PROVIDERS="false")
async def test_custom_provider_refused_when_disabled(node_url, upstream):
    body = chat_body("m", model_provider={"base_url": upstream.base_url, "api_key": "k"})
    response = await post(node_url + "/v1/chat/completions", body)
    assert response.code == 400
    assert error_of(response)["param"] == "model_provider"
    assert upstream.requests == []


async def test_custom_provider_must_be_http(node_url, upstream):
    for url in ("file:///etc/passwd", "ftp://example.test/v1", "not a url", ""):
        response = await post(node_url + "/v1/chat/completions", chat_body("m", model_provider={"base_url": url}))
        assert response.code == 400, url
        assert error_of(response)["param"] == "model_provider.base_url"
    assert upstream.requests == []


# -- bad input ------------------------------------------------------------------------------------

BAD_BODIES = [
    (b"{not json", "not valid JSON", None),
    (b"", "empty", None),
    (b"[1, 2]", "must be a JSON object", None),
    (b'"text"', "must be a JSON object", None),
    (ujson.dumps({"messages": USER}), "'model' is required", "model"),
    (ujson.dumps({"model": "", "messages": USER}), "'model' is required", "model"),
    (ujson.dumps({"model": 5, "messages": USER}), "must be a string", "model"),
    (ujson.dumps({"model": "gpt-4o", "messages": USER}), "PROVIDER/MODEL", "model"),
    (ujson.dumps({"model": "acme/gpt-4o", "messages": USER}), "Unknown provider 'acme'", "model"),
    (ujson.dumps({"model": "openai/", "messages": USER}), "PROVIDER/MODEL", "model"),
    (ujson.dumps({"model": "openai/gpt-4o"}), "At least one user message is required", "messages"),
    (ujson.dumps({"model": "openai/gpt-4o", "messages": []}), "At least one user message is required", "messages"),
    (ujson.dumps({"model": "openai/gpt-4o", "messages": [{"role": "assistant", "content": "hi"}]}),
     "At least one user message is required", "messages"),
    (ujson.dumps({"model": "openai/gpt-4o", "messages": "hello"}), "must be an array", "messages"),
    (ujson.dumps({"model": "openai/gpt-4o", "messages": ["hello"]}), "must be an object", "messages[0]"),
    (ujson.dumps({"model": "openai/gpt-4o", "messages": [{"content": "x"}]}), "role", "messages[0].role"),
    (ujson.dumps(chat_body(temperature="hot")), "'temperature' must be of type", "temperature"),
    (ujson.dumps(chat_body(max_tokens=1.5)), "'max_tokens' must be of type integer", "max_tokens"),
    (ujson.dumps(chat_body(stream="yes")), "'stream' must be of type boolean", "stream"),
    (ujson.dumps(chat_body(n=True)), "'n' must be of type integer", "n"),
    (ujson.dumps(chat_body(tools={"a": 1})), "'tools' must be of type array", "tools"),
    (ujson.dumps(chat_body(model_provider="x")), "must be an object", "model_provider"),
]


@pytest.mark.parametrize("raw, message, param", BAD_BODIES)
async def test_bad_input_is_a_clear_400(node_url, upstream, raw, message, param):
    response = await post(node_url + "/v1/chat/completions", raw)
    assert response.code == 400
    error = error_of(response)
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert upstream.requests == []


async def test_wrong_method_and_unknown_path(node_url):
    response = await get(node_url + "/v1/chat/completions")
    assert response.code == 405
    assert response.headers["Allow"] == "POST, OPTIONS"
    assert error_of(response)["type"] == "invalid_request_error"
    response = await get(node_url + "/v2/nothing")
    assert response.code == 404
    assert error_of(response)["type"] == "not_found_error"
    response = await post(node_url + "/v1/unknown", {})
    assert response.code == 404


# -- upstream failures ------------------------------------------------------------------------------


async def test_upstream_status_and_message_come_back(node_url, upstream):
    for status, sdk_type in ((400, "invalid_request_error"), (401, "invalid_request_error"), (422, "invalid_request_error")):
        upstream.push(Behavior(status=status, error_message=f"upstream says {status}"))
        response = await post(node_url + "/v1/chat/completions", chat_body())
        assert response.code == status
        error = error_of(response)
        assert error["message"] == f"Error from openai API: upstream says {status}"
        assert error["type"] == sdk_type


async def test_upstream_error_with_a_non_json_body(node_url, upstream):
    upstream.push(Behavior(status=500, raw_body=b"<html>Internal oops</html>", content_type="text/html"))
    upstream.push(Behavior(status=500, raw_body=b"<html>Internal oops</html>", content_type="text/html"))
    upstream.push(Behavior(status=500, raw_body=b"<html>Internal oops</html>", content_type="text/html"))
    response = await post(node_url + "/v1/chat/completions", chat_body("anthropic/claude"))
    assert response.code == 500
    assert error_of(response)["message"] == "Error from anthropic API: <html>Internal oops</html>"
    assert len(upstream.requests) == 1  # 500 is not a retried status


async def test_unreachable_upstream_is_502(node_url, upstream, app):
    ctx = app.settings["ctx"]
    target = ctx.registry.make_target("openai", f"http://127.0.0.1:{closed_port()}/v1", "k")
    ctx.registry._targets["openai"]["/chat/completions"] = target
    response = await post(node_url + "/v1/chat/completions", chat_body())
    assert response.code == 502
    error = error_of(response)
    assert error["message"] == "Could not connect to openai API"
    async with sdk(node_url) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="openai/gpt-4o", messages=USER, stream=True)
    assert caught.value.status_code == 502


@pytest.mark.node_env(UPSTREAM_TIMEOUT="0.3", UPSTREAM_RETRIES="0")
async def test_silent_upstream_is_504(node_url, upstream):
    upstream.default = Behavior(hang=True)
    response = await post(node_url + "/v1/chat/completions", chat_body())
    assert response.code == 504
    assert error_of(response)["message"] == "openai API did not answer in time"
    assert await upstream.await_for(lambda u: u.requests and u.requests[0].closed_at is not None)


# -- SSE framing and timing ----------------------------------------------------------------------------


async def test_sse_headers_framing_and_comments(node_url, http_port, upstream):
    upstream.default = Behavior(chunks=3, comments=[": OPENROUTER PROCESSING", ": OPENROUTER PROCESSING"])
    client = RawClient(http_port)
    await client.send("/v1/chat/completions", chat_body("openrouter/a/b", stream=True), {"X-Request-ID": "req-123"})
    head = await client.read_head()
    response = await client.read_all(head)
    client.close()
    assert head.status == 200
    assert head.headers["content-type"] == "text/event-stream"
    assert head.headers["cache-control"] == "no-cache"
    assert head.headers["x-accel-buffering"] == "no"
    assert head.headers["x-request-id"] == "req-123"
    assert head.headers["x-machine-ip"]
    assert head.headers["transfer-encoding"] == "chunked"
    payload = dechunk(response.body)
    assert payload.startswith(b": OPENROUTER PROCESSING\n: OPENROUTER PROCESSING\n")  # untouched
    events = sse_events(payload.split(b"\n", 2)[2])
    assert events[-1] == b"data: [DONE]"
    deltas = [ujson.loads(e[6:]) for e in events[:-1]]
    assert "".join(d["choices"][0]["delta"].get("content") or "" for d in deltas) == "Hello from mock"


async def test_first_chunk_arrives_before_the_upstream_sends_its_last(node_url, http_port, upstream):
    upstream.default = Behavior(chunks=5, chunk_delay=0.05)
    client = RawClient(http_port)
    # the client asks for usage itself, so every upstream event is the client's
    await client.send("/v1/chat/completions", chat_body(stream=True, stream_options={"include_usage": True}))
    head = await client.read_head()
    response = await client.read_all(head)
    client.close()
    first_arrival = response.reads[0][0]
    (seen,) = upstream.requests
    assert first_arrival < seen.sent_times[-1]
    # every upstream event reached the client in a read of its own: nothing was re-buffered
    data_reads = [data for _, data in response.reads if b"data:" in data]
    assert len(data_reads) == seen.chunks_sent


async def test_request_id_is_echoed_or_made(node_url):
    response = await get(node_url + "/health", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    first = await get(node_url + "/health")
    second = await get(node_url + "/health")
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]
    odd = await get(node_url + "/health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert odd.headers["X-Request-ID"] != "bad id\twith spaces"


async def test_answers_carry_a_date_and_no_server_header(node_url, upstream):
    for response in (await post(node_url + "/v1/chat/completions", chat_body()), await get(node_url + "/health"),
                     await get(node_url + "/no/such/path")):
        assert "Server" not in response.headers  # the node's version is --version's, not every caller's
        sent = email.utils.parsedate_to_datetime(response.headers["Date"])  # RFC 9110's format, in GMT
        assert sent.tzinfo is not None and sent.utcoffset().total_seconds() == 0
        assert abs(sent.timestamp() - time.time()) < 5


async def test_machine_ip_header_on_chat_only(node_url, upstream):
    chat = await post(node_url + "/v1/chat/completions", chat_body())
    assert chat.headers["X-Machine-IP"]
    health = await get(node_url + "/health")
    assert "X-Machine-IP" not in health.headers


@pytest.mark.node_env(MACHINE_IP="203.0.113.7")
async def test_machine_ip_from_settings(node_url, upstream):
    response = await post(node_url + "/v1/chat/completions", chat_body("openai/x", messages=[]))
    assert response.code == 400
    assert response.headers["X-Machine-IP"] == "203.0.113.7"


# -- the small endpoints ---------------------------------------------------------------------------------


async def test_health_and_models(node_url, ctx):
    response = await get(node_url + "/health")
    assert response.code == 200
    providers = {name: "up" for name in ("openai", "openrouter", "anthropic", "groq", "mira", "ollama")}
    assert ujson.loads(response.body) == {"status": "ok", "version": "9.9.9-test", "providers": providers, "router": "standalone"}
    models = ujson.loads((await get(node_url + "/v1/models")).body)
    assert models["object"] == "list"
    assert {"id": "openai/gpt-4o", "object": "model", "owned_by": "openai"} in models["data"]
    async with sdk(node_url) as client:
        listed = [m.id async for m in client.models.list()]
    assert listed == ctx.models


@pytest.mark.node_env(CORS_ORIGINS="https://app.example, https://other.example")
async def test_cors_listed_origins(node_url):
    from tornado.httpclient import AsyncHTTPClient

    preflight = await AsyncHTTPClient().fetch(
        node_url + "/v1/chat/completions", method="OPTIONS", raise_error=False,
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    other = await get(node_url + "/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_cors_default_is_any_origin(node_url):
    from tornado.httpclient import AsyncHTTPClient

    preflight = await AsyncHTTPClient().fetch(node_url + "/anything/at/all", method="OPTIONS", raise_error=False)
    assert preflight.code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    response = await get(node_url + "/health")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
