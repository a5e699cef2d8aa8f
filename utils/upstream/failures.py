"""Typed upstream failures, and the one place that turns each into the caller's OpenAI-shaped error.

Everything that can go wrong in one attempt is an :class:`UpstreamFailure`
subclass: what happened, not what to do about it (retry, fall back, count
against the circuit: :mod:`utils.upstream.policy` decides). :func:`api_error`
is the single mapping to :class:`~models.errors.ApiError`, masking whatever
text came from upstream.

:class:`Cancelled` is not a failure of the upstream: the client went away, or
the drain ran out of time. It is its own exception and never an ``ApiError``.
"""

from __future__ import annotations

import math

import ujson

from models.errors import ApiError
from utils.redact import Redactor

MAX_ERROR_MESSAGE = 500  # characters of an upstream error message passed on (after masking)
MAX_ERROR_FIELD = 100  # characters of an upstream error's type or code passed on
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


def retry_after_seconds(raw: str | None) -> str | None:
    """An upstream Retry-After worth passing on, as whole seconds; an HTTP date or junk is dropped."""
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return str(min(math.ceil(seconds), 3600))


def shutdown_error() -> ApiError:
    return ApiError(503, "The node is shutting down; retry on another node", code="node_shutting_down",
                    headers={"Retry-After": "1"})


def api_error(failure: UpstreamFailure, redact: Redactor) -> ApiError:
    """The caller's error for ``failure``; upstream text in it is masked, then cut."""
    provider = failure.provider
    if isinstance(failure, UpstreamStatus):
        return _status_error(failure, redact)
    if isinstance(failure, InvalidStatus):
        return ApiError(502, f"{provider} API answered with HTTP status {failure.status}, which the node cannot pass on",
                        code="upstream_invalid_response")
    if isinstance(failure, TimedOut):
        return ApiError(504, failure.detail or f"{provider} API did not answer in time", code="upstream_timeout")
    if isinstance(failure, TlsFailed):
        return ApiError(502, f"TLS verification failed for {provider} API: its certificate is not trusted",
                        code="upstream_tls_error")
    if isinstance(failure, ConnectFailed):
        return ApiError(502, f"Could not connect to {provider} API", code="upstream_unreachable")
    if isinstance(failure, ConnectionLost):
        return ApiError(502, f"Connection to {provider} API was lost", code="upstream_connection_lost")
    if isinstance(failure, QueueTimeout):
        return ApiError(503, "No upstream connection became free in time", headers={"Retry-After": "1"})
    if isinstance(failure, Forbidden):
        return ApiError(400, FORBIDDEN_MESSAGE, param="model_provider.base_url", code="custom_provider_forbidden")
    detail = redact.cut(failure.detail, MAX_ERROR_MESSAGE) if failure.detail else "unknown error"
    return ApiError(502, f"Error calling {provider} API: {detail}", code="upstream_error")


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
    seconds = retry_after_seconds(failure.retry_after) if status in (429, 503) else None
    key = failure.api_key
    return ApiError(
        status,
        f"Error from {failure.provider} API: {redact.cut(message, MAX_ERROR_MESSAGE, key)}",
        type=redact.cut(type_, MAX_ERROR_FIELD, key) if type_ else ("upstream_error" if status >= 500 else None),
        code=redact.cut(code, MAX_ERROR_FIELD, key) if code else None,
        headers={"Retry-After": seconds} if seconds else None,
    )
