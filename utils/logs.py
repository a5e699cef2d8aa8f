"""Logging set-up: text or one JSON object per line, secrets masked, access lines.

The access line is written on every request, so it has a lean path: while
the node's own handler is the only one (always, outside tests that capture
logs), :class:`AccessWriter` formats the line exactly as the handler's
formatter would and writes it in one call, without a ``LogRecord``, a caller
look-up or a ``strftime`` per line (about 23 µs of ``logging`` machinery a
request, measured). With any other handler attached, access lines go through
``logging`` as every other line does.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import time
from typing import Any

import ujson

from utils import metrics
from utils.cost import usd_text
from utils.redact import STANDARD_RECORD_FIELDS, RedactingFilter, Redactor, escape_control

access_log = logging.getLogger("mira.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in STANDARD_RECORD_FIELDS and not key.startswith("_"):
                data[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        try:
            return ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False, default=str)
        except UnicodeEncodeError:  # a lone surrogate somewhere: escape it
            return ujson.dumps(data, escape_forward_slashes=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


class AccessWriter:
    """Writes access lines straight to the node's log handler, formatted as its formatter would.

    The lines of one turn of the event loop go out in one write at its end
    (a request's line is at most one loop turn late), not a write each.
    """

    def __init__(self, handler: logging.StreamHandler[Any], json_lines: bool) -> None:
        self.handler = handler
        self.json_lines = json_lines
        self._second = -1
        self._stamp = ""
        self._pending: list[str] = []
        self.pid = os.getpid()  # refreshed in a forked worker (_after_fork)

    def usable(self) -> bool:
        """The lean path applies: the node's handler is the only one, and access lines are on."""
        return (
            logging.root.handlers == [self.handler]
            and not access_log.handlers
            and access_log.isEnabledFor(logging.INFO)
            and not logging.root.manager.disable
        )

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            if self.json_lines:
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            else:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        msecs = int((now - second) * 1000)
        return f"{self._stamp}.{msecs:03d}Z" if self.json_lines else f"{self._stamp},{msecs:03d}"

    def write(self, message: str, fields: dict[str, Any]) -> None:
        """An access line with its fields (a JSON line carries them; a text line is the message alone)."""
        if not self.json_lines:
            self.write_text(message)
            return
        data = {"time": self._time(time.time()), "level": "INFO", "logger": "mira.access", "pid": self.pid,
                "message": message, **fields}
        try:
            line = ujson.dumps(data, ensure_ascii=False, escape_forward_slashes=False, default=str)
        except UnicodeEncodeError:
            line = ujson.dumps(data, escape_forward_slashes=False, default=str)
        self._add(line)

    def write_text(self, message: str) -> None:
        """A text access line (its parts are escaped already)."""
        self._add(f"{self._time(time.time())} INFO mira.access[{self.pid}]: {message}")

    def _add(self, line: str) -> None:
        pending = self._pending
        pending.append(line + "\n")
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop running: write it now
                self.flush()

    def flush(self) -> None:
        """Write the lines waiting for the end of the loop turn."""
        lines, self._pending = self._pending, []
        if not lines:
            return
        handler = self.handler
        with handler.lock:  # type: ignore[union-attr]
            try:
                handler.stream.write("".join(lines))
                handler.stream.flush()
            except (OSError, ValueError):  # a closed or broken stderr must not fail a request
                pass


_access_writer: AccessWriter | None = None
# What masks the outside text of access lines (a path, a custom provider's name): the redactor setup_logging
# was given. Until it is called (an app built by a test), one that knows no secret: nothing is masked, as no
# log filter masks anything then either.
_access_redactor = Redactor()


def _after_fork() -> None:
    writer = _access_writer
    if writer is not None:
        writer.pid = os.getpid()
        writer._pending = []  # the parent's lines are the parent's to write


def _at_exit() -> None:
    if _access_writer is not None:
        _access_writer.flush()  # lines of the loop's last turn


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_at_exit)


