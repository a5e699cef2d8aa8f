"""POST /v1/eval over real HTTP against the mock upstream."""

from __future__ import annotations

import csv
import io

import pytest

from tests.helpers import RawClient, error_of, post
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test

SYSTEM = "Answer yes or no."


def to_csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def from_csv(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


async def run_eval(node_url: str, rows: list[list[str]] | str, models: list[str], **kwargs):
    text = rows if isinstance(rows, str) else to_csv(rows)
    body = {"csv": text, "models": models, "eval_system_prompt": SYSTEM}
    return await post(node_url + "/v1/eval", body, **kwargs)


async def test_two_models_tricky_cells_and_an_empty_header(node_url, upstream):
    upstream.set_behavior("judge-a", Behavior(content="  Yes.\n"))
    upstream.set_behavior("judge-b", Behavior(content="NO"))
    header = ["question", "", "notes"]
    rows = [
        ["What is 2+2, really?", 'free "quoted" text', "line1\nline2"],
        ["plain", "", "a,b,\"c\""],
    ]
    response = await run_eval(node_url, [header, *rows], ["openai/judge-a", "groq/judge-b"])
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["X-Machine-IP"]
    assert from_csv(response.body) == [
        [*header, "openai/judge-a", "groq/judge-b"],
        [*rows[0], "yes", "no"],
        [*rows[1], "yes", "no"],
    ]
    seen = {(r.json["model"], r.json["messages"][1]["content"]) for r in upstream.requests}
    first = 'question:\n What is 2+2, really?\n\n\nfree "quoted" text\n\n\nnotes:\n line1\nline2\n\n\n'
    second = 'question:\n plain\n\n\n\n\n\nnotes:\n a,b,"c"\n\n\n'
    assert seen == {("judge-a", first), ("judge-b", first), ("judge-a", second), ("judge-b", second)}
    for record in upstream.requests:
        assert record.json["messages"][0] == {"role": "system", "content": SYSTEM}
        assert len(record.json["messages"]) == 2
        assert "tools" not in record.json


@pytest.mark.node_env(EVAL_CONCURRENCY="1")
async def test_verdicts_land_in_their_own_rows_in_input_order(node_url, upstream):
    # One call at a time: the queued answers are consumed in row-major order.
    rows = [[f"q{i}"] for i in range(5)]
    for i in range(5):
        for model in ("a", "b"):
            upstream.push(Behavior(content=f"R{i}{model.upper()}."))
    response = await run_eval(node_url, [["q"], *rows], ["openai/a", "openai/b"])
    assert from_csv(response.body)[1:] == [[f"q{i}", f"r{i}a", f"r{i}b"] for i in range(5)]
    prompts = [(r.json["model"], r.json["messages"][1]["content"]) for r in upstream.requests]
    assert prompts == [(m, f"q:\n q{i}\n\n\n") for i in range(5) for m in ("a", "b")]


async def test_a_mismatched_row_is_400_naming_its_line_before_any_call(node_url, upstream):
    text = 'q,a\n"multi\nline",1\n2,3\n4\n5,6\n'  # the bad row "4" is on line 5
    response = await run_eval(node_url, text, ["openai/a"])
    assert response.code == 400
    error = error_of(response)
    assert "line 5" in error["message"]
    assert error["param"] == "csv"
    assert upstream.requests == []


@pytest.mark.node_env(EVAL_MAX_ROWS="2")
async def test_too_many_rows_is_400(node_url, upstream):
    response = await run_eval(node_url, [["q"], ["1"], ["2"], ["3"]], ["openai/a"])
    assert response.code == 400
    assert "EVAL_MAX_ROWS" in error_of(response)["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    "body, param",
    [
        ({"models": ["openai/a"]}, "csv"),
        ({"csv": "q\n1\n", "models": []}, "models"),
        ({"csv": "q\n1\n", "models": ["openai/a", "bad"]}, "models[1]"),
        ({"csv": 'q\n"open\n', "models": ["openai/a"]}, "csv"),
    ],
)
async def test_bad_bodies_are_400(node_url, upstream, body, param):
    response = await post(node_url + "/v1/eval", body)
    assert response.code == 400
    assert error_of(response)["param"] == param
    assert upstream.requests == []


async def test_header_only_csv_answers_the_header(node_url, upstream):
    response = await run_eval(node_url, "q,a\n", ["openai/x"])
    assert response.code == 200
    assert from_csv(response.body) == [["q", "a", "openai/x"]]
    assert upstream.requests == []


@pytest.mark.node_env(UPSTREAM_RETRIES="1")
async def test_a_failing_model_writes_error_cells_and_the_eval_goes_on(node_url, upstream):
    upstream.set_behavior("good", Behavior(content="Yes"))
    upstream.set_behavior("bad", Behavior(status=502, error_message="provider down"))
    rows = [["q"], ["1"], ["2"], ["3"]]
    response = await run_eval(node_url, rows, ["openai/good", "openai/bad"])
    assert response.code == 200
    result = from_csv(response.body)
    assert result[0] == ["q", "openai/good", "openai/bad"]
    assert result[1:] == [[n, "yes", "error: Error from openai API: provider down"] for n in ("1", "2", "3")]
    assert sum(1 for r in upstream.requests if r.json["model"] == "bad") == 6  # each retried once
    assert "SECRET" not in response.body.decode()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.node_env(EVAL_CONCURRENCY="8")
async def test_large_eval_is_bounded_and_streams_rows_as_they_complete(node_url, upstream):
    upstream.default = Behavior(content="yes", delay=0.05)
    rows = [[f"row {i}"] for i in range(200)]
    models = ["openai/a", "groq/b", "mira/c"]
    received = bytearray()
    calls_when_first_row_arrived: list[int] = []

    def on_chunk(chunk: bytes) -> None:
        received.extend(chunk)
        if not calls_when_first_row_arrived and received.count(b"\r\n") >= 2:  # header + first row
            calls_when_first_row_arrived.append(len(upstream.requests))

    response = await run_eval(node_url, [["prompt"], *rows], models, streaming_callback=on_chunk)
    assert response.code == 200
    result = from_csv(bytes(received))
    assert result[0] == ["prompt", *models]
    assert result[1:] == [[f"row {i}", "yes", "yes", "yes"] for i in range(200)]
    assert len(upstream.requests) == 600
    assert upstream.max_in_flight == 8
    # The first row reached the client while most calls had not even been sent.
    assert calls_when_first_row_arrived and calls_when_first_row_arrived[0] < 600


def seen(upstream) -> str:
    """What the mock upstream saw, for an assertion's message."""
    calls = [(r.json.get("model") if isinstance(r.json, dict) else None, r.closed_at is not None) for r in upstream.requests]
    return f"in flight {upstream.in_flight}; calls (model, closed early): {calls}"


@pytest.mark.gen_test(timeout=15)  # each wait below has 4 s, so a failure says which one and what the upstream saw
@pytest.mark.node_env(EVAL_CONCURRENCY="2")
async def test_client_disconnect_stops_new_calls_and_aborts_running_ones(node_url, http_port, upstream):
    upstream.push(Behavior(content="yes"))
    upstream.push(Behavior(content="yes"))
    upstream.default = Behavior(hang=True)  # every later call waits until it is aborted
    upstream.set_behavior("sync", Behavior(content="yes"))
    rows = [["q"], *([f"r{i}"] for i in range(20))]
    client = RawClient(http_port)
    await client.send("/v1/eval", {"csv": to_csv(rows), "models": ["openai/m"], "eval_system_prompt": SYSTEM})
    head = await client.read_head()
    assert head.status == 200
    while b"r1,yes" not in head.body:
        assert await client.read_some(head)
    assert await upstream.await_for(lambda u: len(u.requests) == 4 and u.in_flight == 2, 4), seen(upstream)
    client.close()
    assert await upstream.await_for(lambda u: u.in_flight == 0 and all(r.closed_at for r in u.requests[2:]), 4), (
        "the running calls were not aborted: " + seen(upstream)
    )
    # A later request through the same node and upstream: any call the eval still
    # started after the disconnect would have reached the upstream before it.
    later = await run_eval(node_url, [["q"], ["x"]], ["openai/sync"])
    assert from_csv(later.body)[1] == ["x", "yes"]
    assert [r.json["model"] for r in upstream.requests] == ["m", "m", "m", "m", "sync"]


@pytest.mark.gen_test
async def test_csv_with_a_lone_surrogate_is_a_400_before_any_call(node_url, upstream):
    raw = b'{"csv": "q\\ud800,a\\nx,y\\n", "models": ["openai/m"], "eval_system_prompt": "s"}'
    response = await post(node_url + "/v1/eval", raw)
    assert response.code == 400
    assert "surrogate" in error_of(response)["message"]
    assert upstream.requests == []
