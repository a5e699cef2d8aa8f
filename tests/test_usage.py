"""Token usage accounting: JSON answers and streams, STREAM_USAGE inject and observe, label rules, logs."""

from __future__ import annotations

import json

import openai
import pytest

from tests.helpers import USER, chat_body, get, post, sse_events
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test(timeout=20)

CHAT = "/v1/chat/completions"
LISTED = "openai/gpt-4o"  # in the shipped SUPPORTED_MODELS_FILE


async def tokens(node_url: str, provider: str, model: str, kind: str) -> float:
    text = (await get(node_url + "/metrics")).body.decode()
    series = f'mira_tokens_total{{kind="{kind}",model="{model}",provider="{provider}"}} '
    alt = f'mira_tokens_total{{provider="{provider}",model="{model}",kind="{kind}"}} '
    for line in text.splitlines():
        if line.startswith(series) or line.startswith(alt):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class Counts:
    """Token counters before a test's requests, to compare after (counters are per process)."""

    def __init__(self, node_url: str, provider: str, model: str) -> None:
        self.node_url, self.provider, self.model = node_url, provider, model
        self.before: dict[str, float] = {}

    async def __aenter__(self) -> Counts:
        for kind in ("prompt", "completion"):
            self.before[kind] = await tokens(self.node_url, self.provider, self.model, kind)
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def added(self) -> tuple[float, float]:
        now = [await tokens(self.node_url, self.provider, self.model, kind) for kind in ("prompt", "completion")]
        return now[0] - self.before["prompt"], now[1] - self.before["completion"]


def usage_only(event: bytes) -> bool:
    data = json.loads(event.removeprefix(b"data: ")) if event.startswith(b"data: {") else {}
    return data.get("choices") == [] and "usage" in data


# -- JSON --------------------------------------------------------------------------------------------------


async def test_a_json_answer_is_counted_under_its_listed_model(node_url, upstream, caplog):
    caplog.set_level("INFO", logger="mira.access")
    async with Counts(node_url, "openai", LISTED) as counts:
        response = await post(node_url + CHAT, {"model": LISTED, "messages": [{"role": "user", "content": "one two three"}]})
        assert response.code == 200
        assert await counts.added() == (3, 3)  # the mock counts words: 3 in, "Hello from mock" out
    assert any("tokens=3/3" in r.getMessage() for r in caplog.records if r.name == "mira.access")


async def test_an_unlisted_model_counts_as_other_and_a_custom_provider_as_custom(node_url, upstream):
    async with Counts(node_url, "groq", "other") as counts:
        assert (await post(node_url + CHAT, chat_body("groq/some-unlisted-model"))).code == 200
        assert await counts.added() == (4, 3)


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")  # the mock upstream is on loopback
async def test_a_custom_provider_counts_as_custom(node_url, upstream):
    async with Counts(node_url, "custom", "custom") as counts:
        body = chat_body("llama3", model_provider={"base_url": upstream.base_url})
        assert (await post(node_url + CHAT, body)).code == 200
        assert await counts.added() == (4, 3)


async def test_verify_and_eval_calls_count(node_url, upstream):
    async with Counts(node_url, "openai", LISTED) as counts:
        assert (await post(node_url + "/v1/verify", {"model": LISTED, "messages": USER})).code == 200
        first = await counts.added()
        assert first[0] > 0 and first[1] == 3
        response = await post(node_url + "/v1/eval", {"csv": "q\nhi\nho", "models": [LISTED]})
        assert response.code == 200
        total = await counts.added()
        assert total[1] == first[1] + 6  # two rows of "Hello from mock"


async def test_embeddings_count_their_prompt_tokens(node_url, upstream):
    async with Counts(node_url, "openai", "other") as counts:
        assert (await post(node_url + "/v1/embeddings", {"model": "openai/emb", "input": ["a", "b"]})).code == 200
        assert await counts.added() == (2, 0)


async def test_malformed_usage_is_not_counted_and_breaks_nothing(node_url, upstream):
    upstream.push(Behavior(json_body={"id": "x", "choices": [], "usage": {"prompt_tokens": "many"}}))
    async with Counts(node_url, "openai", LISTED) as counts:
        response = await post(node_url + CHAT, chat_body(LISTED))
        assert response.code == 200 and json.loads(response.body)["usage"] == {"prompt_tokens": "many"}
        assert await counts.added() == (0, 0)


# -- streams, inject --------------------------------------------------------------------------------------


