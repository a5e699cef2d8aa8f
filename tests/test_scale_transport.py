"""The transport at scale (issue 24): libcurl's search for a connection to reuse, skipped when none can be idle.

For each new transfer libcurl walks every connection to the destination, busy or idle; the transport lets a
plain-http call skip that walk (FRESH_CONNECT) when none of the origin's connections can be idle. What must not
change: a kept-alive connection is reused whenever one is idle, concurrent calls each get a connection, and an
https call always searches (over HTTP/2 a busy connection takes more streams). A server counts its connections.
"""

from __future__ import annotations

import asyncio

import pytest
import ujson

from utils.upstream.transport import Reply, Transfer, Transport, UpstreamCall, header_lines

LINES = header_lines({"Content-Type": "application/json"})
ANSWER = b'{"object":"chat.completion"}'


class CountingServer:
    """HTTP/1.1 keep-alive on loopback: answers each POST after ``delay`` seconds, counts connections."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.connections: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1/chat/completions"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        try:
            for _ in range(1000):  # requests on one connection, bounded
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)
                             + ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def close(self) -> None:
        for writer in self.connections:
            writer.close()
        if self.server is not None:
            self.server.close()


async def run(transport: Transport, url: str) -> Reply:
    future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    transport.start(UpstreamCall(url, ujson.dumps({"model": "m"}).encode(), LINES, 2, 5, Transfer()), future.set_result)
    return await asyncio.wait_for(future, 10)


@pytest.mark.gen_test
async def test_calls_in_turn_reuse_one_connection() -> None:
    server = CountingServer()
    url = await server.start()
    transport = Transport(max_connections=8)
    try:
        for _ in range(5):
            reply = await run(transport, url)
            assert reply.code == 200 and reply.body == ANSWER
        assert len(server.connections) == 1  # the first call connects (nothing can be idle), the others reuse it
    finally:
        transport.close()
        server.close()


@pytest.mark.gen_test
async def test_concurrent_calls_get_a_connection_each_and_the_next_ones_reuse_them() -> None:
    server = CountingServer(delay=0.2)
    url = await server.start()
    transport = Transport(max_connections=8)
    try:
        replies = await asyncio.gather(*(run(transport, url) for _ in range(6)))
        assert all(r.code == 200 for r in replies)
        assert len(server.connections) == 6
        # six connections are idle now: six more calls at once take them, none is opened
        replies = await asyncio.gather(*(run(transport, url) for _ in range(6)))
        assert all(r.code == 200 for r in replies)
        assert len(server.connections) == 6
        # and one at a time, one of them again
        assert (await run(transport, url)).code == 200
        assert len(server.connections) == 6
    finally:
        transport.close()
        server.close()


@pytest.mark.gen_test
async def test_an_idle_connection_the_upstream_closed_costs_only_a_search() -> None:
    # The count of idle connections is too high once the upstream closes one: the next call searches, finds none,
    # connects, and the count is right again.
    server = CountingServer()
    url = await server.start()
    transport = Transport(max_connections=8)
    try:
        assert (await run(transport, url)).code == 200
        server.connections[0].close()
        await asyncio.sleep(0.05)
        assert (await run(transport, url)).code == 200
        assert (await run(transport, url)).code == 200
        assert len(server.connections) == 2
    finally:
        transport.close()
        server.close()


@pytest.mark.gen_test
async def test_a_refused_call_takes_no_idle_connection() -> None:
    # A call given up before its turn never runs: the idle connection it would have taken is still there for the next.
    server = CountingServer()
    url = await server.start()
    transport = Transport(max_connections=8)
    try:
        assert (await run(transport, url)).code == 200
        refused = Transfer()
        refused.abort()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        transport.start(UpstreamCall(url, b"{}", LINES, 2, 5, refused), future.set_result)
        assert (await asyncio.wait_for(future, 10)).code == 599
        assert (await run(transport, url)).code == 200
        assert len(server.connections) == 1
    finally:
        transport.close()
        server.close()


@pytest.mark.gen_test
async def test_which_calls_skip_the_search() -> None:
    transport = Transport(max_connections=2)
    http = transport.http
    try:
        assert http._origin("https://api.openai.com/v1/chat/completions") == ""
        assert http._origin("HTTP://LocalHost/v1/chat/completions") == "http://localhost:80"
        assert http._origin("http://127.0.0.1:11434/v1?x=1") == "http://127.0.0.1:11434"
        assert http._fresh("") is False  # https: libcurl always searches (HTTP/2 multiplexes on busy connections)
        assert http._fresh("http://h:80") is True  # nothing of the origin can be idle
        http._idle["http://h:80"] = 1
        assert http._fresh("http://h:80") is False  # one may be idle: search, and count it taken
        assert http._fresh("http://h:80") is True
    finally:
        transport.close()
