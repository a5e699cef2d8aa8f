"""utils.http1: request header lines read exactly as Tornado reads them, faster; and the node serving through it."""

from __future__ import annotations

import asyncio
import random

import pytest
from tornado.httputil import HTTPHeaders, HTTPInputError

from utils.http1 import empty_headers, parse_headers

# Characters that sit on the edges of RFC 9110's rules: token and separator characters, whitespace, controls,
# DEL, obs-text, the colon, CR.
EDGE = ["a", "Z", "0", "-", "!", "~", "|", ":", " ", "\t", "\r", "\x00", "\x1f", "\x7f", "\x80", "\xff", "é", "(", '"']


def tornado_reading(text: str) -> tuple[str, list[tuple[str, str]]]:
    try:
        return "ok", list(HTTPHeaders.parse(text).get_all())
    except HTTPInputError as e:
        return "error", [("", str(e))]


def node_reading(text: str) -> tuple[str, list[tuple[str, str]]]:
    try:
        return "ok", list(parse_headers(text).get_all())
    except HTTPInputError as e:
        return "error", [("", str(e))]


@pytest.mark.parametrize(
    "text",
    [
        "\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n",
        "\nHost: node\nX-A: 1\n\n",  # LF alone ends a line
        "\r\nX-A:    spaced value \t \r\nX-B:\r\nX-C: \t\r\n\r\n",  # whitespace trimmed; empty values
        "\r\nX-A: 1\r\nx-a: 2\r\nX-A: 3\r\n\r\n",  # repeated: one header, three values
        "\r\nX-Obs: caf\xe9\r\n\r\n",  # obs-text
        "\r\nBad Name: 1\r\n\r\n",
        "\r\n: no name\r\n\r\n",
        "\r\nNo-Colon\r\n\r\n",
        "\r\nX-A: 1\r\n folded\r\n\r\n",  # folding is refused
        "\r\nX-A: a\x00b\r\n\r\n",
        "\r\nX-A: a\rb\r\n\r\n",
        "\r\nX-A: ab\r\r\n\r\n",
        "\r\nX-A: a\x7f\r\n\r\n",
        "\r\nX-A: 1\r\nX-B: trailing, no LF",
        "\r\nX-A: \u0100\r\n\r\n",  # not latin-1 (a multipart part's header can be): refused as Tornado does
    ],
)
def test_chosen_header_blocks_read_as_tornado_reads_them(text: str) -> None:
    assert node_reading(text) == tornado_reading(text)


def test_random_header_blocks_read_as_tornado_reads_them() -> None:
    rng = random.Random(34)
    outcomes = set()
    for _ in range(4000):
        lines = []
        for _ in range(rng.randint(1, 4)):
            name = "".join(rng.choice(EDGE[:8]) for _ in range(rng.randint(0, 4))) or "X"
            value = "".join(rng.choice(EDGE) for _ in range(rng.randint(0, 6)))
            lines.append(name + rng.choice([":", ": ", " :", ""]) + value + rng.choice(["\r\n", "\n"]))
        text = "\r\n" + "".join(lines) + "\r\n"
        node, tornado = node_reading(text), tornado_reading(text)
        assert node == tornado, repr(text)
        outcomes.add(node[0])
    assert outcomes == {"ok", "error"}  # both paths were taken


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) if b"Content-Length: " in head else 0
        return head + await reader.readexactly(length)
    finally:
        writer.close()


@pytest.mark.gen_test(timeout=20)
async def test_the_node_serves_through_the_parse(http_server, http_port, upstream) -> None:
    body = b'{"model":"openai/gpt-4o","messages":[{"role":"user","content":"hi"}]}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\nHost: node\nContent-Type:   application/json  \n"
        b"X-Request-ID: abc-123\nContent-Length: " + str(len(body)).encode() + b"\n\n"
    )
    answer = await exchange(http_port, head + body)
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"X-Request-Id: abc-123\r\n" in answer  # a header the parse read, used by the node
    assert upstream.requests[-1].json["messages"][0]["content"] == "hi"


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("line", [b"Bad Name: 1", b"X-A: a\x01b", b" folded", b"NoColon"])
async def test_a_malformed_header_line_is_a_400(http_server, http_port, line) -> None:
    answer = await exchange(http_port, b"GET /health HTTP/1.1\r\nHost: node\r\n" + line + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")


def test_empty_headers_is_tornados_empty_headers() -> None:
    made, tornados = empty_headers(), HTTPHeaders()
    assert type(made) is HTTPHeaders and vars(made) == vars(tornados)  # a new attribute in Tornado fails here
    made.add("X-A", "1")
    made.add("x-a", "2")
    assert made.get_list("X-A") == ["1", "2"] and made["X-A"] == "1,2" and vars(empty_headers()) == vars(tornados)
