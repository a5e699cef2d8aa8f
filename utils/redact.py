"""Keeping secrets out of messages, headers and logs, and outside text from forging log lines.

The rule the node keeps: no secret it holds (provider keys, router tokens, the
service key, a per-request ``model_provider.api_key``), nor any part of one
that is :data:`FRAGMENT` characters or longer, reaches a response, a header
sent back or a log line, whatever an upstream or the router echoes back.

:class:`Redactor` does the masking. A secret of eight characters or more is
indexed by every 4- and 8-character piece of it: a text is first probed at
every fourth position against the 4-character pieces (any fragment of eight
characters must contain one of those probes), and only a text that has a hit
is scanned in full for 8-character pieces, whose covered spans are masked.
A shorter secret is masked where it appears whole.

:func:`escape_control` makes outside text safe for a text log line: control
characters (C0 with TAB, CR and LF, DEL, C1, and the Unicode line and
paragraph separators) are written as escapes, so a line can never be split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

MASK = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words
FRAGMENT = 8  # a run of this many characters of a secret is masked wherever it stands
_PROBE = FRAGMENT // 2

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    if text.isprintable():
        return text
    return _CONTROL.sub(_escape_one, text)


class _Index:
    """The pieces of a set of secrets that the masking looks for."""

    __slots__ = ("whole", "probes", "pieces")

    def __init__(self) -> None:
        self.whole: list[str] = []  # secrets too short to have fragments, longest first
        self.probes: set[str] = set()
        self.pieces: set[str] = set()

    def add(self, secret: str) -> None:
        if len(secret) < FRAGMENT:
            if secret not in self.whole:
                self.whole.append(secret)
                self.whole.sort(key=len, reverse=True)
            return
        for i in range(len(secret) - _PROBE + 1):
            self.probes.add(secret[i : i + _PROBE])
        for i in range(len(secret) - FRAGMENT + 1):
            self.pieces.add(secret[i : i + FRAGMENT])

    def probe(self, text: str) -> bool:
        """True when ``text`` may hold a fragment (no false negatives)."""
        probes = self.probes
        if not probes or len(text) < FRAGMENT:
            return False
        n = len(text)
        return not probes.isdisjoint(map(text.__getitem__, map(slice, range(0, n, _PROBE), range(_PROBE, n + _PROBE, _PROBE))))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The merged spans of ``text`` covered by 8-character pieces of a secret."""
        pieces = self.pieces
        spans: list[tuple[int, int]] = []
        for i in range(len(text) - FRAGMENT + 1):
            if text[i : i + FRAGMENT] in pieces:
                end = i + FRAGMENT
                if spans and i <= spans[-1][1]:
                    spans[-1] = (spans[-1][0], end)
                else:
                    spans.append((i, end))
        return spans


def _mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    out, last = [], 0
    for start, end in spans:
        out.append(text[last:start])
        out.append(MASK)
        last = end
    out.append(text[last:])
    return "".join(out)


class Redactor:
    """Masks every known secret, and every part of one of eight characters or more, in a text.

    One instance per process (:data:`PROCESS_REDACTOR`) is shared by the log
    filter, the access lines, the upstream client and the router client, each
    given it when made, so a token learnt at registration is masked
    everywhere from then on.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._index = _Index()
        self._known: set[str] = set()
        self.generation = 0  # grows with every secret added: what was masked before may need masking again
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Also mask ``secret`` (and its fragments) from now on."""
        if secret and len(secret) >= MIN_SECRET_LENGTH and secret not in self._known:
            self._known.add(secret)
            self._index.add(secret)
            self.generation += 1

    def found_in(self, text: str, *extra: str) -> bool:
        """Whether ``text`` holds a secret or a fragment of one."""
        return self(text, *extra) != text

    def __call__(self, text: str, *extra: str) -> str:
        """``text`` with secrets (the known ones and ``extra``) and their fragments masked."""
        if not text:
            return text
        indexes = [self._index]
        if any(len(e) >= MIN_SECRET_LENGTH and e not in self._known for e in extra):
            more = _Index()
            for secret in extra:
                if len(secret) >= MIN_SECRET_LENGTH:
                    more.add(secret)
            indexes.append(more)
        for index in indexes:
            for secret in index.whole:
                if secret in text:
                    text = text.replace(secret, MASK)
            if index.probe(text):
                spans = index.spans(text)
                if spans:
                    text = _mask_spans(text, spans)
        return text

    def cut(self, text: str, limit: int, *extra: str) -> str:
        """Mask first, then cut to ``limit`` characters: a secret across the cut is never half shown."""
        clean = self(text, *extra)
        return clean if len(clean) <= limit else clean[:limit] + "..."


PROCESS_REDACTOR = Redactor()
"""The process's one redactor: settings add their secrets at start, the router its token.

Only the places that make the process's parts name it (``server.main`` for
:func:`utils.logs.setup_logging`, :class:`utils.context.NodeContext` for the
rest); everything else is handed the redactor it uses.
"""


class RedactingFilter(logging.Filter):
    """Masks secrets and escapes control characters in every record before it is written.

    The message, every extra field (JSON logs write them) and the traceback are
    cleaned. Access lines (``mira.access``) are built from fields that are
    cleaned where they are gathered, so only their escaping is done here.
    """

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = message if record.name == "mira.access" else self.redactor(message)
        clean = escape_control(clean)
        record.msg, record.args = clean, None
        if record.name != "mira.access":
            for key, value in list(record.__dict__.items()):
                if key not in STANDARD_RECORD_FIELDS and isinstance(value, str):
                    record.__dict__[key] = escape_control(self.redactor(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            # A traceback stays multi-line; each line after the first is indented, so none can pass for a log line.
            lines = [escape_control(self.redactor(line)) for line in record.exc_text.split("\n")]
            record.exc_text = "\n    ".join(lines)
        return True


# Attributes every LogRecord has; any other is an "extra" field, written out by JSON logs.
STANDARD_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def tail(secret: str) -> str:
    """How a token may appear in a log line: its last four characters at most."""
    return "..." + secret[-4:] if len(secret) > 8 else "[set]"
