"""Token usage: read from every upstream answer that reports it, JSON or stream, without slowing the relay.

Reading never parses a whole answer. JSON and SSE are searched for the last
``"usage":`` key (a JSON string cannot hold an unescaped quote, so the match
is a real key), then for ``prompt_tokens``/``input_tokens`` and
``completion_tokens``/``output_tokens`` (and ``cached_tokens``, the cache reads
among the prompt's) after it: chat, completions and
embeddings (``usage``), Groq (``x_groq.usage``), responses
(``response.completed``'s ``response.usage``) alike.

:class:`StreamUsage` watches a stream chunk by chunk. It keeps only the bytes
of the event not yet complete. When the node itself asked for usage
(STREAM_USAGE=inject), it also takes the usage-only event (``"choices": []``
with ``usage``) out of what the client receives, holding back at most the
bytes of an incomplete event that may still turn out to be that one; every
other byte passes as it came.
"""

from __future__ import annotations

import re

from models.chat import ProxyRequest
from models.endpoints import CHAT, COMPLETIONS
from models.usage import Usage

__all__ = ["MessagesUsage", "StreamUsage", "Usage", "read_messages_usage", "read_usage", "wants_injection"]

_USAGE = b'"usage"'
_PROMPT = re.compile(rb'"(?:prompt_tokens|input_tokens)"\s*:\s*(\d+)')
_COMPLETION = re.compile(rb'"(?:completion_tokens|output_tokens)"\s*:\s*(\d+)')
_CACHED = re.compile(rb'"cached_tokens"\s*:\s*(\d+)')  # prompt_tokens_details / input_tokens_details: cache reads
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
_SOME_CHOICE = re.compile(rb'"choices"\s*:\s*\[\s*\{')
_BOUNDARY = re.compile(rb"\r?\n\r?\n")
MAX_TAIL = 256 * 1024  # an "event" longer than this is not SSE worth watching


def read_usage(data: bytes) -> Usage | None:
    """The usage an answer (or one SSE event) reports, or None."""
    at = data.rfind(_USAGE)
    if at < 0:
        return None
    prompt = _PROMPT.search(data, at)
    if prompt is None:
        return None
    completion = _COMPLETION.search(data, at)
    cached = _CACHED.search(data, at) if data.find(b'"cached_tokens"', at) >= 0 else None
    return Usage(
        int(prompt.group(1)), int(completion.group(1)) if completion else 0, int(cached.group(1)) if cached else 0
    )


_MESSAGES_FIELDS = (b"input_tokens", b"output_tokens", b"cache_read_input_tokens", b"cache_creation_input_tokens")
_MESSAGES_COUNT = {name: re.compile(rb'"' + name + rb'"\s*:\s*(\d+)') for name in _MESSAGES_FIELDS}


def _messages_counts(data: bytes, at: int, counts: list[int]) -> bool:
    """Update ``counts`` (input, output, cache read, cache write) with the fields after ``at``; whether any was there."""
    found = False
    for position, name in enumerate(_MESSAGES_FIELDS):
        match = _MESSAGES_COUNT[name].search(data, at)
        if match is not None:
            counts[position] = int(match.group(1))
            found = True
    return found


def messages_usage(counts: list[int]) -> Usage:
    """The :class:`Usage` of a Messages answer's counts: prompt tokens are fresh input, cache reads and cache writes."""
    fresh, output, read, write = counts
    return Usage(fresh + read + write, output, read, write)


def read_messages_usage(data: bytes) -> Usage | None:
    """The usage a Messages JSON answer reports, or None."""
    at = data.rfind(_USAGE)
    counts = [0, 0, 0, 0]
    if at < 0 or not _messages_counts(data, at, counts):
        return None
    return messages_usage(counts)


