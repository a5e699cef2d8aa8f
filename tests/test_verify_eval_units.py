"""Verify and eval logic without a server: prompts, verdicts, consensus, CSV checks, the eval run."""

from __future__ import annotations

import asyncio
import csv
import io

import pytest
import ujson

from models.errors import ApiError
from models.evaluation import parse_csv_table, parse_eval_request
from models.verify import default_min_yes, parse_verify_request
from utils.evaluation import EvalRun, build_prompt, eval_payload, format_csv_rows, normalise_verdict
from utils.verify import (
    TOOL_CHOICE,
    VERIFY_SYSTEM_PROMPT,
    Verdict,
    consensus,
    parse_tool_arguments,
    parse_verdict,
    verify_payload,
    with_system_prompt,
)

PROVIDERS = ["openai", "mira", "groq"]
USER = [{"role": "user", "content": "Paris is the capital of France."}]


def tool_reply(arguments: object, name: str = "verify_statement") -> dict:
    call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}
    return {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}


def text_reply(text: object) -> dict:
    return {"choices": [{"message": {"role": "assistant", "content": text}}]}


def verify_body(**fields: object) -> bytes:
    return ujson.dumps({"messages": USER, **fields}).encode()


def parse_verify(**fields: object):
    return parse_verify_request(verify_body(**fields), PROVIDERS, True, "mira/llama3.1")


# -- verify: the request ---------------------------------------------------------------


def test_system_prompt_is_inserted_only_when_missing():
    assert with_system_prompt(USER) == [{"role": "system", "content": VERIFY_SYSTEM_PROMPT}, *USER]
    own = [{"role": "system", "content": "Be strict."}, *USER]
    assert with_system_prompt(own) == own


def test_payload_forces_the_tool():
    payload = verify_payload(USER, {"temperature": 0})
    assert payload["tool_choice"] == TOOL_CHOICE == {"type": "function", "function": {"name": "verify_statement"}}
    (tool,) = payload["tools"]
    params = tool["function"]["parameters"]
    assert tool["function"]["name"] == "verify_statement"
    assert params["properties"]["is_correct"]["type"] == "boolean"
    assert params["properties"]["reason"]["type"] == "string"
    assert sorted(params["required"]) == ["is_correct", "reason"]
    assert payload["temperature"] == 0


def test_single_model_defaults_to_the_configured_model():
    request = parse_verify()
    assert not request.consensus
    assert [(r.id, r.provider, r.name) for r in request.models] == [("mira/llama3.1", "mira", "llama3.1")]


def test_consensus_min_yes_defaults_to_a_simple_majority():
    assert [default_min_yes(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    request = parse_verify(models=["openai/a", "groq/b", "mira/c", "mira/d"])
    assert request.consensus and request.min_yes == 3


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"models": ["openai/a", "groq/b"], "min_yes": 0}, "min_yes"),
        ({"models": ["openai/a", "groq/b"], "min_yes": 3}, "min_yes"),
        ({"models": ["openai/a"], "min_yes": True}, "min_yes"),
        ({"models": ["openai/a"], "min_yes": "1"}, "min_yes"),
        ({"model": "openai/a", "min_yes": 1}, "min_yes"),
        ({"models": []}, "models"),
        ({"models": "openai/a"}, "models"),
        ({"models": ["openai/a", "nope/b"]}, "models[1]"),
        ({"models": ["openai/a", 7]}, "models[1]"),
        ({"model": "openai/a", "models": ["groq/b"]}, "model"),
        ({"model": "gpt-4o"}, "model"),
        ({"model": ""}, "model"),
        ({"temperature": "hot"}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
    ],
)
def test_bad_verify_bodies_are_400(fields, param):
    with pytest.raises(ApiError) as caught:
        parse_verify(**fields)
    assert caught.value.status == 400
    assert caught.value.param == param


# -- verify: reading verdicts ------------------------------------------------------------------


