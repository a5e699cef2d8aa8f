"""The lean transport on one libcurl handle: what one call sets never leaks into the next.

``LeanCurlClient`` keeps a handle's options from one call to the next and
resets it only after a call that changed something else (an abort, a pause)
or before Tornado's own request path uses it. These tests run every kind of
call back to back on a pool of one handle, against the mock upstream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pycurl
import pytest
import ujson

from tests.mock_upstream import Behavior, MockUpstream
from utils.upstream import transport as transport_module
from utils.upstream.transport import Reply, Transfer, Transport, UpstreamCall, header_lines

LINES = header_lines({"Content-Type": "application/json", "Authorization": "Bearer sk-transport-test"})


def chat(stream: bool = False, model: str = "gpt-4o-mini") -> bytes:
    return ujson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()


@pytest.fixture(params=["epoll", "loop"])
def transport(request: pytest.FixtureRequest, io_loop: object) -> Iterator[Transport]:
    """A pool of one handle on the test's IOLoop, its sockets watched in an epoll set of their own or by the loop."""
    one = Transport(max_connections=1, use_epoll=request.param == "epoll")
    yield one
    one.close()


async def run(transport: Transport, call: UpstreamCall) -> Reply:
    future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
    transport.start(call, future.set_result)
    return await asyncio.wait_for(future, 10)


def call(upstream: MockUpstream, body: bytes, timeout: float = 5) -> UpstreamCall:
    return UpstreamCall(upstream.base_url + "/chat/completions", body, LINES, 2, timeout, Transfer())


@pytest.mark.gen_test
async def test_one_handle_runs_every_kind_of_call_in_turn(transport: Transport, upstream: MockUpstream) -> None:
    reply = await run(transport, call(upstream, chat()))
    assert reply.code == 200 and reply.error is None
    assert ujson.loads(reply.body)["choices"][0]["message"]["content"] == "Hello from mock"
    assert reply.headers["Content-Type"].startswith("application/json")

    # A stream aborted after its first chunk: the abort's progress callback must not outlive it.
    upstream.push(Behavior(chunks=50, chunk_delay=0.05))
    chunks: list[bytes] = []
    transfer = Transfer()

    def on_chunk(chunk: bytes) -> None:
        chunks.append(chunk)
        transfer.abort()

    aborted = UpstreamCall(upstream.base_url + "/chat/completions", chat(stream=True), LINES, 2, 0, transfer,
                           streaming_callback=on_chunk)
    reply = await run(transport, aborted)
    assert reply.code == 599 and chunks and transfer.done

    again = await run(transport, call(upstream, chat()))
    assert again.code == 200, "the call after an abort on the same handle was aborted too"

    # A GET (the router client's lookups) takes the handle with a method of its own, then a POST gets it back.
    response = await run(transport, UpstreamCall(upstream.base_url + "/models", None, LINES, 2, 5, Transfer()))
    assert response.code == 200
    reply = await run(transport, call(upstream, chat()))
    assert reply.code == 200 and ujson.loads(reply.body)["object"] == "chat.completion"

    # Another URL and other headers on the same handle are sent as asked.
    embedding = UpstreamCall(upstream.base_url + "/embeddings", b'{"model":"e","input":"x"}',
                             header_lines({"Content-Type": "application/json", "Authorization": "Bearer other"}),
                             2, 5, Transfer())
    reply = await run(transport, embedding)
    assert reply.code == 200 and ujson.loads(reply.body)["object"] == "list"
    assert upstream.requests[-1].headers["authorization"] == "Bearer other"
    assert upstream.requests[-1].path.endswith("/embeddings")

    assert len(transport.http._curls) == 1, "the test meant to use one handle"
    assert transport.idle()
    assert transport.http._watched == {}, "a finished call's socket is still watched"


@pytest.mark.gen_test
async def test_a_timeout_ends_a_silent_call_and_the_next_call_has_its_own(transport: Transport, upstream: MockUpstream) -> None:
    upstream.push(Behavior(hang=True))
    reply = await run(transport, call(upstream, chat(), timeout=0.3))
    assert reply.code == 599 and getattr(reply.error, "errno", None) == pycurl.E_OPERATION_TIMEDOUT

    upstream.push(Behavior(delay=0.5))
    reply = await run(transport, call(upstream, chat(), timeout=5))
    assert reply.code == 200, "the earlier call's 0.3 s timeout stayed on the handle"