class MessagesUsage:
    """A relayed Messages stream's usage watcher: every byte passes as it came.

    ``message_start`` gives the counts, and each ``message_delta`` replaces
    those it carries (its counts are cumulative).
    """

    __slots__ = ("usage", "_tail", "_counts")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self._tail = b""
        self._counts = [0, 0, 0, 0]

    def feed(self, chunk: bytes) -> bytes:
        buf = self._tail + chunk if self._tail else chunk
        cut = _last_boundary(buf)
        if cut:
            self._read(buf[:cut] if cut != len(buf) else buf)
        tail = buf[cut:]
        self._tail = tail if len(tail) <= MAX_TAIL else b""
        return chunk

    def _read(self, complete: bytes) -> None:
        at = complete.find(_USAGE)
        while at >= 0:
            if _messages_counts(complete, at, self._counts):
                self.usage = messages_usage(self._counts)
            at = complete.find(_USAGE, at + 1)

    def finish(self) -> bytes:
        tail, self._tail = self._tail, b""
        if tail:
            self._read(tail)
        return b""


def wants_injection(request: ProxyRequest, mode: str) -> bool:
    """Whether the node adds ``stream_options.include_usage`` to this request (and strips the usage event)."""
    if mode != "inject" or not request.stream or request.custom is not None:
        return False
    if request.endpoint is not CHAT and request.endpoint is not COMPLETIONS:
        return False
    options = request.body.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_usage") is True)


def _last_boundary(data: bytes) -> int:
    """The index just past the last blank line of ``data`` (0 when there is none)."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def _usage_only(event: bytes) -> bool:
    return _USAGE in event and _EMPTY_CHOICES.search(event) is not None


def _may_be_usage_only(partial: bytes) -> bool:
    """Whether an incomplete event could still be the usage-only one."""
    head = partial.lstrip(b"\r\n")
    return head.startswith(b"data:") and b"[DONE]" not in head and _SOME_CHOICE.search(head) is None


class StreamUsage:
    """One stream's usage watcher; :meth:`feed` returns the bytes to pass on for each chunk."""

    __slots__ = ("strip", "usage", "_tail", "_sent")

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.usage: Usage | None = None
        self._tail = b""  # the incomplete event so far
        self._sent = 0  # how much of it has been passed on already

    def _read(self, complete: bytes) -> None:
        found = read_usage(complete)
        if found is not None:
            self.usage = found

    def feed(self, chunk: bytes) -> bytes:
        buf = self._tail + chunk if self._tail else chunk
        cut = _last_boundary(buf)
        complete = buf if cut == len(buf) else buf[:cut]
        tail = b"" if cut == len(buf) else buf[cut:]
        if complete and _USAGE in complete:
            self._read(complete)
            if self.strip and _EMPTY_CHOICES.search(complete):
                complete = self._without_usage_only(complete)
        if not self.strip:
            self._tail = tail if len(tail) <= MAX_TAIL else b""
            return chunk
        sent, out = self._sent, complete
        if complete:
            out, sent = complete[sent:] if sent else complete, 0
        if tail and sent == 0 and _may_be_usage_only(tail) and len(tail) <= MAX_TAIL:
            self._tail, self._sent = tail, 0  # held back until it is complete
            return out
        self._tail, self._sent = (tail, len(tail)) if len(tail) <= MAX_TAIL else (b"", 0)
        return out + tail[sent:] if tail else out

    def _without_usage_only(self, complete: bytes) -> bytes:
        """``complete`` (whole events) without its usage-only events; every other byte kept."""
        parts, start = [], 0
        for boundary in _BOUNDARY.finditer(complete):
            event = complete[start : boundary.end()]
            if not _usage_only(event):
                parts.append(event)
            start = boundary.end()
        parts.append(complete[start:])
        return b"".join(parts)

    def finish(self) -> bytes:
        """At the end of the stream: what is still held back (an incomplete last event), unless it is the usage one."""
        tail, self._tail = self._tail, b""
        if not tail or self._sent:
            return b""
        self._read(tail)
        return b"" if self.strip and _usage_only(tail) else tail
