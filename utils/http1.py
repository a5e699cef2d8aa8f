"""A client connection's HTTP/1.1 as Tornado serves it, with a faster parse of the request's header lines.

Tornado checks each header line with three regular expressions (its line ending, the name, the value) and an
``HTTPHeaders.add`` call: about 3 µs a line, 18 µs for a six-line request, 6 % of a proxied request's
instructions (bench/PERFORMANCE.md, issue 34). :func:`parse_headers` checks a line with one expression that
takes exactly what Tornado takes, the name and the trimmed value in one pass; a line it does not take (an error,
or anything unusual) goes to Tornado's own ``HTTPHeaders.parse_line``, which takes it or raises its own error.
So every request is accepted, refused and read as Tornado would: only the common case is faster.

:class:`ServerConnection` is Tornado's ``HTTP1ServerConnection`` serving its requests with :class:`Connection`,
Tornado's ``HTTP1Connection`` with that parse. ``server.NodeServer`` makes one a client connection.
"""

from __future__ import annotations

import asyncio
import logging
import re

from tornado import httputil, iostream
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httputil import HTTPHeaders

log = logging.getLogger("mira.server")

# RFC 9110's field-name (a token) and field-value (visible characters and obs-text, spaces and tabs inside it)
# as Tornado's httputil._ABNF spells them, around the optional whitespace Tornado strips, and the CR of a CRLF.
_VCHAR = r"[\x21-\x7e\x80-\xff]"
_LINE = re.compile(
    rf"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:{_VCHAR}(?:[\x21-\x7e\x80-\xff \t]*{_VCHAR})?)?)[ \t]*\r?"
)


def empty_headers() -> HTTPHeaders:
    """``HTTPHeaders()``, less its constructor's generic ``MutableMapping.update`` of nothing (two ABC checks and a
    ``hasattr``: 0.5 µs, twice a request). tests/test_http1.py checks the object against Tornado's own."""
    headers = HTTPHeaders.__new__(HTTPHeaders)
    headers._as_list = {}
    headers._combined_cache = {}
    return headers


def parse_headers(text: str) -> HTTPHeaders:
    """The header lines of ``text`` (latin-1 text, each line ended by LF or CRLF) as Tornado's
    ``HTTPHeaders.parse`` reads them: the same headers, or the same ``HTTPInputError``."""
    headers = empty_headers()
    lines = text.split("\n")
    last = lines.pop()  # what follows the last LF: nothing, in a request's header block
    match = _LINE.fullmatch
    for line in lines:
        if not line or line == "\r":
            continue
        found = match(line)
        if found is None:
            headers.parse_line(line + "\n")  # Tornado's reading: it takes the line or raises its error
            continue
        name, value = found.groups()
        if name in headers:
            headers.add(name, value)  # a repeated header: Tornado's list of values
        else:
            headers[name] = value
    if last:
        headers.parse_line(last)
    return headers


class Connection(HTTP1Connection):
    """Tornado's HTTP/1.1 connection (one request of a client connection), reading header lines with
    :func:`parse_headers`."""

    def _parse_headers(self, data: bytes) -> tuple[str, HTTPHeaders]:
        # As Tornado: blank lines before a request are ignored (RFC 9112, section 2.2); LF or CRLF ends a line.
        text = data.decode("latin1").lstrip("\r\n")
        eol = text.find("\n")
        return text[:eol].rstrip("\r"), parse_headers(text[eol:])


class ServerConnection(HTTP1ServerConnection):
    """Tornado's server side of a client connection, its requests read by :class:`Connection`."""

    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        # Tornado's loop, the connection class aside.
        try:
            while True:
                conn = Connection(self.stream, False, self.params, self.context)
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (iostream.StreamClosedError, iostream.UnsatisfiableReadError, asyncio.CancelledError):
                    return
                except Exception:
                    log.error("uncaught exception serving a connection", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)
