"""A connection's idle limit (server.NodeServer): time to send a request's headers, never a cut of a request."""

from __future__ import annotations

import asyncio

import pytest

from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test(timeout=20)

IDLE = 0.3


@pytest.fixture
def idle_timeout() -> float:
    return IDLE


def request_bytes(body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def answer(reader: asyncio.StreamReader) -> bytes:
    """One whole answer: its head and a Content-Length body, or a chunked one to its last chunk."""
    head = await reader.readuntil(b"\r\n\r\n")
    if b"Transfer-Encoding: chunked" in head:
        body = await reader.readuntil(b"\r\n0\r\n\r\n")
    else:
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = await reader.readexactly(length)
    return head + body


async def closed_by_node(reader: asyncio.StreamReader) -> float:
    """Seconds until the node closes the connection (EOF)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await reader.read() == b""
    return loop.time() - start


async def test_a_connection_that_sends_nothing_is_closed(http_server, http_port, ctx) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    waited = await asyncio.wait_for(closed_by_node(reader), 10)
    assert waited >= IDLE * 0.9
    writer.close()
    while len(ctx.idle_connections):  # a closed connection leaves the set (in the turn after its close)
        await asyncio.sleep(0.01)


async def test_an_idle_keep_alive_connection_is_closed_after_its_answer(http_server, http_port, upstream, ctx) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(request_bytes(b'{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}]}'))
    assert (await answer(reader)).startswith(b"HTTP/1.1 200")
    # within the limit the connection takes another request
    writer.write(request_bytes(b'{"model":"openai/gpt-4o","messages":[{"role":"user","content":"again"}]}'))
    assert (await answer(reader)).startswith(b"HTTP/1.1 200")
    waited = await asyncio.wait_for(closed_by_node(reader), 10)
    assert waited >= IDLE * 0.9
    writer.close()


async def test_a_request_longer_than_the_limit_is_never_cut(http_server, http_port, upstream) -> None:
    upstream.default = Behavior(chunks=8, chunk_delay=0.1)  # a stream of about 0.8 s, the limit 0.3 s
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    body = b'{"model":"openai/gpt-4o","stream":true,"messages":[{"role":"user","content":"slow"}]}'
    writer.write(request_bytes(body))
    whole = await asyncio.wait_for(answer(reader), 10)
    assert whole.startswith(b"HTTP/1.1 200") and whole.count(b"data: {") >= 8 and b"data: [DONE]" in whole
    assert await asyncio.wait_for(closed_by_node(reader), 10) >= IDLE * 0.9  # idle again after it: closed
    writer.close()


async def test_headers_sent_too_slowly_are_cut(http_server, http_port) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: node\r\n")  # and never the rest of the headers
    assert await asyncio.wait_for(closed_by_node(reader), 10) >= IDLE * 0.9
    writer.close()
