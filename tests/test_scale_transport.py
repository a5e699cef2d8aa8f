"""The transport at scale (issues 24 and 34): libcurl's search for a connection to reuse, skipped when none can be
idle; and the send buffer a running call holds.

For each new transfer libcurl walks every connection to the destination, busy or idle; the transport lets a
plain-http call skip that walk (FRESH_CONNECT) when none of the origin's connections can be idle. What must not
change: a kept-alive connection is reused whenever one is idle, concurrent calls each get a connection, and an
https call always searches (over HTTP/2 a busy connection takes more streams). A server counts its connections.

libcurl keeps a handle's send buffer whole while its calls run: a small body's is a mapping of its own, of which
only the pages written are resident (issue 34). What must not change: every body arrives whole, with its
Content-Length and without an ``Expect: 100-continue`` wait, whatever its size and whichever size of buffer the
handle ran before, and a call after a failed one sends its body again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import ujson

from utils.upstream import transport as transport_module
from utils.upstream.transport import Reply, Transfer, Transport, UpstreamCall, header_lines

LINES = header_lines({"Content-Type": "application/json"})
ANSWER = b'{"object":"chat.completion"}'


class CountingServer:
    """HTTP/1.1 keep-alive on loopback: answers each POST after ``delay`` seconds, counts connections."""

    def __init__(self, delay: float = 0.0, drop: frozenset[int] = frozenset()) -> None:
        self.delay = delay
        self.drop = drop  # these requests (1 the first) are read whole, then their connection closed unanswered
        self.connections: list[asyncio.StreamWriter] = []
        self.received: list[tuple[bytes, bytes]] = []  # each request's head and body, as read
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
                self.received.append((head, await reader.readexactly(length)))
                if len(self.received) in self.drop:
                    writer.close()
                    return
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


class SoonLoop:
    """A loop whose call_at gives a plain Handle, as uvloop's does for a deadline under half a millisecond away."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def __getattr__(self, name: str) -> object:
        return getattr(self.loop, name)

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.Handle:
        return self.loop.call_soon(callback)


@pytest.mark.gen_test
async def test_libcurls_timer_takes_a_handle_that_has_no_deadline() -> None:
    # Seen at 10,000 streams on uvloop: the loop stood still between two reads of its clock, call_at gave a Handle,
    # and libcurl's next timer request failed on its when(), which failed the calls running (HTTP 599).
    server = CountingServer()
    url = await server.start()
    transport = Transport(max_connections=2)
    http = transport.http
    try:
        loop = http._loop
        http._loop = SoonLoop(loop)  # type: ignore[assignment]
        http._set_timeout(5)
        http._set_timeout(7)  # reads the deadline of the timer set just before
        http._set_timeout(7)
        http._set_timeout(-1)
        http._loop = loop
        assert (await run(transport, url)).code == 200
    finally:
        transport.close()
        server.close()


async def post(transport: Transport, url: str, body: bytes) -> tuple[Reply, float]:
    future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    transport.start(UpstreamCall(url, body, LINES, 2, 5, Transfer()), future.set_result)
    reply = await asyncio.wait_for(future, 10)
    return reply, time.monotonic() - started


def content_length(head: bytes) -> int:
    return next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))


@pytest.mark.gen_test
async def test_bodies_of_every_size_arrive_whole_on_one_handle_and_one_connection() -> None:
    # A small body goes through the mapped send buffer, a larger one through libcurl's smallest: one handle
    # switching between the two sends each body whole, with its length, at once, on one kept-alive connection.
    server = CountingServer()
    url = await server.start()
    transport = Transport(max_connections=1)
    small = transport.http._small_upload
    sizes = [2, transport_module.SMALL_BODY, transport_module.SMALL_BODY + 1, 100_000, 2_000_000, 700]
    try:
        for n, size in enumerate(sizes):
            body = bytes((n * 7 + i) % 251 for i in range(size))
            reply, took = await post(transport, url, body)
            assert reply.code == 200 and reply.body == ANSWER
            head, received = server.received[-1]
            assert received == body and content_length(head) == size
            assert b"expect:" not in head.lower() and took < 0.9  # libcurl's Expect: 100-continue waits 1 s
            handle = transport.http._curls[0].lean
            assert handle.upload == (small if size <= transport_module.SMALL_BODY else transport_module.UPLOAD_BUFFER)
        assert len(server.received) == len(sizes) and len(server.connections) == 1
    finally:
        transport.close()
        server.close()


