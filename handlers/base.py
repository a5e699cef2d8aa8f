"""The one base handler: request ids, CORS, JSON errors, body limits, auth.

Every handler of the node derives from :class:`BaseHandler`. Whatever goes
wrong in a handler ends up in :meth:`BaseHandler.write_error`, which answers
the OpenAI error shape; an :class:`~models.errors.ApiError` keeps its status,
anything else is a 500 logged with its traceback and a body without internals.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import time
from http.client import responses
from typing import Any

import ujson
from tornado.http1connection import HTTP1Connection
from tornado.web import HTTPError, RequestHandler, stream_request_body

from models.errors import ERROR_TYPES, ApiError
from models.jsonbody import json_bytes
from utils import metrics, tracing
from utils.context import NodeContext
from utils.http1 import empty_headers
from utils.upstream import Cancel, Cancelled, check_custom_provider, shutdown_error

log = logging.getLogger("mira.handlers")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID, OpenAI-Organization, OpenAI-Project"
# The node's own answer headers a page's script may read (a browser hides every other one).
_CORS_EXPOSE_HEADERS = "X-Request-ID, X-Mira-Model, X-Mira-Cost-USD, Retry-After"
_MACHINE_HEADERS = ("X-Machine-IP", "X-Machine-Name")  # never on a 401 or 403: the caller is not trusted
_checked_values: set[str] = set()  # header values of the node's settings that passed set_header's check
_date: tuple[int, str] = (-1, "")  # the second of the last Date header made, and that header


def http_date() -> str:
    """The ``Date`` header of an answer sent now (RFC 9110 format, made at most once a second)."""
    global _date
    now = int(time.time())
    if now != _date[0]:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


@stream_request_body
class BaseHandler(RequestHandler):
    """Shared behaviour of every endpoint.

    Bodies are streamed in (never buffered by Tornado) so that a body over
    MAX_BODY_SIZE is refused with 413 as soon as that is known; handlers read
    the complete body from :attr:`body`.
    """

    route_name = "other"
    accept_body = False  # POST handlers set True; others discard any body
    machine_ip_header = False  # chat, verify and eval answer with X-Machine-IP
    ctx: NodeContext

    request_id = ""

    def initialize(self) -> None:
        self.provider = ""
        self.session = ""  # the session the request names (the access line records it)
        self.usage: Any = None  # the token usage the upstream reported (utils.upstream.usage.Usage)
        self.upstream_status: int | None = None
        self.bytes_sent = 0  # the answer's body bytes, counted as they are flushed (the access line)
        self.model = ""  # the model as the client named it (the access line)
        self.client_aborted = False
        self._chunks: list[bytes] = []
        self._body_size = 0
        self._body_pending = False  # a REQUEST_BODY_TIMEOUT deadline is set (ctx.body_deadlines)

    # -- headers common to every response ----------------------------------------

    def clear(self) -> None:
        """Reset the answer (Tornado calls this on start and again on ``send_error``).

        As Tornado's own, less its ``Server`` header (the node's version is for ``--version`` and
        ``mira_build_info``, not for every caller) and with a ``Date`` made once a second.
        """
        self._headers = empty_headers()
        self._headers["Date"] = http_date()
        self.set_default_headers()
        self._write_buffer = []
        self._status_code = 200
        self._reason = "OK"

    def set_default_headers(self) -> None:
        # Runs from RequestHandler.__init__ (before initialize) and again on send_error. Values the node made or
        # checked itself go in without set_header's per-value check (hot path); outside text goes through it.
        headers = self._headers
        if not self.request_id:
            self.ctx = self.application.settings["ctx"]
            idle = self.ctx.idle_connections
            if idle is not None:  # this request's headers came in time: the connection's idle deadline is off
                idle.discard(getattr(self.request.connection, "stream", None))
            incoming = self.request.headers.get("X-Request-ID", "")
            if incoming and _REQUEST_ID_OK.match(incoming) and not self.ctx.redactor.found_in(incoming):
                self.request_id = incoming
            else:
                # A correlation id, not a secret: the process's PRNG (reseeded in each forked worker), no syscall.
                self.request_id = f"{random.getrandbits(128):032x}"
        headers["X-Request-ID"] = self.request_id  # _REQUEST_ID_OK's characters, or hex
        headers["Content-Type"] = "application/json"
        if self.machine_ip_header:
            ip = self.ctx.machine_ip
            headers["X-Machine-IP"] = ip if ip in _checked_values else self._checked(ip)  # MACHINE_IP's text
            name = self.ctx.router_status.name
            if name:
                self.set_header("X-Machine-Name", name)  # the router's text
        origins = self.ctx.settings.cors_origins
        if "*" in origins:
            headers["Access-Control-Allow-Origin"] = "*"
            headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS
        else:
            origin = self.request.headers.get("Origin")
            if origin and origin in origins:
                self.set_header("Access-Control-Allow-Origin", origin)
                self.set_header("Access-Control-Expose-Headers", _CORS_EXPOSE_HEADERS)
                self.set_header("Vary", "Origin")

    def _checked(self, value: str) -> str:
        """``value`` as set_header checks it (an unsafe one raises), remembered once it passes."""
        checked = self._convert_header_value(value)
        if len(_checked_values) < 64:
            _checked_values.add(checked)
        return checked

    def options(self, *args: Any) -> None:
        """CORS preflight for any path."""
        self.set_status(204)
        self.clear_header("Content-Type")
        self.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        requested = self.request.headers.get("Access-Control-Request-Headers")
        self.set_header("Access-Control-Allow-Headers", requested or _CORS_ALLOW_HEADERS)
        self.set_header("Access-Control-Max-Age", "600")
        self.finish()

    def finish(self, chunk: Any = None) -> Any:
        """Finish the response; while draining, close its connection once it is sent.

        Clients then open their next request elsewhere instead of on a node
        that is going away (new connections are already refused).
        """
        if self.ctx.draining and not self._headers_written:
            self.set_header("Connection", "close")
        future = super().finish(chunk)
        if self.ctx.draining:
            future.add_done_callback(lambda _: self._close_connection())
        return future

    def flush(self, include_footers: bool = False) -> Any:
        """Send what is written so far; its bytes count toward :attr:`bytes_sent`."""
        buffered = self._write_buffer
        if buffered:
            self.bytes_sent += sum(map(len, buffered))
        return super().flush(include_footers)

    def compute_etag(self) -> None:
        return None  # API answers are not cached; skip hashing every body

    # -- request body --------------------------------------------------------------------

    def prepare(self) -> None:
        limit = self.ctx.settings.max_body_size
        length = self.request.headers.get("Content-Length")
        if length is not None and self.request.method != "OPTIONS":
            try:
                size = int(length)
            except ValueError:
                raise ApiError(400, "Invalid Content-Length header") from None
            if size > limit:
                raise ApiError(413, f"Request body is larger than the limit of {limit} bytes", code="request_too_large")
        # Tornado would answer a chunked body over its own limit with a bare 400;
        # lift it and count in data_received, which answers 413.
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(1 << 62)
        if self.accept_body and (length not in (None, "0") or "Transfer-Encoding" in self.request.headers):
            # A body must be complete within REQUEST_BODY_TIMEOUT of the end of the headers.
            self._body_pending = True
            self.ctx.body_deadlines.add(self, self.ctx.settings.request_body_timeout, self._body_timed_out)

    def _body_timed_out(self) -> None:
        self._body_pending = False
        if not self._finished:
            self._chunks.clear()
            error = ApiError(408, "Request body did not arrive in time (REQUEST_BODY_TIMEOUT)", code="request_timeout")
            self.send_error(408, exc_info=(ApiError, error, None))

    def _body_complete(self) -> None:
        if self._body_pending:
            self._body_pending = False
            self.ctx.body_deadlines.discard(self)

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        self._body_size += len(chunk)
        if self._body_size > self.ctx.settings.max_body_size:
            self._chunks.clear()
            self.send_error(413, exc_info=(ApiError, ApiError(413, "Request body is too large", code="request_too_large"), None))
            return
        if self.accept_body:
            self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        """The complete request body (joined once; the chunks are let go)."""
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    # -- errors ----------------------------------------------------------------------------

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, Cancelled):
            if not exc.shutting_down:  # the client is gone: nothing to say to it
                self.client_aborted = True
                self.set_status(499, "Client Closed Request")
                return
            exc = shutdown_error()
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
            exc = ApiError(405, f"Method {self.request.method} is not allowed on {self.request.path}")
        if isinstance(exc, ApiError):
            error = exc
            self.set_status(exc.status)
            for name, value in exc.headers.items():
                self.set_header(name, value)
        elif isinstance(exc, HTTPError) and exc.status_code < 500:
            reason = exc.reason or kwargs.get("reason") or responses.get(status_code, "Unknown")  # send_error's reason
            message = exc.log_message % exc.args if exc.log_message and exc.args else (exc.log_message or reason)
            error = ApiError(status_code, message or reason)
        elif status_code < 500:
            error = ApiError(status_code, kwargs.get("reason") or responses.get(status_code, "Unknown"))
        else:
            error = ApiError(status_code, "The server had an error while processing your request", type=ERROR_TYPES.get(500))
        self.clear_header("Content-Type")
        self.set_header("Content-Type", "application/json")
        if error.status in (401, 403):
            for name in _MACHINE_HEADERS:
                self.clear_header(name)
        closing = error.status in (408, 413) or error.code == "client_forbidden"
        if closing:
            # The rest of the body is not worth waiting for: answer, then close the connection.
            self.set_header("Connection", "close")
        future = self.finish(self.error_body(error))
        if closing:
            future.add_done_callback(lambda _: self._close_connection())

    def error_body(self, error: ApiError) -> bytes:
        """The body of an error answer: OpenAI's shape (the Messages routes answer Anthropic's)."""
        return ujson.dumps({"error": error.to_dict()}, escape_forward_slashes=False).encode()

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The HTTP methods this handler implements (for the ``Allow`` header of a 405)."""
        return [m for m in cls.SUPPORTED_METHODS if getattr(cls, m.lower()) is not getattr(RequestHandler, m.lower())]

    def _close_connection(self) -> None:
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None and not stream.closed():
            stream.close()

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, Cancelled):
            return
        if isinstance(value, ApiError):
            if value.status >= 500 and value.status != 503:
                log.warning("%s %s: %s %s", self.request_id, self.request.path, value.status, value.message)
            return
        if isinstance(value, HTTPError) and value.status_code < 500:
            return
        log.error(
            "%s %s %s: unexpected error", self.request_id, self.request.method, self.request.path, exc_info=(typ, value, tb)
        )

    # -- lifecycle -------------------------------------------------------------------------

    def on_finish(self) -> None:
        self._body_complete()
        idle = self.ctx.idle_connections
        if idle is not None:  # the connection has IDLE_TIMEOUT to send its next request's headers (server.NodeServer)
            stream = getattr(self.request.connection, "stream", None)
            if stream is not None and not stream.closed():
                idle.add(stream, self.ctx.idle_timeout, stream.close)

    def on_connection_close(self) -> None:
        self.client_aborted = True
        self._body_complete()

    def start_streaming(self, content_type: str) -> None:
        """Headers of a response sent in pieces as they come (SSE, the eval CSV), and no Nagle delay on its socket."""
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json_bytes(data))


