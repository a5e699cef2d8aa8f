"""Keeping secrets out of messages and logs."""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "[redacted]"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words


class Redactor:
    """Replaces every known secret value in a text with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Also mask ``secret`` from now on (longest secrets are replaced first)."""
        if secret and len(secret) >= MIN_SECRET_LENGTH and secret not in self._secrets:
            self._secrets.append(secret)
            self._secrets.sort(key=len, reverse=True)

    def __call__(self, text: str, *extra: str) -> str:
        for secret in (*extra, *self._secrets):
            if secret and len(secret) >= MIN_SECRET_LENGTH and secret in text:
                text = text.replace(secret, MASK)
        return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the formatted message and traceback."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactor._secrets:
            message = record.getMessage()
            clean = self.redactor(message)
            if clean != message:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:
                record.exc_text = self.redactor(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def tail(secret: str) -> str:
    """How a token may appear in a log line: its last four characters at most."""
    return "..." + secret[-4:] if len(secret) > 8 else "[set]"
