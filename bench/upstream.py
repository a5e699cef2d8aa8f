"""A lean OpenAI-compatible upstream for the benchmark, which answers Anthropic's Messages API too.

A raw asyncio :class:`asyncio.Protocol` server speaking just enough
HTTP/1.1 (keep-alive, Content-Length bodies) to stand in for a provider
without becoming the bottleneck:

* ``POST .../chat/completions`` without ``"stream": true``: a canned chat
  completion, written in one call from prebuilt bytes;
* with ``"stream": true``: a chunked SSE stream of canned chunks, the first one
  at once, then one every ``bench_interval_ms`` until ``bench_chunks`` chunks
  have gone, then ``data: [DONE]``. Both come from the request's
  ``metadata`` (strings, as OpenAI's ``metadata`` field wants), which the node
  forwards untouched; ``bench_tag`` names the stream for the abort probe;
* ``POST .../messages`` (Anthropic's Messages API, what the node sends an
  ``anthropic/`` model): the same answers in Messages' shape. JSON: a canned
  message of the same text and byte size as the chat completion, with usage;
  a stream: ``message_start``, ``content_block_start`` and ``ping`` with the
  first text delta, then one ``content_block_delta`` per tick (as many text
  events as the chat stream has, at the same pace), then
  ``content_block_stop`` and ``message_delta`` (usage) where the chat stream
  writes its last chunk, and ``message_stop`` where it writes ``[DONE]``: the
  same writes at the same moments. The node sends no free ``metadata`` to
  Messages, only ``metadata.user_id`` (the chat request's ``user``): there
  the stream's shape is read from ``bench_chunks=N bench_interval_ms=MS
  bench_tag=T`` (what ``clients.stream_body`` puts in ``user``), and so it is
  from a chat request's ``user`` without such ``metadata`` (a Messages request
  the node translated to chat: ``clients.messages_stream_body``);
* ``GET /_bench/stats``: open connections, open streams, requests served;
* ``GET /_bench/closed?tag=T&wait=S``: waits (at most S seconds) until the
  connection that carried stream ``T`` has closed, and answers the
  ``time.monotonic()`` of that moment (comparable across processes on Linux),
  or ``null``.

Run: ``python bench/upstream.py [--port 0]``; it prints ``listening on
HOST:PORT`` once ready and stops on SIGTERM/SIGINT, when its parent exits, or
after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from tools.serving import stop_on_signals, wait_stopped  # noqa: E402

MAX_HEAD = 64 * 1024
MAX_STREAM_CHUNKS = 100_000
MAX_WAIT = 30.0

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The capital of France is Paris. It has been the country's capital since the 10th century.",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 21, "total_tokens": 141},
    },
    separators=(",", ":"),
).encode()
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_COMPLETION)).encode()
    + b"\r\n\r\n"
    + _COMPLETION
)
_MESSAGE_TEXT = "The capital of France is Paris. It has been the country's capital since the 10th century."


def _message(message_id: str) -> bytes:
    return json.dumps(
        {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": "gpt-4o-mini-2024-07-18",
            "content": [{"type": "text", "text": _MESSAGE_TEXT}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 120, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 21,
                "service_tier": "standard",
            },
        },
        separators=(",", ":"),
    ).encode()


# The Messages answer (its usage as Anthropic's API gives it), its id padded to the chat completion's size.
_MESSAGE = _message("msg_bench" + "0" * max(0, len(_COMPLETION) - len(_message("msg_bench"))))
MESSAGES_JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_MESSAGE)).encode()
    + b"\r\n\r\n"
    + _MESSAGE
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
NOT_FOUND = b'HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{"error":"not found"}'


def _sse_chunk(delta: dict[str, Any], finish: str | None) -> bytes:
    """One SSE event, framed as one HTTP chunk."""
    event = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return _http_chunk(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


TOKEN_CHUNK = _sse_chunk({"content": " token"}, None)
LAST_CHUNK = _sse_chunk({}, "stop")
DONE = _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def _messages_event(kind: str, data: dict[str, Any]) -> bytes:
    """One Messages SSE event (``event:`` and ``data:`` lines), framed as one HTTP chunk."""
    payload = json.dumps({"type": kind, **data}, separators=(",", ":")).encode()
    return _http_chunk(b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n")


# A Messages stream, in the chat stream's writes: the opening events go with the first text delta, the
# closing ones where the chat stream writes its last chunk and its [DONE].
MESSAGES_OPEN = b"".join(
    (
        _messages_event(
            "message_start",
            {
                "message": {
                    "id": "msg_bench0000000000000000000000", "type": "message", "role": "assistant",
                    "model": "gpt-4o-mini-2024-07-18", "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": 120, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                              "output_tokens": 1},
                }
            },
        ),
        _messages_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _messages_event("ping", {}),
    )
)
TEXT_DELTA = _messages_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " token"}})
MESSAGES_LAST = _messages_event("content_block_stop", {"index": 0}) + _messages_event(
    "message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 21}}
)
MESSAGES_DONE = _messages_event("message_stop", {}) + b"0\r\n\r\n"


class State:
    """Counters and abort bookkeeping shared by every connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.streams = 0
        self.requests = 0
        self.closed: dict[str, float] = {}
        self.waiters: dict[str, list[asyncio.Future[float]]] = {}

    def mark_closed(self, tag: str, when: float) -> None:
        self.closed[tag] = when
        for waiter in self.waiters.pop(tag, []):
            if not waiter.done():
                waiter.set_result(when)

    async def wait_closed(self, tag: str, timeout: float) -> float | None:
        if tag in self.closed:
            return self.closed[tag]
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(tag, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return None


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer them, one at a time."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False  # a stream or a control request is being answered
        self.tag = ""
        self.left = 0
        self.interval = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.token, self.last, self.done = TOKEN_CHUNK, LAST_CHUNK, DONE  # the stream's bytes: chat or Messages

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.state.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        now = time.monotonic()
        state = self.state
        state.connections -= 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            state.streams -= 1
        if self.tag:
            state.mark_closed(self.tag, now)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        data = self.buf
        pos = 0
        transport = self.transport
        while not self.busy and transport is not None:
            end = data.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(data) - pos > MAX_HEAD:
                    transport.close()
                break
            raw = data[pos:end]
            head = raw.lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else len(head)])
            start = end + 4
            if len(data) < start + length:
                break
            self.state.requests += 1
            self._handle(raw, head, data[start : start + length])
            pos = start + length
        self.buf = data[pos:]

    def _handle(self, raw: bytes, head: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if head.startswith(b"post "):
            messages = head[5 : head.find(b" ", 5)].endswith(b"/messages")
            if b'"stream":true' in body or b'"stream": true' in body:
                self._start_stream(body, messages)
            else:
                transport.write(MESSAGES_JSON_RESPONSE if messages else JSON_RESPONSE)
        elif head.startswith(b"get /_bench/"):
            self.busy = True
            target = raw[4 : raw.find(b" ", 4)].decode()
            asyncio.ensure_future(self._control(target))
        else:
            transport.write(NOT_FOUND)

    # -- streams ---------------------------------------------------------------------

    def _start_stream(self, body: bytes, messages: bool) -> None:
        request = json.loads(body)
        meta = request.get("metadata") or {}
        if "bench_chunks" not in meta:  # Messages' only metadata: user_id, "bench_chunks=N ..."; a chat request
            words = meta.get("user_id", "") if messages else request.get("user", "")  # translated from it: user
            meta = dict(item.partition("=")[::2] for item in str(words).split())
        chunks = min(max(int(meta.get("bench_chunks", 20)), 1), MAX_STREAM_CHUNKS)
        self.interval = max(float(meta.get("bench_interval_ms", 10)), 0.0) / 1000
        self.tag = str(meta.get("bench_tag", ""))
        self.busy = True
        self.left = chunks - 1
        self.state.streams += 1
        if messages:
            self.token, self.last, self.done = TEXT_DELTA, MESSAGES_LAST, MESSAGES_DONE
            head = STREAM_HEAD + MESSAGES_OPEN
        else:
            self.token, self.last, self.done = TOKEN_CHUNK, LAST_CHUNK, DONE
            head = STREAM_HEAD
        assert self.transport is not None
        self.transport.write(head + (self.token if self.left else self.last))
        self.timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.left > 0:
            self.left -= 1
            transport.write(self.token if self.left else self.last)
            self.timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
            return
        transport.write(self.done)
        self.timer = None
        self.state.streams -= 1
        self.busy = False
        if self.buf:
            self._process()

    # -- control -----------------------------------------------------------------------

    async def _control(self, target: str) -> None:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        state = self.state
        if url.path == "/_bench/stats":
            answer: dict[str, Any] = {"connections": state.connections, "streams": state.streams, "requests": state.requests}
        elif url.path == "/_bench/closed":
            wait = min(float(query.get("wait", "0")), MAX_WAIT)
            answer = {"closed_at": await state.wait_closed(query.get("tag", ""), wait)}
        else:
            answer = {"error": "unknown control path"}
        payload = json.dumps(answer).encode()
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
        self.busy = False
        if self.buf:
            self._process()


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in ((wanted, max(hard, wanted)), (min(wanted, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, target)
            return target[0]
        except (ValueError, OSError):
            continue
    return soft


async def serve(host: str, port: int, max_seconds: float) -> None:
    """Serve until a signal, the parent's exit, or ``max_seconds``."""
    loop = asyncio.get_running_loop()
    stop = stop_on_signals()
    state = State()
    server = await loop.create_server(lambda: UpstreamProtocol(state), host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await wait_stopped(stop, watch_parent=True, max_seconds=max_seconds)
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop by itself after this long")
    args = parser.parse_args()
    raise_fd_limit()
    asyncio.run(serve(args.host, args.port, args.max_seconds))


if __name__ == "__main__":
    main()
