"""``openapi.json`` against the node that serves it, and ``GET /metrics``.

The document must be valid OpenAPI, name exactly the routes the app serves
(with the methods their handlers implement), be served byte for byte, and
describe what the node really answers: responses of each endpoint are
validated against the document's own schemas and headers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import ujson
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from tornado.web import RequestHandler

import server
from tests.helpers import USER, chat_body, get, post
from tests.mock_upstream import Behavior

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT_BYTES = (ROOT / "openapi.json").read_bytes()
DOCUMENT = json.loads(DOCUMENT_BYTES)
DOCUMENT_URI = "urn:mira:openapi.json"
REGISTRY = Registry().with_resource(DOCUMENT_URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012))
HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head")

# The node's endpoints, as the README lists them (OPTIONS is documented on each of them).
SPEC_PATHS = {
    "/health", "/v1/models", "/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses",
    "/v1/embeddings", "/v1/completions", "/v1/verify", "/v1/eval", "/metrics", "/openapi.json", "/status", "/status.json",
}
# The routes of Anthropic's Messages API: Anthropic's error shape, and the service key as x-api-key too.
MESSAGES_PATHS = {"/v1/messages", "/v1/messages/count_tokens"}
# MODEL_ALIASES_FILE of every node of this module: aliases are listed by /v1/models and accepted as a model.
ALIASES = {"claude-sonnet-4-6": "anthropic/claude-sonnet-4-6", "fast": "openai/gpt-x"}
ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}


@pytest.fixture
def node_env(node_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The conftest environment, plus MODEL_ALIASES_FILE (a test's own ``node_env`` marker may still override it)."""
    aliases = tmp_path / "aliases.json"
    aliases.write_text(json.dumps(ALIASES))
    return {"MODEL_ALIASES_FILE": str(aliases), **node_env}


# -- the document itself --------------------------------------------------------------------


def pointer(*parts: str) -> str:
    """A JSON pointer fragment into the document."""
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def resolve(node: dict[str, Any]) -> tuple[dict[str, Any], list[str] | None]:
    """Follow a local ``$ref``; also return the parts of the pointer it led to."""
    ref = node.get("$ref")
    if ref is None:
        return node, None
    parts = [p.replace("~1", "/").replace("~0", "~") for p in ref.removeprefix("#/").split("/")]
    target: Any = DOCUMENT
    for part in parts:
        target = target[part]
    return target, parts


def response_of(path: str, method: str, status: int) -> tuple[dict[str, Any], list[str]]:
    """The documented response (and where it lives), or ``default`` when the status is not listed."""
    responses = DOCUMENT["paths"][path][method]["responses"]
    key = str(status) if str(status) in responses else "default"
    assert key in responses, f"{method.upper()} {path}: status {status} is not documented"
    response, parts = resolve(responses[key])
    return response, parts or ["paths", path, method, "responses", key]


def validator_for(parts: list[str]) -> Draft202012Validator:
    """A validator of the schema at ``parts`` of the document, ``$ref`` resolved within it."""
    return Draft202012Validator({"$ref": DOCUMENT_URI + "#" + pointer(*parts)}, registry=REGISTRY)


def check_response(path: str, method: str, response: Any) -> None:
    """Assert that an HTTP response matches the document: media type, body schema, headers."""
    documented, parts = response_of(path, method, response.code)
    for name, header in documented.get("headers", {}).items():
        header, _ = resolve(header)
        value = response.headers.get(name)
        if header.get("required"):
            assert value is not None, f"{method.upper()} {path} {response.code}: header {name} missing"
        if value is not None:
            Draft202012Validator(header["schema"]).validate(value)
    content = documented.get("content")
    if not content:
        assert not response.body
        return
    media = response.headers.get("Content-Type", "").split(";")[0].strip()
    keys = {key.split(";")[0].strip(): key for key in content}
    assert media in keys, f"{method.upper()} {path} {response.code}: {media} not among {list(content)}"
    if media == "application/json":
        validator_for([*parts, "content", keys[media], "schema"]).validate(ujson.loads(response.body))


def sse_data(body: bytes) -> list[str]:
    """The ``data`` of each event of a server-sent event stream."""
    events = []
    for block in body.decode().split("\n\n"):
        data = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events