def setup_logging(level: str, fmt: str, redactor: Redactor) -> None:
    """Send every log line (ours, Tornado's, warnings) to stderr in the chosen format.

    ``redactor`` (the process's one) masks every line: its log filter, and
    the outside text of access lines (:func:`log_request`).
    """
    global _access_writer, _access_redactor
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _access_redactor = redactor
    if _access_writer is not None:
        _access_writer.flush()
    _access_writer = AccessWriter(handler, fmt == "json")
    # Process-life lines (start-up, draining, stopped) are written at any LOG_LEVEL.
    if logging.getLevelName(level) > logging.INFO:
        logging.getLogger("mira.server").setLevel(logging.INFO)
    # Tornado's own access log is replaced by ours.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)


_words: dict[tuple[str, int], str] = {}  # outside text -> its access-line word (outside_word)
_words_made_with: tuple[Redactor, int] | None = None  # the redactor (and its generation) the words were made with
MAX_WORDS = 4096


def outside_word(text: str, limit: int) -> str:
    """The caller's text (a model name, a session id) as one word of the access line: masked, escaped, cut to
    ``limit`` characters, spaces as ``_``. Remembered, since the same few values come back on every request
    (masking costs microseconds); forgotten when the redactor learns a secret, and when there are too many."""
    global _words_made_with
    redact = _access_redactor
    if _words_made_with != (redact, redact.generation):
        _words.clear()
        _words_made_with = (redact, redact.generation)
    word = _words.get((text, limit))
    if word is None:
        if len(_words) >= MAX_WORDS:
            _words.clear()
        word = _words[(text, limit)] = escape_control(redact(text))[:limit].replace(" ", "_")
    return word


def log_request(handler: Any) -> None:
    """Tornado's ``log_function``: one access line and the request metrics."""
    status = handler.get_status()
    request = handler.request
    seconds = request.request_time()
    try:  # the node's handlers (BaseHandler) have every field; any other (none is routed today) gets defaults
        route, model, provider, request_id = handler.route_name, handler.model, handler.provider, handler.request_id
        upstream, sent, aborted = handler.upstream_status, handler.bytes_sent, handler.client_aborted
        usage, session = handler.usage, handler.session
    except AttributeError:
        route, model, provider, request_id = getattr(handler, "route_name", "other"), "", "", ""
        upstream, sent, aborted, usage, session = None, 0, False, None, ""
    metrics.request_done(route, status, seconds)
    if not access_log.isEnabledFor(logging.INFO):
        return
    path = request.path
    redact = _access_redactor
    if route in ("not_found", "other"):  # a served route's path is the route itself; any other is outside text
        path = escape_control(redact(path))
    if model:
        model = outside_word(model, 200)
    if provider and not provider.isalnum():  # a configured name or "custom" as is; a custom provider's name is the caller's
        provider = escape_control(redact(provider))
    tokens = cost = None
    extra = ""
    if usage is not None:
        tokens = usage.prompt, usage.completion
        extra = f" tokens={tokens[0]}/{tokens[1]}"
        cost = getattr(handler, "cost", None)
        if cost is not None:  # PRICES_FILE priced the answer
            extra += " cost=" + usd_text(cost)
    if session:
        session = outside_word(session, 100)
        extra += " session=" + session
    client = request.remote_ip  # the peer, or the client behind a trusted proxy (utils.gate)
    message = (
        f"{request_id} {client} {request.method} {path} {status} {seconds * 1000:.1f}ms"
        f" model={model or '-'} provider={provider or '-'} upstream={upstream or '-'} bytes={sent}"
        f" aborted={'yes' if aborted else 'no'}{extra}"
    )
    writer = _access_writer
    if writer is not None and not writer.json_lines and writer.usable():
        writer.write_text(message)  # a text line needs no fields
        return
    fields = {
        "request_id": request_id,  # vetted by the base handler
        "client": client,
        "method": request.method,
        "path": path,
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "provider": provider or None,
        "upstream_status": upstream,
        "model": model or None,
        "bytes": sent,
        "client_aborted": aborted,
    }
    if tokens is not None:
        fields["prompt_tokens"], fields["completion_tokens"] = tokens
        if cost is not None:
            fields["cost_usd"] = cost
    if session:
        fields["session"] = session
    if writer is not None and writer.usable():
        writer.write(message, fields)
    else:
        access_log.info(message, extra=fields)
