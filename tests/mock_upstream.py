"""A mock upstream (a fake LLM provider) for the test suite: OpenAI-compatible, and Anthropic's Messages API.

It speaks OpenAI's API under ``/v1/chat/completions``, ``/responses``,
``/embeddings``, ``/completions`` and ``/models``, and Anthropic's Messages
API under ``/v1/messages`` (``x-api-key`` or bearer auth, Anthropic-shaped message
objects, typed SSE events and ``{"type": "error", ...}`` error bodies), both
shaped by the same :class:`Behavior`.

The mock is a :class:`tests.loopback_server.LoopbackServer`: a Tornado
``HTTPServer`` on its own asyncio event loop in a background thread, bound to
a free loopback port, so tests whose own loop is busy, or that use synchronous
clients, can never deadlock it::

    up = MockUpstream()
    up.start()
    up.push(Behavior(status=503))            # the next request gets a 503
    up.set_behavior("slow", Behavior(delay=1))
    ...                                      # point the code under test at up.base_url
    assert up.wait_for(lambda u: len(u.requests) == 2)
    up.stop()

Run ``python -m tests.mock_upstream --port 9000`` to serve it by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import copy
import dataclasses
import json
import signal
import threading
import time
from typing import Any

import tornado.iostream
import tornado.web

from tests.loopback_server import LoopbackServer, json_or_none

MODEL_ID = "mock-model"


@dataclasses.dataclass
class Behavior:
    """How the mock answers a chat completion request.

    Precedence: ``drop_before_headers``, ``hang``, ``delay``; then the body is
    ``raw_body`` (verbatim, ``content_type`` default JSON), else ``json_body``,
    else an OpenAI error when ``status >= 400``, else a generated completion:
    a ``chat.completion`` (with ``tool_call`` if set) or, for ``"stream": true``,
    SSE with ``comments`` first, ``content`` split over ``chunks`` deltas (each
    padded with ``chunk_padding`` "x"), then for ``tool_call`` its deltas (id and name,
    then the arguments in 2 or more pieces; finish_reason ``tool_calls``), a final chunk
    and ``[DONE]``.
    ``drop_after_chunks`` / ``hang_after_chunks`` count those ``data:`` events.

    On ``/v1/messages`` (Anthropic) the same fields apply to a ``message``
    object (errors in Anthropic's shape): a ``thinking`` block first when
    ``thinking`` is set, a text block (unless ``content`` is empty and there is
    a ``tool_call``), then a ``tool_use`` block for ``tool_call``; its stream is
    ``message_start``, each block's ``content_block_start`` / deltas /
    ``content_block_stop`` (a ``ping`` after the first start), ``message_delta``
    and ``message_stop``, and every one of those events counts as a chunk.
    ``cache_read`` / ``cache_write`` are reported in its usage, and
    ``stop_reason`` replaces the computed ``end_turn`` / ``tool_use``.
    ``headers`` are added to every answer. ``raw_response`` is written to the
    socket as it is (status line and all), which is then closed: for answers
    no HTTP server would send. ``error_body_bytes`` answers ``status`` with a
    body of that many bytes, sent in 16 KB chunks as fast as the client reads.
    """

    status: int = 200
    content: str = "Hello from mock"
    json_body: dict | None = None
    raw_body: bytes | None = None
    content_type: str | None = None
    headers: dict | None = None
    error_message: str | None = None
    delay: float = 0.0
    chunks: int = 3
    chunk_delay: float = 0.0
    chunk_padding: int = 0
    comments: list[str] = dataclasses.field(default_factory=list)
    drop_after_chunks: int | None = None
    drop_before_headers: bool = False
    hang: bool = False
    hang_after_chunks: int | None = None
    tool_call: dict | None = None
    raw_response: bytes | None = None
    raw_then_hang: bool = False  # after raw_response, keep the connection open (silent) until the client leaves
    error_body_bytes: int = 0
    usage_style: str = "openai"  # streamed usage, when asked: "openai" (a usage-only chunk), "groq" (x_groq.usage), "none"
    split_usage: bool = False  # send the usage-only chunk in two writes, a moment apart
    # Anthropic Messages only (/v1/messages):
    cache_read: int = 0  # usage.cache_read_input_tokens
    cache_write: int = 0  # usage.cache_creation_input_tokens
    stop_reason: str | None = None  # e.g. "max_tokens", "refusal", "stop_sequence", "pause_turn"; None: computed
    thinking: str | None = None  # a thinking block (signature "sig") before the text


@dataclasses.dataclass
class Recorded:
    """One request as the mock saw it, and what the mock did with it.

    ``closed_at`` is set when the connection closed before the answer was
    complete: the client aborted (or :meth:`MockUpstream.stop` cut it).

    ``chunks_sent`` and ``sent_times`` count the SSE ``data:`` events of a
    stream (content deltas, the final chunk and ``[DONE]``; on ``/v1/messages``
    every ``event:`` of Anthropic's stream, ``ping`` included); comments are not
    counted, and JSON replies leave them at 0 and empty.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    received_at: float
    finished_at: float | None = None
    closed_at: float | None = None
    chunks_sent: int = 0
    sent_times: list[float] = dataclasses.field(default_factory=list)
    sent_bytes: bytearray = dataclasses.field(default_factory=bytearray)  # a stream's events, as written


class _ClientGone(Exception):
    """Raised inside a handler when the client closed its connection."""


def error_body(message: str, status: int) -> dict:
    """Return an OpenAI-shaped error body for ``status``."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's ``error.type`` by HTTP status; other 4xx are ``invalid_request_error``, other 5xx ``api_error``."""


def anthropic_error_body(message: str, status: int) -> dict:
    """Return an Anthropic-shaped error body for ``status``."""
    kind = ANTHROPIC_ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def split_content(text: str, pieces: int) -> list[str]:
    """Split ``text`` into ``pieces`` consecutive parts of near-equal length."""
    if pieces <= 0:
        return []
    size, extra = divmod(len(text), pieces)
    parts, start = [], 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts


def _usage(request: Any, completion: str) -> dict:
    """Return rough whitespace-token counts for a request and its answer."""
    prompt = 0
    messages = request.get("messages") if isinstance(request, dict) else None
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            prompt += len(content.split())
    done = len(completion.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": done,
        "total_tokens": prompt + done,
    }


def _words(content: Any) -> int:
    """Whitespace-separated words of Anthropic content: a string, or the ``text`` of its text blocks."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(
            len(block["text"].split())
            for block in content
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
        )
    return 0


def _anthropic_input_tokens(request: dict) -> int:
    """Rough input tokens of a Messages request: the words of its system prompt and message texts."""
    count = _words(request.get("system"))
    messages = request.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict):
            count += _words(message.get("content"))
    return count


def _chunk(base: dict, delta: dict, finish_reason: str | None) -> dict[str, Any]:
    """Build one ``chat.completion.chunk`` from its common fields and a delta."""
    return {
        **base,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


class MockUpstream(LoopbackServer):
    """A fake OpenAI-compatible (and Anthropic Messages) provider serving from a background thread."""

    thread_name = "mock-upstream"
    url_path = "/v1"

    def __init__(self) -> None:
        """Create a stopped mock; call :meth:`start` to serve."""
        super().__init__()
        self._records: list[Recorded] = []
        self._by_model: dict[str, Behavior] = {}
        self._by_key: dict[str, Behavior] = {}
        self._queue: collections.deque[Behavior] = collections.deque()
        self._default = Behavior()
        self._in_flight = 0
        self._max_in_flight = 0
        self._ids = 0

    def make_app(self) -> tornado.web.Application:
        """Chat completions, responses, embeddings, completions, models, Anthropic messages; OpenAI-shaped 404 elsewhere."""
        return tornado.web.Application(
            [
                (r"/(?:v1/)?chat/completions", _ChatHandler, {"mock": self}),
                (r"/(?:v1/)?messages", _MessagesHandler, {"mock": self}),
                (r"/(?:v1/)?messages/count_tokens", _CountTokensHandler, {"mock": self}),
                (r"/(?:v1/)?responses", _ResponsesHandler, {"mock": self}),
                (r"/(?:v1/)?embeddings", _EmbeddingsHandler, {"mock": self}),
                (r"/(?:v1/)?completions", _CompletionsHandler, {"mock": self}),
                (r"/(?:v1/)?models", _ModelsHandler, {"mock": self}),
            ],
            default_handler_class=_NotFoundHandler,
            default_handler_args={"mock": self},
        )

    # ---- configuration ----------------------------------------------------

    @property
    def default(self) -> Behavior:
        """Behaviour used when no queued or per-model behaviour applies."""
        with self._cond:
            return self._default

    @default.setter
    def default(self, behavior: Behavior) -> None:
        with self._cond:
            self._default = behavior

    def set_behavior(self, model: str, behavior: Behavior) -> None:
        """Answer requests whose JSON ``model`` equals ``model`` with ``behavior``."""
        with self._cond:
            self._by_model[model] = behavior

    def set_key_behavior(self, suffix: str, behavior: Behavior) -> None:
        """Answer requests whose key ends with ``suffix`` with ``behavior`` (before per-model behaviours).

        The key is the bearer token of ``Authorization``, or on ``/v1/messages``
        the ``x-api-key`` header when there is one.
        """
        with self._cond:
            self._by_key[suffix] = behavior

    def push(self, behavior: Behavior) -> None:
        """Queue ``behavior`` for the next chat request (FIFO, any model)."""
        with self._cond:
            self._queue.append(behavior)

    def reset(self) -> None:
        """Forget records, behaviours (default included), the queue and counters.

        ``in_flight`` keeps counting requests still being answered;
        ``max_in_flight`` restarts from it.
        """
        with self._cond:
            self._records.clear()
            self._by_model.clear()
            self._by_key.clear()
            self._queue.clear()
            self._default = Behavior()
            self._max_in_flight = self._in_flight
            self._cond.notify_all()

    def _choose(self, body: Any, authorization: str = "", api_key: str = "") -> Behavior:
        """Pick (and consume, if queued) the behaviour for a request body and its key.

        The key is ``api_key`` (an ``x-api-key`` header) when not empty, else
        the bearer token of ``authorization``. Precedence: the queue, the
        key's suffix, the model, the default.
        """
        with self._cond:
            if self._queue:
                return self._queue.popleft()
            key = api_key or (authorization[7:] if authorization.startswith("Bearer ") else None)
            if self._by_key and key is not None:
                for suffix, behavior in self._by_key.items():
                    if key.endswith(suffix):
                        return behavior
            model = body.get("model") if isinstance(body, dict) else None
            if isinstance(model, str) and model in self._by_model:
                return self._by_model[model]
            return self._default

    # ---- observation ------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        """A snapshot (deep enough to be safe) of every request since reset."""
        with self._cond:
            return [
                dataclasses.replace(
                    r,
                    headers=dict(r.headers),
                    json=copy.deepcopy(r.json),
                    sent_times=list(r.sent_times),
                    sent_bytes=bytearray(r.sent_bytes),
                )
                for r in self._records
            ]

    @property
    def in_flight(self) -> int:
        """Number of requests being handled now."""
        with self._cond:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """Highest number of requests handled at once since reset."""
        with self._cond:
            return self._max_in_flight

    # ---- called from handlers (mock thread) -------------------------------

    def _begin(self, record: Recorded) -> None:
        """Record a new request and count it in flight."""
        with self._cond:
            self._records.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._cond.notify_all()

    def _end(self, record: Recorded, *, finished: bool) -> None:
        """Mark a request finished (or aborted by its client), no longer in flight."""
        with self._cond:
            if finished:
                record.finished_at = time.monotonic()
            else:
                record.closed_at = time.monotonic()
            self._in_flight -= 1
            self._cond.notify_all()

    def _sent(self, record: Recorded) -> None:
        """Count one flushed stream event."""
        with self._cond:
            record.chunks_sent += 1
            record.sent_times.append(time.monotonic())
            self._cond.notify_all()

    def _next_number(self) -> int:
        """Return a fresh serial number for ids."""
        with self._cond:
            self._ids += 1
            return self._ids

    def _next_id(self) -> str:
        """Return a fresh completion id."""
        return f"chatcmpl-mock-{self._next_number()}"


class _BaseHandler(tornado.web.RequestHandler):
    """Records every request and tracks in-flight count and client disconnects."""

    def initialize(self, mock: MockUpstream) -> None:
        """Keep the mock and prepare the client-gone event."""
        self.mock = mock
        self.record: Recorded | None = None
        self.client_gone = asyncio.Event()
        self._ended = False

    def prepare(self) -> None:
        """Record the request as soon as its body has arrived."""
        self.record = Recorded(
            method=self.request.method or "",
            path=self.request.path,
            headers={k.lower(): v for k, v in self.request.headers.get_all()},
            body=self.request.body,
            json=json_or_none(self.request),
            received_at=time.monotonic(),
        )
        self.mock._begin(self.record)

    def _end(self, *, finished: bool) -> None:
        """Report the end of this request to the mock once."""
        if self.record is not None and not self._ended:
            self._ended = True
            self.mock._end(self.record, finished=finished)

    def on_connection_close(self) -> None:
        """The client went away before the answer was complete."""
        self.client_gone.set()
        self._end(finished=False)

    def finish(self, chunk: Any = None) -> Any:
        """Record the answer as finished before its last bytes go out, so no client sees it first."""
        self._end(finished=True)
        return super().finish(chunk)

    def on_finish(self) -> None:
        """The answer is complete (or was deliberately cut off)."""
        self._end(finished=True)

    def error_json(self, message: str, status: int) -> dict:
        """The error body for ``status``: OpenAI's shape (Anthropic's on ``/v1/messages``)."""
        return error_body(message, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Answer Tornado-generated errors (405, 500, ...) in the handler's error shape."""
        self.finish(self.error_json(self._reason, status_code))

    def send_json(self, status: int, body: Any) -> None:
        """Finish with a JSON body."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    async def pause(self, seconds: float | None) -> None:
        """Wait ``seconds`` (None: forever); raise ``_ClientGone`` if client left."""
        if seconds is not None and seconds <= 0:
            if self.client_gone.is_set():
                raise _ClientGone
            return
        try:
            await asyncio.wait_for(self.client_gone.wait(), seconds)
        except TimeoutError:
            return
        raise _ClientGone

    def drop(self) -> None:
        """Close the TCP connection abruptly, as a failing provider would."""
        self._end(finished=True)
        self.request.connection.stream.close()


class _NotFoundHandler(_BaseHandler):
    """Any unknown path: an OpenAI-shaped 404."""

    def prepare(self) -> None:
        """Record the request, then answer 404."""
        super().prepare()
        self.send_json(404, error_body(f"Unknown path {self.request.path}", 404))


class _ModelsHandler(_BaseHandler):
    """``GET /v1/models``: one model."""

    def get(self) -> None:
        """List the mock's single model."""
        model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "mock"}
        self.send_json(200, {"object": "list", "data": [model]})


