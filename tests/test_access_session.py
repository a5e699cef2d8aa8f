"""The access line records the session a request names (key pools keep a session on one key)."""

from __future__ import annotations

import logging

import pytest

from tests.helpers import chat_body, post

pytestmark = pytest.mark.gen_test(timeout=20)

MESSAGES = {"model": "anthropic/claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


async def test_the_access_line_records_the_session(node_url, upstream, caplog):
    caplog.set_level(logging.INFO, logger="mira.access")
    await post(node_url + "/v1/messages", MESSAGES, headers={"X-Claude-Code-Session-Id": "sess-42"})
    await post(node_url + "/v1/chat/completions", chat_body(prompt_cache_key="cache 7\n"))
    await post(node_url + "/v1/chat/completions", chat_body())
    records = [r for r in caplog.records if r.name == "mira.access"]
    assert [getattr(r, "session", None) for r in records] == ["sess-42", "cache_7\\n", None]
    lines = [r.getMessage() for r in records]
    assert lines[0].endswith(" session=sess-42")
    assert lines[1].endswith(" session=cache_7\\n")  # escaped, one word: the line is never split
    assert "session=" not in lines[2]


def test_a_remembered_word_is_masked_once_the_redactor_learns_its_secret(monkeypatch):
    from utils import logs
    from utils.redact import Redactor

    redactor = Redactor()
    monkeypatch.setattr(logs, "_access_redactor", redactor)
    session = "user-sk-live-TOKEN-123456789"
    assert logs.outside_word(session, 100) == session  # no secret known yet: remembered as it is
    redactor.add("sk-live-TOKEN-123456789")  # a token learnt later (the router's, say)
    assert "TOKEN-123456789" not in logs.outside_word(session, 100)