def test_tool_call_verdicts():
    assert parse_verdict(tool_reply('{"is_correct": true, "reason": "It is."}')) == Verdict("yes", "It is.")
    assert parse_verdict(tool_reply('{"is_correct": false, "reason": "Lyon."}')) == Verdict("no", "Lyon.")
    assert parse_verdict(tool_reply({"is_correct": True, "reason": "as object"})) == Verdict("yes", "as object")
    assert parse_verdict(tool_reply('{"is_correct": "True", "reason": "string"}')) == Verdict("yes", "string")


@pytest.mark.parametrize(
    "arguments, why",
    [
        ('{"is_correct": tru', "not valid JSON"),
        ("[true]", "not a JSON object"),
        ('{"reason": "no verdict"}', "is_correct"),
        ('{"is_correct": 1, "reason": "x"}', "is_correct"),
        ('{"is_correct": true, "reason": 5}', "reason"),
        (None, "not a JSON object"),
    ],
)
def test_malformed_arguments_are_no_with_an_explanation(arguments, why):
    verdict = parse_tool_arguments(arguments)
    assert verdict.result == "no"
    assert why in verdict.content


def test_other_tool_or_no_message_is_no():
    assert parse_verdict(tool_reply('{"is_correct": true}', name="other")).result == "no"
    assert parse_verdict({"choices": []}).result == "no"
    assert parse_verdict("not a completion").result == "no"


@pytest.mark.parametrize(
    "text, result",
    [("yes", "yes"), ("  YES \n", "yes"), ("Yes.", "no"), ("no", "no"), ("yes, it is", "no"), ("", "no"), (None, "no")],
)
def test_text_fallback(text, result):
    verdict = parse_verdict(text_reply(text))
    assert verdict.result == result
    assert verdict.content  # the text itself, or why there is nothing


def test_consensus_counting():
    verdicts = [Verdict("yes", "a"), Verdict("no", "b"), Verdict("yes", "c")]
    assert consensus(verdicts, 2) == ("yes", 2)
    assert consensus(verdicts, 3) == ("no", 2)
    assert consensus([], 1) == ("no", 0)


# -- eval: prompts and cells ------------------------------------------------------------------------


def test_prompt_from_the_row_cells():
    assert build_prompt(["question", "answer"], ["2+2?", "4"]) == "question:\n 2+2?\n\n\nanswer:\n 4\n\n\n"
    assert build_prompt(["", "answer"], ["free text", "4"]) == "free text\n\n\nanswer:\n 4\n\n\n"


def test_eval_payload():
    assert eval_payload("Judge.", "p") == {
        "messages": [{"role": "system", "content": "Judge."}, {"role": "user", "content": "p"}]
    }
    assert eval_payload("", "p") == {"messages": [{"role": "user", "content": "p"}]}


@pytest.mark.parametrize("text, cell", [("Yes.", "yes"), ("  NO. \n", "no"), ("4.5", "45"), ("", ""), (" . Maybe", "maybe")])
def test_verdict_normalisation(text, cell):
    assert normalise_verdict(text) == cell


def test_csv_rows_are_quoted():
    text = format_csv_rows([["a,b", 'say "hi"', "two\nlines", "plain"]])
    assert next(csv.reader(io.StringIO(text, newline=""))) == ["a,b", 'say "hi"', "two\nlines", "plain"]


# -- eval: the CSV check ------------------------------------------------------------------------------


def test_csv_table_with_quoted_newlines_and_blank_lines():
    table = parse_csv_table('q,a\r\n"multi\nline",1\r\n\r\n"x, y","He said ""no"""\r\n', 10)
    assert table.header == ["q", "a"]
    assert table.rows == [["multi\nline", "1"], ["x, y", 'He said "no"']]