def test_document_is_valid_openapi() -> None:
    validate_spec(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.")


def test_document_names_every_spec_endpoint() -> None:
    assert set(DOCUMENT["paths"]) == SPEC_PATHS
    for path, item in DOCUMENT["paths"].items():
        assert "options" in item, f"{path}: no CORS preflight documented"
        assert resolve(item["options"]["responses"]["204"])[0]["headers"]["Access-Control-Allow-Origin"]


def served_routes(app: Any) -> dict[str, type[RequestHandler]]:
    """Path pattern -> handler class of every route the app serves."""
    routes = {}
    for rule in app.wildcard_router.rules:
        routes[rule.matcher.regex.pattern.removesuffix("$")] = rule.target
    return routes


def implemented_methods(handler: type[RequestHandler]) -> set[str]:
    return {m for m in HTTP_METHODS if getattr(handler, m) is not getattr(RequestHandler, m)}


def test_served_routes_and_documented_paths_are_the_same(app: Any) -> None:
    served = served_routes(app)
    from_modules = {route[0] for module in server.ROUTE_MODULES for route in module.routes}
    assert set(served) == from_modules
    assert set(served) == set(DOCUMENT["paths"])
    for path, handler in served.items():
        documented = {m for m in DOCUMENT["paths"][path] if m in HTTP_METHODS}
        assert implemented_methods(handler) == documented, path


def test_every_error_response_has_the_error_shape_of_its_api() -> None:
    """OpenAI's shape everywhere, but Anthropic's on the Messages routes (responses of their own, not OpenAI's)."""
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                ref = response.get("$ref", "")
                response, _ = resolve(response)
                assert "X-Request-ID" in response.get("headers", {}), (path, method, status)
                if status.isdigit() and int(status) < 400 or path == "/health":
                    continue
                anthropic = path in MESSAGES_PATHS
                error_ref = "#/components/schemas/AnthropicError" if anthropic else "#/components/schemas/Error"
                assert response["content"]["application/json"]["schema"] == {"$ref": error_ref}, (path, method, status)
                assert ref.startswith("#/components/responses/Anthropic") == anthropic, (path, method, status)


def test_v1_operations_take_the_optional_bearer_key_and_others_need_none() -> None:
    schemes = DOCUMENT["components"]["securitySchemes"]
    scheme = schemes["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer") and "SERVICE_API_KEY" in scheme["description"]
    scheme = schemes["apiKeyAuth"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "x-api-key")
    assert "SERVICE_API_KEY" in scheme["description"]
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            security = operation.get("security", DOCUMENT["security"])
            if (path.startswith("/v1/") or path == "/status.json") and method != "options":
                assert {"bearerAuth": []} in security and {} in security, (path, method)
                # x-api-key is taken on the Messages routes and /v1/models (Anthropic's clients send it) only
                assert ({"apiKeyAuth": []} in security) == (path in {*MESSAGES_PATHS, "/v1/models"}), (path, method)
            else:
                assert security == [], (path, method)


def test_messages_operations_take_claude_codes_parameters() -> None:
    for path in MESSAGES_PATHS:
        operation = DOCUMENT["paths"][path]["post"]
        parameters = {(p["in"], p["name"].lower()): p for p in (resolve(p)[0] for p in operation["parameters"])}
        expected = {
            ("query", "beta"),
            ("header", "anthropic-version"),
            ("header", "anthropic-beta"),
            ("header", "x-claude-code-session-id"),
            ("header", "x-request-id"),
        }
        assert set(parameters) == expected, path
        assert not any(p.get("required") for p in parameters.values()), path
        Draft202012Validator(parameters[("query", "beta")]["schema"]).validate("true")
    listing = DOCUMENT["paths"]["/v1/models"]["get"]["parameters"]
    assert any(resolve(p)[0]["name"] == "anthropic-version" for p in listing)


def test_request_schemas_accept_the_spec_examples_and_pass_through_fields() -> None:
    chat = validator_for(["components", "schemas", "ChatCompletionRequest"])
    chat.validate(
        {
            "model": "openrouter/anthropic/claude-3.5-sonnet",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "look", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            ],
            "temperature": 0.2,
            "tools": [{"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}],
            "provider": {"order": ["x"]},
            "some_future_field": [1, 2],
        }
    )
    chat.validate({"model": "my-model", "messages": USER, "model_provider": {"base_url": "http://127.0.0.1:1/v1"}})
    assert not chat.is_valid({"model": "gpt-4o", "messages": USER})  # no provider prefix
    assert not chat.is_valid({"model": "openai/gpt-4o", "messages": [{"role": "system", "content": "x"}]})
    verify = validator_for(["components", "schemas", "VerifyRequest"])
    verify.validate({"messages": USER})
    verify.validate({"messages": USER, "models": ["openai/a", "groq/b"], "min_yes": 2})
    assert not verify.is_valid({"messages": USER, "model": "openai/a", "models": ["openai/a"]})
    assert not verify.is_valid({"messages": USER, "min_yes": 1})
    evaluation = validator_for(["components", "schemas", "EvalRequest"])
    evaluation.validate({"csv": "q\nhi\n", "models": ["openai/a"], "eval_system_prompt": "Answer yes or no."})


def test_messages_request_schemas_accept_claude_code_bodies_and_pass_through_fields() -> None:
    messages = validator_for(["components", "schemas", "MessagesRequest"])
    body = {
        "model": "claude-sonnet-4-6",  # an alias, as Claude Code sends it
        "max_tokens": 32000,
        "stream": True,
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc"},
                   {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "List the files"}]},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                              {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.py"}]},
        ],
        "tools": [{"name": "Bash", "input_schema": {"type": "object"}, "defer_loading": True}],
        "metadata": {"user_id": '{"session_id": "s-1"}'},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": []},
        "output_config": {"effort": "high"},
    }
    messages.validate(body)
    messages.validate({"model": "anthropic/claude-x", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    custom = {"base_url": "http://127.0.0.1:1/v1", "api": "anthropic"}
    messages.validate({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "model_provider": custom})
    wrong: list[dict[str, Any]] = [{"max_tokens": 0}, {"max_tokens": 1.5}, {"messages": []}, {"model": ""}, {"stream": "yes"}]
    for bad in wrong:
        assert not messages.is_valid({**body, **bad}), bad
    assert not messages.is_valid({key: value for key, value in body.items() if key != "max_tokens"})
    # A Messages provider takes any block or tool; a translated provider only those with a chat counterpart.
    document = [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}]
    server_tool = [{"type": "web_search_20250305", "name": "web_search"}]
    for extra in ({"messages": document}, {"tools": server_tool}, {"system": [{"type": "document"}]}):
        messages.validate({**body, **extra, "model": "anthropic/claude-x"})
        messages.validate({**body, **extra, "model": "x", "model_provider": custom})
        assert not messages.is_valid({**body, **extra, "model": "openai/gpt-x"}), extra
        assert not messages.is_valid({**body, **extra}), extra  # the alias is held to the translatable form
    count = validator_for(["components", "schemas", "CountTokensRequest"])
    count.validate({"model": "openai/gpt-x", "messages": [{"role": "user", "content": "Hi"}], "tools": []})
    assert not count.is_valid({"model": "openai/gpt-x", "messages": []})
    assert not count.is_valid({"messages": [{"role": "user", "content": "Hi"}]})
    error = validator_for(["components", "schemas", "AnthropicError"])
    error.validate({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "r"})
    error.validate({"type": "error", "error": {"type": "rate_limit_error", "message": "slow", "code": "rate_limited"}})
    assert not error.is_valid({"error": {"message": "x", "type": "y", "param": None, "code": None}})  # OpenAI's shape


# -- served ---------------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_openapi_json_is_served_as_the_file(node_url: str) -> None:
    response = await get(node_url + "/openapi.json")
    assert response.code == 200
    assert response.body == DOCUMENT_BYTES
    assert response.headers["Content-Type"].startswith("application/json")
    check_response("/openapi.json", "get", response)


@pytest.mark.gen_test
@pytest.mark.node_env(SERVICE_API_KEY="svc-key-123")
async def test_meta_endpoints_need_no_service_key(node_url: str) -> None:
    for path in ("/openapi.json", "/metrics", "/health"):
        response = await get(node_url + path)
        assert response.code == 200, path
    response = await get(node_url + "/v1/models")
    assert response.code == 401
    check_response("/v1/models", "get", response)


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of metric family ``name`` in an exposition: labels -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


async def scrape(node_url: str) -> str:
    response = await get(node_url + "/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    check_response("/metrics", "get", response)
    return response.body.decode()


@pytest.mark.gen_test
async def test_metrics_count_requests(node_url: str) -> None:
    key = (("route", "health"), ("status", "200"))
    before = samples(await scrape(node_url), "mira_requests_total").get(key, 0)
    assert (await get(node_url + "/health")).code == 200
    after = samples(await scrape(node_url), "mira_requests_total")
    assert after[key] == before + 1


@pytest.mark.gen_test
async def test_metrics_count_upstream_calls(node_url: str, upstream: Any) -> None:
    key = (("outcome", "200"), ("provider", "groq"))
    before = samples(await scrape(node_url), "mira_upstream_calls_total").get(key, 0)
    assert (await post(node_url + "/v1/chat/completions", chat_body("groq/mock-model"))).code == 200
    text = await scrape(node_url)
    assert samples(text, "mira_upstream_calls_total")[key] == before + 1
    assert samples(text, "mira_requests_total")[(("route", "chat"), ("status", "200"))] >= 1
    assert "mira_upstream_duration_seconds_bucket" in text


def test_metrics_aggregate_the_workers_in_multiprocess_mode(spawn_node: Any) -> None:
    """WORKERS=2 sets PROMETHEUS_MULTIPROC_DIR: /metrics sums what every worker counted."""
    import urllib.request

    node = spawn_node({"WORKERS": "2"})
    for index in (0, 1):  # each logs this once its socket listens
        assert node.wait_for_line(rf"worker {index} serving"), node.output
    for _ in range(6):
        with urllib.request.urlopen(node.url + "/health", timeout=10) as response:
            assert response.status == 200
    # A worker applies a loop turn's metric updates at the end of that turn, so the other worker's scrape
    # may come a few microseconds before the last /health is counted: scrape until it is (a bounded loop).
    counted = None
    for _ in range(200):
        with urllib.request.urlopen(node.url + "/metrics", timeout=10) as response:
            assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
            text = response.read().decode()
        counted = samples(text, "mira_requests_total").get((("route", "health"), ("status", "200")))
        if counted == 6:
            break
    assert counted == 6


# -- responses against the document's schemas -----------------------------------------------------


@pytest.mark.gen_test
async def test_health_and_models_match_the_document(node_url: str, ctx: Any) -> None:
    check_response("/health", "get", await get(node_url + "/health"))
    openai = await get(node_url + "/v1/models")
    assert openai.code == 200
    check_response("/v1/models", "get", openai)
    anthropic = await get(node_url + "/v1/models", headers=ANTHROPIC_VERSION)
    assert anthropic.code == 200
    check_response("/v1/models", "get", anthropic)
    # Each answer is the shape its request selects (the document's oneOf names both), the same ids in the same order.
    openai_list, anthropic_list = ujson.loads(openai.body), ujson.loads(anthropic.body)
    validator_for(["components", "schemas", "ModelList"]).validate(openai_list)
    validator_for(["components", "schemas", "AnthropicModelList"]).validate(anthropic_list)
    ids = [model["id"] for model in openai_list["data"]]
    assert ids == [model["id"] for model in anthropic_list["data"]]
    assert (anthropic_list["first_id"], anthropic_list["last_id"]) == (ids[0], ids[-1])
    owners = {model["id"]: model["owned_by"] for model in openai_list["data"]}
    for name, target in ALIASES.items():  # the aliases are listed, owned by their target's provider
        assert owners[name] == target.split("/", 1)[0]
    ctx.draining = True
    response = await get(node_url + "/health")
    assert response.code == 503
    check_response("/health", "get", response)


@pytest.mark.gen_test
async def test_chat_answers_match_the_document(node_url: str, upstream: Any) -> None:
    url = node_url + "/v1/chat/completions"
    check_response("/v1/chat/completions", "post", await post(url, chat_body()))
    for bad in (b"not json", {"model": "openai/x", "messages": []}, {"model": "nope", "messages": USER}):
        response = await post(url, bad)
        assert response.code == 400
        check_response("/v1/chat/completions", "post", response)
    upstream.push(Behavior(status=429, error_message="slow down"))
    upstream.push(Behavior(status=429, error_message="slow down"))
    upstream.push(Behavior(status=429, error_message="slow down"))
    response = await post(url, chat_body())
    assert response.code == 429
    check_response("/v1/chat/completions", "post", response)  # the documented default response


@pytest.mark.gen_test
async def test_chat_stream_events_match_the_document(node_url: str) -> None:
    response = await post(node_url + "/v1/chat/completions", chat_body(stream=True))
    assert response.code == 200
    check_response("/v1/chat/completions", "post", response)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    event = validator_for(["components", "schemas", "ServerSentEvent"])
    chunk = validator_for(["components", "schemas", "ChatCompletionChunk"])
    data = sse_data(response.body)
    assert data[-1] == "[DONE]"
    for item in data:
        event.validate({"data": item})
        if item != "[DONE]":
            chunk.validate(ujson.loads(item))


def sse_events(body: bytes) -> list[dict[str, str]]:
    """Each event of a server-sent event stream as its fields (``event``, ``data``, ...), multi-line data joined."""
    events = []
    for block in body.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, colon, value = line.partition(":")
            if name and colon:
                value = value.removeprefix(" ")
                fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value
        if fields:
            events.append(fields)
    return events


def messages_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Is the sky blue?"}], "max_tokens": 64, **extra}


@pytest.mark.gen_test
async def test_messages_answers_match_the_document(node_url: str, upstream: Any) -> None:
    """Relayed to a Messages provider, translated for another, and to an alias: each a documented ``message``."""
    url = node_url + "/v1/messages?beta=true"
    message = validator_for(["components", "schemas", "Message"])
    for model, answered_by in (
        ("anthropic/claude-x", "anthropic/claude-x"),  # relayed as it came
        ("openai/gpt-x", "openai/gpt-x"),  # translated from a chat completion
        ("claude-sonnet-4-6", ALIASES["claude-sonnet-4-6"]),  # an alias: X-Mira-Model names its target
    ):
        response = await post(url, messages_body(model), headers=ANTHROPIC_VERSION)
        assert response.code == 200, (model, response.body)
        check_response("/v1/messages", "post", response)
        assert response.headers["X-Mira-Model"] == answered_by
        data = ujson.loads(response.body)
        message.validate(data)
        assert [block["type"] for block in data["content"]] == ["text"]
    assert [r.path for r in upstream.requests] == ["/v1/messages", "/v1/chat/completions", "/v1/messages"]


@pytest.mark.gen_test
async def test_messages_stream_events_match_the_document(node_url: str, upstream: Any) -> None:
    event_schema = validator_for(["components", "schemas", "MessagesServerSentEvent"])
    data_schema = validator_for(["components", "schemas", "MessageStreamEvent"])
    for model in ("anthropic/claude-x", "openai/gpt-x"):
        response = await post(node_url + "/v1/messages", messages_body(model, stream=True))
        assert response.code == 200, model
        check_response("/v1/messages", "post", response)
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(response.body)
        for event in events:
            event_schema.validate(event)
            data = ujson.loads(event["data"])
            data_schema.validate(data)
            assert data["type"] == event["event"]
        kinds = [event["event"] for event in events]
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"], (model, kinds)
        validator_for(["components", "schemas", "Message"]).validate(
            {**ujson.loads(events[0]["data"])["message"], "stop_reason": None}
        )


@pytest.mark.gen_test
async def test_count_tokens_answers_match_the_document(node_url: str, upstream: Any) -> None:
    """Relayed to a Messages provider (its count, no estimate header); estimated by the node for another."""
    url = node_url + "/v1/messages/count_tokens"
    count = validator_for(["components", "schemas", "TokenCount"])
    body = {"model": "anthropic/claude-x", "messages": [{"role": "user", "content": "Is the sky blue?"}]}
    relayed = await post(url, body, headers=ANTHROPIC_VERSION)
    assert relayed.code == 200
    check_response("/v1/messages/count_tokens", "post", relayed)
    count.validate(ujson.loads(relayed.body))
    assert "X-Mira-Token-Count" not in relayed.headers
    assert relayed.headers["X-Mira-Model"] == "anthropic/claude-x"
    estimated = await post(url, {**body, "model": "openai/gpt-x"})
    assert estimated.code == 200
    check_response("/v1/messages/count_tokens", "post", estimated)
    count.validate(ujson.loads(estimated.body))
    assert estimated.headers["X-Mira-Token-Count"] == "estimate"
    assert estimated.headers["X-Mira-Model"] == "openai/gpt-x"
    assert [r.path for r in upstream.requests] == ["/v1/messages/count_tokens"]  # the estimate makes no call


@pytest.mark.gen_test
async def test_messages_errors_match_the_document(node_url: str, upstream: Any) -> None:
    """The node's own errors in Anthropic's shape; a provider's error relayed (Messages) or reshaped (translated)."""
    error = validator_for(["components", "schemas", "AnthropicError"])
    url = node_url + "/v1/messages"
    for path, bad in (
        ("/v1/messages", b"not json"),
        ("/v1/messages", {"model": "anthropic/claude-x", "messages": USER}),  # no max_tokens
        ("/v1/messages", messages_body("nope")),  # not routable
        ("/v1/messages/count_tokens", {"model": "openai/gpt-x", "messages": []}),
    ):
        response = await post(node_url + path, bad)
        assert response.code == 400, (path, bad)
        check_response(path, "post", response)
        data = ujson.loads(response.body)
        error.validate(data)
        assert data["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []
    # A Messages provider's own error (Anthropic's 529) comes back as it came: the documented default response.
    upstream.set_behavior("claude-busy", Behavior(status=529, error_message="Overloaded"))
    response = await post(url, messages_body("anthropic/claude-busy"))
    assert response.code == 529
    check_response("/v1/messages", "post", response)
    assert ujson.loads(response.body) == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    # A translated provider's error keeps its status, in Anthropic's shape.
    upstream.set_behavior("gpt-gone", Behavior(status=404, error_message="no such model"))
    response = await post(url, messages_body("openai/gpt-gone"))
    assert response.code == 404
    check_response("/v1/messages", "post", response)
    data = ujson.loads(response.body)
    assert data["error"]["type"] == "not_found_error" and data["error"]["message"].startswith("Error from openai API")


@pytest.mark.gen_test
@pytest.mark.node_env(SERVICE_API_KEY="svc-key-123")
async def test_messages_take_the_service_key_as_x_api_key(node_url: str) -> None:
    for path, body in (
        ("/v1/messages", messages_body("openai/gpt-x")),
        ("/v1/messages/count_tokens", {"model": "openai/gpt-x", "messages": USER}),
    ):
        for headers in ({"x-api-key": "svc-key-123"}, {"Authorization": "Bearer svc-key-123"}):
            response = await post(node_url + path, body, headers=headers)
            assert response.code == 200, (path, headers)
            check_response(path, "post", response)
        for headers in ({}, {"x-api-key": "wrong"}):
            response = await post(node_url + path, body, headers=headers)
            assert response.code == 401, (path, headers)
            check_response(path, "post", response)
            data = ujson.loads(response.body)
            assert data["error"]["type"] == "authentication_error" and data["error"]["code"] == "invalid_api_key"
    # x-api-key is for the Messages routes only
    response = await post(node_url + "/v1/chat/completions", chat_body(), headers={"x-api-key": "svc-key-123"})
    assert response.code == 401
    check_response("/v1/chat/completions", "post", response)


@pytest.mark.gen_test
async def test_verify_answers_match_the_document(node_url: str) -> None:
    url = node_url + "/v1/verify"
    single = await post(url, {"messages": USER, "model": "openai/mock-model"})
    assert single.code == 200
    check_response("/v1/verify", "post", single)
    validator_for(["components", "schemas", "VerifyResult"]).validate(ujson.loads(single.body))
    consensus = await post(url, {"messages": USER, "models": ["openai/a", "groq/b", "mira/c"]})
    assert consensus.code == 200
    check_response("/v1/verify", "post", consensus)
    validator_for(["components", "schemas", "ConsensusResult"]).validate(ujson.loads(consensus.body))
    bad = await post(url, {"messages": USER, "models": ["openai/a"], "min_yes": 5})
    assert bad.code == 400
    check_response("/v1/verify", "post", bad)


@pytest.mark.gen_test
async def test_eval_answers_match_the_document(node_url: str) -> None:
    url = node_url + "/v1/eval"
    body = {"csv": "question\nIs water wet?\n", "models": ["openai/a"], "eval_system_prompt": "yes or no"}
    response = await post(url, body)
    assert response.code == 200
    check_response("/v1/eval", "post", response)
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    response = await post(url, {**body, "csv": "a,b\n1\n"})
    assert response.code == 400
    check_response("/v1/eval", "post", response)


@pytest.mark.gen_test
@pytest.mark.node_env(MAX_BODY_SIZE="100")
async def test_too_large_body_matches_the_document(node_url: str) -> None:
    response = await post(node_url + "/v1/chat/completions", chat_body(padding="x" * 200))
    assert response.code == 413
    check_response("/v1/chat/completions", "post", response)
    response = await post(node_url + "/v1/messages", messages_body("openai/gpt-x", padding="x" * 200))
    assert response.code == 413
    check_response("/v1/messages", "post", response)
    assert ujson.loads(response.body)["error"]["type"] == "request_too_large"


@pytest.mark.gen_test
async def test_preflight_matches_the_document(node_url: str) -> None:
    for path in DOCUMENT["paths"]:
        response = await get(
            node_url + path,
            method="OPTIONS",
            headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert response.code == 204, path
        check_response(path, "options", response)