class ApiHandler(BaseHandler):
    """Base of the ``/v1/*`` endpoints: service key, concurrency limit, cancellation.

    ``self.cancel`` is cancelled when the client disconnects: every upstream
    call made under it is aborted at once.
    """

    takes_x_api_key = False  # the Messages routes: the service key may come as x-api-key too

    def initialize(self) -> None:
        super().initialize()
        self.cancel = Cancel()
        self._counted = False

    def on_finish(self) -> None:
        super().on_finish()
        self._release()
        if self.cancel.trace is not None:
            self.cancel.trace.finish(self)

    def on_connection_close(self) -> None:
        if self.cancel.trace is not None and self._body_pending:
            self.cancel.trace.finish(self, 499)  # gone before its body was complete: the request never finishes
        self.cancel.cancel()
        super().on_connection_close()
        self._release()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.ctx.release(self.cancel)
            metrics.in_flight(-1)

    def prepare(self) -> None:
        if tracing.active is not None:
            self.cancel.trace = tracing.active.request(self)  # the request's SERVER span
        gate = self.ctx.gate
        request = self.request
        if gate.proxied:
            # The client behind a trusted proxy: the address every check and log line uses from here on.
            request.remote_ip = gate.client_of(request.remote_ip or "", request.headers.get("X-Forwarded-For"))
        if gate.restricted and not gate.allows(request.remote_ip or ""):
            self.forbid_client()
            return
        if gate.needs_key and request.method != "OPTIONS":
            api_key = request.headers.get("x-api-key", "") if self.takes_x_api_key else ""
            if not gate.key_accepted(request.headers.get("Authorization", ""), api_key):
                raise ApiError(401, "Invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key")
        if not self.accept_body and self.request.method != "OPTIONS":
            self._admit()
        super().prepare()

    async def vet_models(self, models: Any) -> None:
        """Verify and eval: note the providers asked (the access line), vet a custom provider (SSRF) before any call."""
        self.provider = ",".join(sorted({ref.provider for ref in models}))
        self.model = ",".join(ref.id for ref in models)
        custom = models[0].custom
        if custom is not None:
            await check_custom_provider(custom, self.ctx.settings.custom_provider_allow_private, self.ctx.resolve)

    def forbid_client(self) -> None:
        """403 ``client_forbidden`` before the body is read, and the connection closed after it.

        The request never counts as in flight and its body (if any) is never
        waited for: the answer goes out now and the socket is closed.
        """
        self._chunks.clear()
        error = ApiError(403, "This node does not serve your address (ALLOWED_CLIENTS)", code="client_forbidden")
        self.send_error(403, exc_info=(ApiError, error, None))

    def body_received(self) -> bool:
        """Call first in a handler method that reads the body: the body is complete.

        Only now does the request count toward MAX_CONCURRENT_REQUESTS (a
        client trickling its body holds a connection, never a slot). False
        when the request has been answered already (413, 408).
        """
        self._body_complete()
        if self._finished:
            return False
        self._admit()
        return True

    def _admit(self) -> None:
        """Count this request in flight, or 503 when the node is at MAX_CONCURRENT_REQUESTS."""
        ctx = self.ctx
        if ctx.in_flight >= ctx.settings.max_concurrent_requests:
            raise ApiError(503, "The node is at its concurrent request limit; retry shortly", code="overloaded",
                           headers={"Retry-After": "1"})
        ctx.admit(self.cancel)
        self._counted = True
        metrics.in_flight(1)


class NotFoundHandler(BaseHandler):
    """Any path the node does not serve: an OpenAI-shaped 404."""

    route_name = "not_found"

    def prepare(self) -> None:
        if self.request.method == "OPTIONS":
            return
        raise ApiError(404, f"Unknown path: {self.request.method} {self.request.path[:200]}", code="not_found")
