"""Small HTTP helpers shared by the tests (all over loopback, no fixed ports)."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from typing import Any

import ujson
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.iostream import IOStream, StreamClosedError

USER = [{"role": "user", "content": "Is the sky blue?"}]


class Clock:
    """A clock for the node's test hooks (a ledger's wall clock, the circuits' monotonic one) that moves only when
    a test sets ``now``."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


async def scrape(node_url: str) -> str:
    """The node's /metrics text."""
    return (await get(node_url + "/metrics")).body.decode()


def sample(text: str, series: str) -> float:
    """The value of one series (``name{labels}``) in a /metrics text; 0 when absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def chat_body(model: str = "openai/mock-model", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, **extra}


async def post(url: str, body: Any, headers: dict[str, str] | None = None, **kwargs: Any) -> HTTPResponse:
    """POST JSON (or raw bytes/str) and return the response whatever its status."""
    raw = body if isinstance(body, (bytes, str)) else ujson.dumps(body)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return await AsyncHTTPClient().fetch(
        url, method="POST", body=raw, headers=hdrs, raise_error=False, request_timeout=30, **kwargs
    )


async def get(url: str, **kwargs: Any) -> HTTPResponse:
    return await AsyncHTTPClient().fetch(url, raise_error=False, request_timeout=30, **kwargs)


def error_of(response: HTTPResponse) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error body (asserts the shape)."""
    data = ujson.loads(response.body)
    assert set(data) == {"error"}, data
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@dataclass
class RawResponse:
    """What a raw HTTP/1.1 client saw: head, and body reads with their arrival times."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    reads: list[tuple[float, bytes]] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.reads)


class RawClient:
    """A minimal HTTP/1.1 client over a Tornado IOStream, for framing and disconnect tests.

    The response body is read as it arrives (``Connection: close`` on the request
    so the body ends with the connection; chunked framing is left in place).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: IOStream | None = None

    async def send(self, path: str, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else ujson.dumps(body).encode()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stream = IOStream(sock)
        await self.stream.connect(("127.0.0.1", self.port))
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(raw)}\r\nConnection: close\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        await self.stream.write(head.encode() + b"\r\n" + raw)

    async def read_head(self) -> RawResponse:
        assert self.stream is not None
        data = await self.stream.read_until(b"\r\n\r\n")
        lines = data.decode("latin1").split("\r\n")
        response = RawResponse(status=int(lines[0].split()[1]))
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                response.headers[name.strip().lower()] = value.strip()
        return response

    async def read_some(self, response: RawResponse) -> bytes:
        """The next bytes of the body as they arrive (b"" at the end)."""
        assert self.stream is not None
        try:
            data = await self.stream.read_bytes(65536, partial=True)
        except StreamClosedError:
            return b""
        response.reads.append((time.monotonic(), data))
        return data

    async def read_all(self, response: RawResponse) -> RawResponse:
        while await self.read_some(response):
            pass
        return response

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


def dechunk(data: bytes) -> bytes:
    """Undo HTTP/1.1 chunked transfer coding."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            break
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


def sse_events(payload: bytes) -> list[bytes]:
    """Split an SSE body into its events (blank-line separated)."""
    return [event for event in payload.split(b"\n\n") if event.strip()]