@pytest.mark.gen_test
async def test_a_queued_call_that_was_given_up_is_refused_when_its_turn_comes(
    transport: Transport, upstream: MockUpstream
) -> None:
    upstream.push(Behavior(delay=0.3))
    first = asyncio.ensure_future(run(transport, call(upstream, chat())))
    given_up = Transfer()
    second = call(upstream, chat())
    second.transfer = given_up
    queued = asyncio.ensure_future(run(transport, second))
    given_up.abort()
    assert (await first).code == 200
    reply = await queued
    assert reply.code == 599 and type(reply.error).__name__ == "TransferRefused"
    assert len(upstream.requests) == 1, "a refused call reached the upstream"
    reply = await run(transport, call(upstream, chat()))
    assert reply.code == 200


@pytest.mark.gen_test
async def test_a_fast_large_stream_arrives_whole_and_in_order(
    transport: Transport, upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # About 4 MB as fast as the mock can write it, with at most 1 KB allowed to wait for the loop: libcurl is
    # paused and resumed on the way many times; nothing may be lost, repeated or reordered. (The bound is below
    # one read, so the second read of a loop turn pauses however the mock's writes and the loop interleave.)
    monkeypatch.setattr(transport_module, "STREAM_BUFFER", 1024)
    pauses = 0
    write = transport_module._Handle.write

    def counting_write(handle: transport_module._Handle, chunk: bytes) -> int | None:
        nonlocal pauses
        answer = write(handle, chunk)
        pauses += answer == pycurl.WRITEFUNC_PAUSE
        return answer

    monkeypatch.setattr(transport_module._Handle, "write", counting_write)
    upstream.push(Behavior(chunks=200, chunk_padding=20_000))
    received: list[bytes] = []
    streamed = UpstreamCall(upstream.base_url + "/chat/completions", chat(stream=True), LINES, 2, 0, Transfer(),
                            streaming_callback=received.append)
    reply = await run(transport, streamed)
    assert reply.code == 200
    text = b"".join(received)
    assert len(text) > 4_000_000
    events = [e for e in text.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    deltas = [ujson.loads(e[6:]) for e in events[:-1]]
    assert len(deltas) == 201  # 200 content deltas and the final chunk
    assert all(len(d["choices"][0]["delta"].get("content", "")) >= 20_000 for d in deltas[:200])
    assert pauses > 0, "the test meant libcurl to be paused by a full buffer"


@pytest.mark.gen_test
async def test_an_idle_socket_the_upstream_closes_leaves_the_epoll_set_and_the_next_call_reconnects() -> None:
    # libcurl lets go of a connection's socket after each call; the transport leaves it in its epoll set. When the
    # upstream then closes the idle connection, the socket turns readable for good (level-triggered): it must leave
    # the set instead of waking the loop on every turn, and the next call must get a new connection.
    connections: list[asyncio.StreamWriter] = []
    answer = b'{"object":"chat.completion"}'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(answer)
            writer.write(head + answer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    transport = Transport(max_connections=1, use_epoll=True)
    http = transport.http
    try:
        reply = await run(transport, UpstreamCall(url, chat(), LINES, 2, 5, Transfer()))
        assert reply.code == 200 and reply.body == answer
        idle = {fd for fd in http._in_epoll - set(http._watched) if fd_kind(fd).startswith("socket:")}
        assert idle, "the finished call's socket was meant to stay in the epoll set"
        connections[0].close()  # the upstream ends the keep-alive connection
        for _ in range(1000):  # loop turns, bounded: the set reports the hang-up and the socket leaves it
            if not idle & http._in_epoll:
                break
            await asyncio.sleep(0)
        assert not idle & http._in_epoll, "a hung-up idle socket is still in the epoll set"
        reply = await run(transport, UpstreamCall(url, chat(), LINES, 2, 5, Transfer()))
        assert reply.code == 200 and reply.body == answer
        assert len(connections) == 2
    finally:
        transport.close()
        server.close()
        for writer in connections:
            writer.close()


def fd_kind(fd: int) -> str:
    """What a descriptor is (``socket:[...]``, ``anon_inode:[eventfd]``), from /proc."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