def test_bad_row_is_named_by_its_starting_line():
    # line 1 header, lines 2-3 one quoted row, line 4 blank, line 5 the bad row
    with pytest.raises(ApiError) as caught:
        parse_csv_table('q,a\n"two\nlines",1\n\nonly-one\n', 10)
    assert caught.value.status == 400
    assert "line 5" in caught.value.message
    with pytest.raises(ApiError) as caught:
        parse_csv_table('q,a\n1,2\n"open,3\n', 10)
    assert "line 3" in caught.value.message


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff"])
def test_csv_without_header_is_400(text):
    with pytest.raises(ApiError) as caught:
        parse_csv_table(text, 10)
    assert "header" in caught.value.message


def test_row_limit():
    assert len(parse_csv_table("h\n1\n2\n3\n", 3).rows) == 3
    with pytest.raises(ApiError) as caught:
        parse_csv_table("h\n1\n2\n3\n4\n", 3)
    assert "more than 3 rows" in caught.value.message


def test_a_bom_is_not_part_of_the_first_header():
    assert parse_csv_table("\ufeffq,a\n1,2\n", 10).header == ["q", "a"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"models": ["openai/a"]}, "csv"),
        ({"csv": 5, "models": ["openai/a"]}, "csv"),
        ({"csv": "q\n1\n"}, "models"),
        ({"csv": "q\n1\n", "models": ["a"]}, "models[0]"),
        ({"csv": "q\n1\n", "models": ["openai/a"], "eval_system_prompt": 3}, "eval_system_prompt"),
    ],
)
def test_bad_eval_bodies_are_400(body, param):
    with pytest.raises(ApiError) as caught:
        parse_eval_request(ujson.dumps(body).encode(), PROVIDERS, True, 10)
    assert caught.value.param == param


# -- eval: the run ----------------------------------------------------------------------------------------


async def collect(run: EvalRun) -> list[tuple[int, list[str]]]:
    out: list[tuple[int, list[str]]] = []
    run.start()
    try:
        while (ready := await run.next_rows()) is not None:
            out += ready
    finally:
        await run.close()
    return out


def test_run_keeps_input_order_and_the_concurrency_bound():
    in_flight = 0
    peak = 0
    gates: dict[tuple[int, int], asyncio.Event] = {}

    async def call(row: int, column: int) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        gate = gates.setdefault((row, column), asyncio.Event())
        if row == 0:
            await gate.wait()  # row 0 finishes last
        else:
            await asyncio.sleep(0)
        in_flight -= 1
        if column == 1 and row == 3:
            raise ApiError(502, "boom")
        return f"r{row}c{column}"

    async def main() -> list[tuple[int, list[str]]]:
        run = EvalRun(6, 2, call, concurrency=3)
        task = asyncio.ensure_future(collect(run))
        while len(gates) < 12:  # every other call has run
            await asyncio.sleep(0)
        for key in ((0, 0), (0, 1)):
            gates[key].set()
        return await task

    rows = asyncio.run(main())
    assert [index for index, _ in rows] == [0, 1, 2, 3, 4, 5]
    assert rows[3][1] == ["r3c0", "error: boom"]
    assert rows[5][1] == ["r5c0", "r5c1"]
    assert peak == 3


def test_stop_starts_no_new_call():
    started: list[tuple[int, int]] = []

    async def call(row: int, column: int) -> str:
        started.append((row, column))
        await asyncio.Event().wait()  # never answers
        return ""

    async def main() -> list | None:
        run = EvalRun(10, 1, call, concurrency=2)
        run.start()
        reader = asyncio.ensure_future(run.next_rows())
        while len(started) < 2:
            await asyncio.sleep(0)
        run.stop()
        result = await reader
        await run.close()
        return result

    assert asyncio.run(main()) is None
    assert started == [(0, 0), (1, 0)]


def test_empty_run_ends_at_once():
    async def call(row: int, column: int) -> str:
        raise AssertionError("no call expected")

    assert asyncio.run(collect(EvalRun(0, 2, call, concurrency=4))) == []
