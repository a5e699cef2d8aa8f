"""Typed upstream failures, and the one place that turns each into the caller's OpenAI-shaped error.

Everything that can go wrong in one attempt is an :class:`UpstreamFailure`
subclass: what happened, not what to do about it (retry, fall back, count
against the circuit: :mod:`utils.upstream.policy` decides). :func:`api_error`
is the single mapping to :class:`~models.errors.ApiError`: one table,
:data:`FAILURE_ERRORS`, from failure class to status, code and message, and
two computed cases (:data:`COMPUTED_FAILURES`: an upstream 4xx/5xx answers
with its own status and message, any other libcurl error with libcurl's
message), masking whatever text came from upstream.

:func:`retry_after_seconds` is the node's one reading of a ``Retry-After``
header (seconds or an HTTP-date), for the retry back-off, a pooled key's
rest and the header passed back to the client alike.

:class:`Cancelled` is not a failure of the upstream: the client went away, or
the drain ran out of time. It is its own exception and never an ``ApiError``.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import NamedTuple

import ujson

from models.errors import ApiError
from utils.redact import Redactor

MAX_ERROR_MESSAGE = 500  # characters of an upstream error message passed on (after masking)
MAX_ERROR_FIELD = 100  # characters of an upstream error's type or code passed on
RETRY_AFTER_STATUSES = frozenset((429, 503, 529))  # upstream answers whose Retry-After is passed back to the client
SHUTDOWN = "node shutting down"  # the Cancel reason of requests cut by the drain
FORBIDDEN_MESSAGE = (
    "model_provider.base_url resolves to a loopback, private, link-local or otherwise internal address,"
    " which this node does not call (CUSTOM_PROVIDER_ALLOW_PRIVATE is off)"
)


class Cancelled(Exception):
    """The request was cancelled: its client disconnected, or the node is shutting down."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def shutting_down(self) -> bool:
        return self.reason == SHUTDOWN


class UpstreamFailure(Exception):
    """One attempt at a provider failed. ``provider`` names it in messages."""

    def __init__(self, provider: str, detail: str = "") -> None:
        super().__init__(detail or provider)
        self.provider = provider
        self.detail = detail


class ConnectFailed(UpstreamFailure):
    """No connection could be made (refused, name not resolved, TLS handshake broke)."""


class ConnectionLost(UpstreamFailure):
    """The connection broke before a whole answer came (a reset keep-alive connection, say)."""


class TimedOut(UpstreamFailure):
    """No answer (or, in a stream, silence) within the timeouts (not retried: it would multiply the wait)."""


class TlsFailed(UpstreamFailure):
    """The upstream's certificate failed verification."""


class QueueTimeout(UpstreamFailure):
    """No upstream connection slot became free in time; the request never reached the upstream."""


class Forbidden(UpstreamFailure):
    """A custom provider's connection went to an internal address (the SSRF guard refused it)."""


class InvalidStatus(UpstreamFailure):
    """The upstream answered a status the node cannot pass on (1xx, 204, 3xx, outside 100-599)."""

    def __init__(self, provider: str, status: int) -> None:
        super().__init__(provider, f"HTTP {status}")
        self.status = status


class TransportError(UpstreamFailure):
    """Any other libcurl error; ``detail`` is libcurl's message."""




class UpstreamStatus(UpstreamFailure):
    """The upstream answered 4xx or 5xx; ``body`` is (the first 64 KB of) its error body."""

    def __init__(self, provider: str, status: int, body: bytes, retry_after: str | None, api_key: str = "") -> None:
        super().__init__(provider, f"HTTP {status}")
        self.status = status
        self.body = body
        self.retry_after = retry_after
        self.api_key = api_key  # masked in the message too (a per-request key)


_DELAY_SECONDS = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
MAX_RETRY_AFTER_HEADER = 3600  # the longest Retry-After (seconds) passed back to the client


def retry_after_seconds(raw: str | None, now: float | None = None) -> float | None:
    """The seconds an upstream ``Retry-After`` asks for, or None when it is neither form it may take.

    Two forms count (RFC 9110 10.2.3): a number of seconds, finite and at
    least 0 (``2.5`` too, though the RFC asks for whole ones), and an
    HTTP-date (IMF-fixdate, and the obsolete RFC 850 and asctime forms), as
    the seconds from ``now`` (the wall clock by default) to that date, 0 when
    it is past. Anything else (``nan``, ``inf``, ``-1``, ``1e400``, junk, an
    empty value) is None: the caller's own delay applies. What comes back is
    never NaN nor infinite.
    """
    if raw is None:
        return None
    text = raw.strip()
    if not text:
        return None
    if _DELAY_SECONDS.fullmatch(text):
        seconds = float(text)  # a run of digits too long for a float is inf: refused below
        return seconds if math.isfinite(seconds) else None
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # the asctime form, or "-0000": GMT all the same (RFC 9110 5.6.7)
        moment = moment.replace(tzinfo=UTC)
    try:
        seconds = moment.timestamp() - (time.time() if now is None else now)
    except (OverflowError, ValueError):
        return None
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def retry_after_header(raw: str | None, now: float | None = None) -> str | None:
    """An upstream ``Retry-After`` as passed back to the client: whole seconds (rounded up, at most an hour), or None."""
    seconds = retry_after_seconds(raw, now)
    if seconds is None:
        return None
    return str(min(math.ceil(seconds), MAX_RETRY_AFTER_HEADER))