async def test_inject_asks_upstream_and_removes_exactly_the_usage_event(node_url, upstream):
    async with Counts(node_url, "openai", LISTED) as counts:
        response = await post(node_url + CHAT, chat_body(LISTED, stream=True, stream_options={"something": 1}))
        assert response.code == 200
        assert await counts.added() == (4, 3)
    seen = upstream.requests[0]
    assert seen.json["stream_options"] == {"something": 1, "include_usage": True}
    sent = bytes(seen.sent_bytes)
    usage_events = [e + b"\n\n" for e in sse_events(sent) if usage_only(e)]
    assert len(usage_events) == 1
    assert response.body == sent.replace(usage_events[0], b"")  # every other byte as it came


async def test_the_sdk_gets_no_usage_it_did_not_ask_for(node_url, upstream):
    client = openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(model=LISTED, messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from mock"
    await client.close()


async def test_a_client_that_asked_gets_every_byte_and_its_usage(node_url, upstream):
    client = openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="unused", max_retries=0)
    stream = await client.chat.completions.create(
        model=LISTED, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    await client.close()
    response = await post(node_url + CHAT, chat_body(LISTED, stream=True, stream_options={"include_usage": True}))
    assert response.body == bytes(upstream.requests[-1].sent_bytes)


async def test_a_usage_event_split_across_chunks_is_still_found_and_removed_whole(node_url, upstream):
    upstream.push(Behavior(split_usage=True))
    async with Counts(node_url, "openai", LISTED) as counts:
        response = await post(node_url + CHAT, chat_body(LISTED, stream=True))
        assert await counts.added() == (4, 3)
    sent = bytes(upstream.requests[0].sent_bytes)
    (usage_event,) = [e + b"\n\n" for e in sse_events(sent) if usage_only(e)]
    assert response.body == sent.replace(usage_event, b"")  # not even its first half reached the client


async def test_groq_usage_in_x_groq_is_counted_and_nothing_is_removed(node_url, upstream):
    upstream.push(Behavior(usage_style="groq"))
    async with Counts(node_url, "groq", "other") as counts:
        response = await post(node_url + CHAT, chat_body("groq/llama", stream=True))
        assert await counts.added() == (4, 3)
    assert response.body == bytes(upstream.requests[0].sent_bytes)
    assert b'"x_groq"' in response.body


async def test_an_upstream_that_sends_no_usage_streams_as_ever(node_url, upstream):
    upstream.push(Behavior(usage_style="none"))
    async with Counts(node_url, "openai", LISTED) as counts:
        response = await post(node_url + CHAT, chat_body(LISTED, stream=True))
        assert await counts.added() == (0, 0)
    assert response.body == bytes(upstream.requests[0].sent_bytes)


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")
async def test_a_custom_providers_stream_is_never_changed(node_url, upstream):
    body = chat_body("llama3", stream=True, model_provider={"base_url": upstream.base_url})
    response = await post(node_url + CHAT, body)
    seen = upstream.requests[0]
    assert "stream_options" not in seen.json
    assert response.body == bytes(seen.sent_bytes)


async def test_completions_streams_get_the_same_treatment(node_url, upstream):
    response = await post(node_url + "/v1/completions", {"model": "openai/instruct", "prompt": "hi", "stream": True})
    assert response.code == 200
    assert upstream.requests[0].json["stream_options"] == {"include_usage": True}
    assert response.body == bytes(upstream.requests[0].sent_bytes)  # the mock's completions stream has no usage event


async def test_a_responses_stream_counts_response_completed_usage(node_url, upstream):
    async with Counts(node_url, "groq", "other") as counts:
        response = await post(node_url + "/v1/responses", {"model": "groq/claude", "input": "two words", "stream": True})
        assert await counts.added() == (2, 3)
    seen = upstream.requests[0]
    assert "stream_options" not in seen.json  # responses streams are never changed
    assert response.body == bytes(seen.sent_bytes)


# -- observe ------------------------------------------------------------------------------------------------


@pytest.mark.node_env(STREAM_USAGE="observe")
async def test_observe_changes_nothing_and_counts_what_comes(node_url, upstream):
    async with Counts(node_url, "openai", LISTED) as counts:
        quiet = await post(node_url + CHAT, chat_body(LISTED, stream=True))
        assert await counts.added() == (0, 0)  # nobody asked: the upstream sent none
        asked = await post(node_url + CHAT, chat_body(LISTED, stream=True, stream_options={"include_usage": True}))
        assert await counts.added() == (4, 3)
    first, second = upstream.requests
    assert "stream_options" not in first.json
    assert quiet.body == bytes(first.sent_bytes) and asked.body == bytes(second.sent_bytes)
