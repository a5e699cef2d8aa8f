"""A request waiting to retry stops waiting at once when its client leaves, or when the drain cuts it."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import RawClient, chat_body, error_of, post
from tests.mock_upstream import Behavior

# The upstream asks for a long pause before the retry: long enough that a test waiting it out would time out,
# and within UPSTREAM_RETRY_MAX_WAIT, so that the node does wait for it.
pytestmark = [pytest.mark.gen_test(timeout=20), pytest.mark.node_env(UPSTREAM_RETRY_MAX_WAIT="60")]

LONG_PAUSE = Behavior(status=503, headers={"Retry-After": "25"}, error_message="busy")


async def test_a_client_that_leaves_during_the_back_off_ends_the_request_at_once(node_url, http_port, upstream, ctx):
    upstream.push(LONG_PAUSE)
    client = RawClient(http_port)
    await client.send("/v1/chat/completions", chat_body())
    assert await upstream.await_for(lambda u: len(u.requests) == 1)
    handlers = [task for task in asyncio.all_tasks() if "RequestHandler._execute" in repr(task.get_coro())]
    assert len(handlers) == 1  # the request's handler, paused before its retry
    client.close()
    done, _ = await asyncio.wait(handlers, timeout=5)  # not the 25 s the upstream asked for
    assert done == set(handlers)
    assert len(upstream.requests) == 1  # the retry was never sent
    assert ctx.in_flight == 0


async def test_the_drains_cut_ends_a_request_waiting_to_retry_with_503(node_url, upstream, ctx):
    upstream.push(LONG_PAUSE)
    pending = asyncio.ensure_future(post(node_url + "/v1/chat/completions", chat_body()))
    assert await upstream.await_for(lambda u: len(u.requests) == 1)
    assert ctx.cut_in_flight() == 1
    response = await asyncio.wait_for(pending, timeout=5)
    assert response.code == 503
    assert error_of(response)["code"] == "node_shutting_down"
    assert len(upstream.requests) == 1