def shutdown_error() -> ApiError:
    return ApiError(503, "The node is shutting down; retry on another node", code="node_shutting_down",
                    headers={"Retry-After": "1"})


class ErrorShape(NamedTuple):
    """How the caller is told of one kind of failure."""

    status: int
    code: str | None
    message: str  # a str.format template over the failure's attributes: {provider}, and {status} of InvalidStatus
    param: str | None = None
    retry_after: str | None = None  # the Retry-After header sent with it
    detail_wins: bool = False  # the failure's own ``detail`` (the node's words, never upstream text), when it has one


# Every failure class, to the error the caller gets; the two that are computed from what the failure carries
# (COMPUTED_FAILURES) are not in it. A subclass answers as the nearest class of its MRO found here;
# tests/test_failure_tables.py fails for a failure class that is in neither.
FAILURE_ERRORS: dict[type[UpstreamFailure], ErrorShape] = {
    InvalidStatus: ErrorShape(
        502, "upstream_invalid_response", "{provider} API answered with HTTP status {status}, which the node cannot pass on"
    ),
    TimedOut: ErrorShape(504, "upstream_timeout", "{provider} API did not answer in time", detail_wins=True),
    TlsFailed: ErrorShape(
        502, "upstream_tls_error", "TLS verification failed for {provider} API: its certificate is not trusted"
    ),
    ConnectFailed: ErrorShape(502, "upstream_unreachable", "Could not connect to {provider} API"),
    ConnectionLost: ErrorShape(502, "upstream_connection_lost", "Connection to {provider} API was lost"),
    QueueTimeout: ErrorShape(503, None, "No upstream connection became free in time", retry_after="1"),
    Forbidden: ErrorShape(400, "custom_provider_forbidden", FORBIDDEN_MESSAGE, param="model_provider.base_url"),
}
# UpstreamStatus: the upstream's own status and message (masked); TransportError: libcurl's message (masked).
COMPUTED_FAILURES: tuple[type[UpstreamFailure], ...] = (UpstreamStatus, TransportError)


def error_shape(kind: type[UpstreamFailure]) -> ErrorShape | None:
    """The table's entry for a failure class (or the nearest of its bases); None for the computed ones."""
    for cls in kind.__mro__:
        shape = FAILURE_ERRORS.get(cls)
        if shape is not None:
            return shape
        if cls in COMPUTED_FAILURES:
            return None
    return None


def api_error(failure: UpstreamFailure, redact: Redactor) -> ApiError:
    """The caller's error for ``failure`` (:data:`FAILURE_ERRORS`); upstream text in it is masked, then cut."""
    if isinstance(failure, UpstreamStatus):
        return _status_error(failure, redact)
    shape = error_shape(type(failure))
    if shape is None:  # TransportError: libcurl's own words
        detail = redact.cut(failure.detail, MAX_ERROR_MESSAGE) if failure.detail else "unknown error"
        return ApiError(502, f"Error calling {failure.provider} API: {detail}", code="upstream_error")
    if shape.detail_wins and failure.detail:
        message = failure.detail
    else:
        message = shape.message.format_map(vars(failure))
    headers = {"Retry-After": shape.retry_after} if shape.retry_after else None
    return ApiError(shape.status, message, param=shape.param, code=shape.code, headers=headers)


def _status_error(failure: UpstreamStatus, redact: Redactor) -> ApiError:
    """The node's error for an upstream 4xx/5xx answer.

    Everything taken from the upstream's body (message, type, code) is masked
    first and cut after, so a key the upstream echoes never comes back, not
    even its head across the cut.
    """
    status, body = failure.status, failure.body
    message, type_, code = "", None, None
    try:
        data = ujson.loads(body)
    except (ValueError, OverflowError):
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or ""
            type_ = err.get("type") if isinstance(err.get("type"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
        elif isinstance(err, str):
            message = err
        if not message and isinstance(data.get("detail"), str):
            message = data["detail"]
    if not isinstance(message, str) or not message:
        message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    seconds = retry_after_header(failure.retry_after) if status in RETRY_AFTER_STATUSES else None
    key = failure.api_key
    return ApiError(
        status,
        f"Error from {failure.provider} API: {redact.cut(message, MAX_ERROR_MESSAGE, key)}",
        type=redact.cut(type_, MAX_ERROR_FIELD, key) if type_ else ("upstream_error" if status >= 500 else None),
        code=redact.cut(code, MAX_ERROR_FIELD, key) if code else None,
        headers={"Retry-After": seconds} if seconds else None,
    )