class _ChatHandler(_BaseHandler):
    """``POST /v1/chat/completions``: JSON or SSE answers shaped by a Behavior."""

    streams = True  # whether ``"stream": true`` gets an SSE answer
    key_header: str | None = None  # a header carrying the API key, besides ``Authorization: Bearer``

    async def post(self) -> None:
        """Answer with the chosen behaviour; stop quietly if the client leaves."""
        assert self.record is not None
        body = self.record.json
        api_key = self.request.headers.get(self.key_header, "") if self.key_header else ""
        behavior = self.mock._choose(body, self.request.headers.get("Authorization", ""), api_key)
        with contextlib.suppress(_ClientGone, tornado.iostream.StreamClosedError):
            await self.answer(behavior, body if isinstance(body, dict) else None)

    async def answer(self, b: Behavior, body: dict | None) -> None:
        """Produce the response described by ``b`` for request ``body``."""
        if b.drop_before_headers:
            self.drop()
            return
        if b.raw_response is not None:
            if not b.raw_then_hang:
                self._end(finished=True)
            stream = self.request.connection.detach()
            self._finished = True  # the socket is ours now: Tornado must not write a response of its own
            await stream.write(b.raw_response)
            if b.raw_then_hang:
                with contextlib.suppress(tornado.iostream.StreamClosedError):
                    await stream.read_until_close()  # whatever the client sends, until it goes
                self._end(finished=False)
            stream.close()
            return
        if b.hang:
            await self.pause(None)
        await self.pause(b.delay)
        for name, value in (b.headers or {}).items():
            self.set_header(name, value)
        if b.error_body_bytes:
            await self.endless_error(b)
        elif b.raw_body is not None:
            self.set_status(b.status)
            self.set_header("Content-Type", b.content_type or "application/json")
            self.finish(b.raw_body)
        elif b.json_body is not None:
            self.send_json(b.status, b.json_body)
        elif b.status >= 400:
            self.send_json(
                b.status, self.error_json(b.error_message or "mock error", b.status)
            )
        elif body is None:
            self.send_json(400, self.error_json("Request body is not a JSON object", 400))
        elif body.get("stream") is True and self.streams:
            await self.stream(b, body)
        else:
            self.send_json(b.status, self.completion(b, body))

    async def endless_error(self, b: Behavior) -> None:
        """An error status whose body goes on for ``error_body_bytes`` (until the client leaves)."""
        self.set_status(b.status)
        self.set_header("Content-Type", "text/plain")
        piece = b"x" * 16384
        left = b.error_body_bytes
        while left > 0:
            if self.client_gone.is_set():
                raise _ClientGone
            self.write(piece[:left])
            left -= len(piece)
            try:
                await self.flush()
            except tornado.iostream.StreamClosedError:
                self._end(finished=False)  # the client stopped reading before the end
                raise
        self.finish()

    def completion(self, b: Behavior, body: dict) -> dict:
        """Build a ``chat.completion`` object."""
        message: dict[str, Any] = {"role": "assistant", "content": b.content}
        finish_reason = "stop"
        if b.tool_call is not None:
            function = {
                "name": b.tool_call["name"],
                "arguments": b.tool_call["arguments"],
            }
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": function}
                ],
            }
            finish_reason = "tool_calls"
        return {
            "id": self.mock._next_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish_reason}
            ],
            "usage": _usage(body, b.content),
        }

    def events(self, b: Behavior, body: dict) -> list[str]:
        """The SSE frames of a stream: content deltas, a final chunk (usage when asked), ``[DONE]``."""
        base = {
            "id": self.mock._next_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model"),
        }
        pieces = [p + "x" * b.chunk_padding for p in split_content(b.content, b.chunks)]
        events: list[dict | str] = []
        for i, piece in enumerate(pieces):
            delta = (
                {"role": "assistant", "content": piece}
                if i == 0
                else {"content": piece}
            )
            events.append(_chunk(base, delta, None))
        if b.tool_call is not None:
            events.extend(_chunk(base, {"tool_calls": [call]}, None) for call in self.tool_call_deltas(b.tool_call))
        final = _chunk(base, {}, "tool_calls" if b.tool_call is not None else "stop")
        options = body.get("stream_options")
        asked = isinstance(options, dict) and options.get("include_usage") is True
        usage = _usage(body, "".join(pieces))
        if b.usage_style == "groq":
            final["x_groq"] = {"id": "req_1", "usage": usage}
        events.append(final)
        if asked and b.usage_style == "openai":
            events.append({**base, "choices": [], "usage": usage})
        events.append("[DONE]")
        return [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]

    @staticmethod
    def tool_call_deltas(tool_call: dict) -> list[dict]:
        """A streamed tool call as OpenAI sends one: id, type and name first, then the arguments in 2 or more pieces."""
        arguments = str(tool_call.get("arguments", "{}"))
        head = {"index": 0, "id": "call_1", "type": "function", "function": {"name": tool_call["name"], "arguments": ""}}
        pieces = split_content(arguments, max(2, min(len(arguments), 3)))
        return [head] + [{"index": 0, "function": {"arguments": piece}} for piece in pieces]

    async def stream(self, b: Behavior, body: dict) -> None:
        """Send an SSE stream: comments first, then :meth:`events`, with the behaviour's drops and hangs."""
        self.request.connection.stream.set_nodelay(True)
        self.set_status(b.status)
        self.set_header("Content-Type", b.content_type or "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        for comment in b.comments:
            self.write(comment if comment.endswith("\n") else comment + "\n")
            await self.flush()
        assert self.record is not None
        for sent, frame in enumerate(self.events(b, body)):
            if sent == b.drop_after_chunks:
                self.drop()
                return
            if sent == b.hang_after_chunks:
                await self.pause(None)
            if sent and b.chunk_delay:
                await self.pause(b.chunk_delay)
            # recorded as it is handed to the socket, so a client never sees more than is counted
            self.mock._sent(self.record)
            self.record.sent_bytes += frame.encode()
            if b.split_usage and '"choices": []' in frame:
                half = frame.index('"choices"') - 5  # cut before "choices": the node cannot tell yet what this is
                self.write(frame[:half])
                await self.flush()
                await self.pause(0.05)
                frame = frame[half:]
            self.write(frame)
            await self.flush()
        self.finish()


class _ResponsesHandler(_ChatHandler):
    """``POST /v1/responses``: a ``response`` object, or its typed events (``event:`` lines) when streamed."""

    def completion(self, b: Behavior, body: dict) -> dict:
        return self.response_object(b, body, "completed")

    def response_object(self, b: Behavior, body: dict, status: str) -> dict:
        text = b.content
        usage = _usage({"messages": [{"content": body.get("input") if isinstance(body.get("input"), str) else ""}]}, text)
        return {
            "id": "resp_" + self.mock._next_id(), "object": "response", "created_at": int(time.time()), "status": status,
            "model": body.get("model"),
            "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                      "total_tokens": usage["total_tokens"]},
        }

    def events(self, b: Behavior, body: dict) -> list[str]:
        def frame(kind: str, data: dict) -> str:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

        frames = [frame("response.created", {"response": self.response_object(b, body, "in_progress")})]
        for piece in split_content(b.content, b.chunks):
            frames.append(frame("response.output_text.delta", {"item_id": "msg_1", "output_index": 0, "content_index": 0,
                                                               "delta": piece}))
        frames.append(frame("response.completed", {"response": self.response_object(b, body, "completed")}))
        return frames


class _EmbeddingsHandler(_ChatHandler):
    """``POST /v1/embeddings``: one small vector per input (never streamed)."""

    streams = False

    def completion(self, b: Behavior, body: dict) -> dict:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))]
        return {"object": "list", "data": data, "model": body.get("model"),
                "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}}


class _CompletionsHandler(_ChatHandler):
    """``POST /v1/completions``: a ``text_completion``, or its chunks when streamed."""

    def completion(self, b: Behavior, body: dict) -> dict:
        return {"id": "cmpl-" + self.mock._next_id(), "object": "text_completion", "created": int(time.time()),
                "model": body.get("model"), "choices": [{"index": 0, "text": b.content, "finish_reason": "stop",
                                                         "logprobs": None}],
                "usage": _usage({"messages": [{"content": body.get("prompt")}]}, b.content)}

    def events(self, b: Behavior, body: dict) -> list[str]:
        base = {"id": "cmpl-" + self.mock._next_id(), "object": "text_completion", "created": int(time.time()),
                "model": body.get("model")}
        frames = [{**base, "choices": [{"index": 0, "text": piece, "finish_reason": None, "logprobs": None}]}
                  for piece in split_content(b.content, b.chunks)]
        frames.append({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}]})
        return [f"data: {json.dumps(f)}\n\n" for f in frames] + ["data: [DONE]\n\n"]


