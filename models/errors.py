"""The OpenAI-shaped error every failure of the node is reported as."""

from __future__ import annotations

from typing import Any

# Default OpenAI error ``type`` for each status the node answers with.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ApiError(Exception):
    """An error answered to the caller as ``{"error": {...}}`` with ``status``.

    Raised anywhere below the handlers (models, utils); the base handler turns
    it into the response. ``message`` must never contain a secret: callers
    building it from upstream text pass that text through ``redact`` first.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers or {}
        # An upstream's own error answer (masked), and the dialect it is in: a client of that dialect gets it as it is.
        self.upstream_body: bytes | None = None
        self.upstream_api = ""

    def to_dict(self) -> dict[str, Any]:
        """The error object, as put under the ``error`` key of a body or SSE event."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 ``invalid_request_error``."""
    return ApiError(400, message, param=param, code=code)
