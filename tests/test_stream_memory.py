"""What a held stream keeps (issue 34): once its first byte has gone to the client no fallback can follow, so the
request's raw body and its parsed form are let go; the stream keeps what it relays. Before that byte the plan
still has the request for its fallbacks (tests/test_fallbacks.py)."""

from __future__ import annotations

import weakref
from typing import Any

import pytest

from handlers.proxy import ProxyHandler
from models.chat import ProxyRequest
from tests.helpers import RawClient, chat_body
from tests.mock_upstream import Behavior
from utils.upstream.routing import Plan, Routing

pytestmark = pytest.mark.gen_test


async def test_a_stream_lets_go_of_its_request_once_its_first_byte_is_sent(
    node_url: str, http_port: int, upstream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests: list[weakref.ref[ProxyRequest]] = []
    plans: list[Plan] = []
    handlers: list[ProxyHandler] = []
    plan_of, begin = Routing.plan, ProxyHandler.begin

    def plan(self: Routing, request: ProxyRequest) -> Plan:
        requests.append(weakref.ref(request))
        plans.append(plan_of(self, request))
        return plans[-1]

    def begun(self: ProxyHandler, model_id: str) -> None:
        handlers.append(self)
        begin(self, model_id)

    monkeypatch.setattr(Routing, "plan", plan)
    monkeypatch.setattr(ProxyHandler, "begin", begun)
    upstream.default = Behavior(chunks=3, hang_after_chunks=1)  # one event, then the stream is held
    client = RawClient(http_port)
    try:
        await client.send("/v1/chat/completions", chat_body("openai/held", stream=True, fallbacks=["groq/llama"]))
        head = await client.read_head()
        assert head.status == 200
        assert b"data:" in await client.read_some(head)
        (handler,) = handlers
        assert not handler._finished  # still held
        assert requests[0]() is None  # no collection needed: nothing refers to it any more
        assert plans[0]._request is None and not plans[0]._fallbacks
        assert handler._chunks == []  # the raw body
    finally:
        client.close()