class _MessagesHandler(_ChatHandler):
    """``POST /v1/messages``: Anthropic's Messages API, a ``message`` object or its typed SSE events."""

    key_header = "x-api-key"

    def prepare(self) -> None:
        """Record the request; every answer carries a ``request-id``, as Anthropic's do."""
        super().prepare()
        self.set_header("request-id", f"req_mock_{self.mock._next_number()}")

    def error_json(self, message: str, status: int) -> dict:
        return anthropic_error_body(message, status)

    def stop_reason(self, b: Behavior) -> str:
        """The behaviour's ``stop_reason``, else ``tool_use`` for a tool call and ``end_turn`` otherwise."""
        if b.stop_reason is not None:
            return b.stop_reason
        return "tool_use" if b.tool_call is not None else "end_turn"

    def stop_sequence(self, b: Behavior, body: dict) -> str | None:
        """The request's first ``stop_sequences`` entry when the message stopped on one, else None."""
        sequences = body.get("stop_sequences")
        if self.stop_reason(b) == "stop_sequence" and isinstance(sequences, list) and sequences:
            return sequences[0]
        return None

    def usage(self, b: Behavior, body: dict, output_tokens: int) -> dict:
        """Anthropic usage: input words of the request, the behaviour's cache counts, ``output_tokens``."""
        return {
            "input_tokens": _anthropic_input_tokens(body),
            "cache_creation_input_tokens": b.cache_write,
            "cache_read_input_tokens": b.cache_read,
            "output_tokens": output_tokens,
        }

    def message(self, b: Behavior, body: dict, content: list[dict], usage: dict, *, done: bool) -> dict:
        """A ``message`` object; not ``done``: as in ``message_start`` (no stop reason yet)."""
        return {
            "id": f"msg_mock_{self.mock._next_number()}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model"),
            "content": content,
            "stop_reason": self.stop_reason(b) if done else None,
            "stop_sequence": self.stop_sequence(b, body) if done else None,
            "usage": usage,
        }

    def has_text(self, b: Behavior) -> bool:
        """Whether the message has a text block: content, or nothing else to say."""
        return bool(b.content) or b.tool_call is None

    def tool_use(self, b: Behavior) -> tuple[str, str, Any]:
        """The tool call's id, name and input (its ``arguments`` parsed; left as text when not JSON)."""
        assert b.tool_call is not None
        arguments = b.tool_call.get("arguments", "{}")
        try:
            parsed = json.loads(arguments)
        except (TypeError, ValueError):
            parsed = arguments
        return f"toolu_mock_{self.mock._next_number()}", b.tool_call["name"], parsed

    def completion(self, b: Behavior, body: dict) -> dict:
        content: list[dict] = []
        if b.thinking is not None:
            content.append({"type": "thinking", "thinking": b.thinking, "signature": "sig"})
        if self.has_text(b):
            content.append({"type": "text", "text": b.content})
        if b.tool_call is not None:
            tool_id, name, tool_input = self.tool_use(b)
            content.append({"type": "tool_use", "id": tool_id, "name": name, "input": tool_input})
        usage = self.usage(b, body, len(b.content.split()))
        return self.message(b, body, content, usage, done=True)

    def events(self, b: Behavior, body: dict) -> list[str]:
        events: list[dict] = [
            {"type": "message_start", "message": self.message(b, body, [], self.usage(b, body, 1), done=False)}
        ]
        index = 0

        def block(start: dict, deltas: list[dict]) -> None:
            nonlocal index
            events.append({"type": "content_block_start", "index": index, "content_block": start})
            if index == 0:
                events.append({"type": "ping"})
            events.extend({"type": "content_block_delta", "index": index, "delta": d} for d in deltas)
            events.append({"type": "content_block_stop", "index": index})
            index += 1

        if b.thinking is not None:
            pieces = [p for p in split_content(b.thinking, 2) if p] or [""]
            block(
                {"type": "thinking", "thinking": "", "signature": ""},
                [{"type": "thinking_delta", "thinking": p} for p in pieces]
                + [{"type": "signature_delta", "signature": "sig"}],
            )
        text = ""
        if self.has_text(b):
            pieces = [p + "x" * b.chunk_padding for p in split_content(b.content, b.chunks)]
            text = "".join(pieces)
            block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces])
        if b.tool_call is not None:
            tool_id, name, _ = self.tool_use(b)
            arguments = str(b.tool_call.get("arguments", "{}"))
            parts = split_content(arguments, min(len(arguments), max(2, b.chunks))) or [""]
            block(
                {"type": "tool_use", "id": tool_id, "name": name, "input": {}},
                [{"type": "input_json_delta", "partial_json": p} for p in parts],
            )
        events.append({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason(b), "stop_sequence": self.stop_sequence(b, body)},
            "usage": {"output_tokens": len(text.split())},
        })
        events.append({"type": "message_stop"})
        return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events]



class _CountTokensHandler(_MessagesHandler):
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, N the words of the request's text."""

    streams = False

    def completion(self, b: Behavior, body: dict) -> dict:
        return {"input_tokens": _anthropic_input_tokens(body)}


def main(argv: list[str] | None = None) -> None:
    """Serve the mock with its default behaviour until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description="OpenAI-compatible (and Anthropic Messages) mock upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    mock = MockUpstream().start(args.port, args.host)
    print(f"mock upstream serving on http://{args.host}:{mock.port}/v1", flush=True)
    stop.wait()
    mock.stop()


if __name__ == "__main__":
    main()