@pytest.mark.gen_test
@pytest.mark.parametrize("size", [300, 50_000])
async def test_a_body_is_sent_again_after_a_connection_dies(size: int) -> None:
    # Request 2 arrives on the kept-alive connection, which then closes unanswered: libcurl sends it again on a
    # fresh connection (request 3). Requests 4 and 5 (its resend) are closed unanswered too: that call fails, and
    # the next call on the same handle (the node's retry) sends the same body whole again (request 6).
    server = CountingServer(drop=frozenset({2, 4, 5}))
    url = await server.start()
    transport = Transport(max_connections=1)
    body = bytes(i % 253 for i in range(size))
    try:
        assert (await post(transport, url, body))[0].code == 200
        assert (await post(transport, url, body))[0].code == 200
        failed, _ = await post(transport, url, body)
        assert failed.code == 599
        assert (await post(transport, url, body))[0].code == 200
        assert len(server.received) == 6
        assert all(received == body and content_length(head) == size for head, received in server.received)
    finally:
        transport.close()
        server.close()


HELD = 300
HOLDING = """
import asyncio, sys
from utils.upstream import transport as T

def rss_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))

freed = bytearray(4_000_000)  # a large block freed: glibc would raise its mmap threshold above a mapped buffer
del freed

async def hold(tr, url, body, count):
    first = set()
    before = rss_kb()
    for i in range(count):
        call = T.UpstreamCall(url, body, T.header_lines({}), 5, 0, T.Transfer(), streaming_callback=lambda c, i=i: first.add(i))
        tr.start(call, lambda reply: None)
    for _ in range(400):
        if len(first) == count:
            return (rss_kb() - before) / count
        await asyncio.sleep(0.025)
    raise SystemExit("streams not open")

async def main():
    url, count = sys.argv[1], int(sys.argv[2])
    body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"' + b"a" * 800 + b'"}]}'
    tr = T.Transport(max_connections=2 * count)
    mapped = await hold(tr, url, body, count)
    tr.http._small_upload = T.UPLOAD_BUFFER  # the same streams again, each through a 16 KiB heap buffer
    heap = await hold(tr, url, body, count)
    print(mapped, heap)

asyncio.run(main())
"""


@pytest.mark.gen_test(timeout=60)
@pytest.mark.skipif(not transport_module.mapped_send_buffers(), reason="glibc's malloc only")
async def test_a_held_stream_keeps_only_the_pages_of_its_request_resident() -> None:
    # RSS per running streamed POST in a process of its own (this one holds the server side): libcurl's 16 KiB
    # send buffer, kept whole, is most of what a held transfer costs; a mapped one costs the page written.
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(content_length(head))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n")
            await reader.read()  # held until the client closes
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=1024)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    root = Path(__file__).resolve().parent.parent
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDING, url, str(HELD), cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
    )
    try:
        out, _ = await asyncio.wait_for(child.communicate(), 50)
    finally:
        if child.returncode is None:
            child.kill()
        for writer in writers:
            writer.close()
        server.close()
    assert child.returncode == 0
    mapped, heap = (float(x) for x in out.split())
    assert heap > 15  # the 16 KiB buffer, all of it resident (about 24 KB a stream with the handle)
    assert mapped < heap - 8  # about 11 KB less: one page of the mapping written
