"""Logging set-up: text or one JSON object per line, secrets masked, access lines."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import ujson

from utils import metrics
from utils.redact import PROCESS_REDACTOR, STANDARD_RECORD_FIELDS, RedactingFilter, Redactor, escape_control

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


def setup_logging(level: str, fmt: str, redactor: Redactor) -> None:
    """Send every log line (ours, Tornado's, warnings) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    handler.addFilter(RedactingFilter(redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Process-life lines (start-up, draining, stopped) are written at any LOG_LEVEL.
    if logging.getLevelName(level) > logging.INFO:
        logging.getLogger("mira.server").setLevel(logging.INFO)
    # Tornado's own access log is replaced by ours.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)


def log_request(handler: Any) -> None:
    """Tornado's ``log_function``: one access line and the request metrics."""
    status = handler.get_status()
    seconds = handler.request.request_time()
    route = getattr(handler, "route_name", "other")
    metrics.request_done(route, status, seconds)
    if not access_log.isEnabledFor(logging.INFO):
        return
    request = handler.request
    redact = PROCESS_REDACTOR
    provider = getattr(handler, "provider", "")
    fields = {
        "request_id": getattr(handler, "request_id", ""),  # vetted by the base handler
        "method": request.method,
        "path": escape_control(redact(request.path)),
        "status": status,
        "duration_ms": round(seconds * 1000, 2),
        "provider": escape_control(redact(provider)) if provider else None,
        "upstream_status": getattr(handler, "upstream_status", None),
        "stream_bytes": getattr(handler, "stream_bytes", 0),
        "client_aborted": getattr(handler, "client_aborted", False),
    }
    usage = getattr(handler, "usage", None)
    tokens = ""
    if usage is not None:
        fields["prompt_tokens"], fields["completion_tokens"] = usage.prompt, usage.completion
        tokens = f" tokens={usage.prompt}/{usage.completion}"
    access_log.info(
        "%s %s %s %d %.1fms provider=%s upstream=%s bytes=%d aborted=%s%s",
        fields["request_id"], request.method, fields["path"], status, seconds * 1000,
        fields["provider"] or "-", fields["upstream_status"] or "-", fields["stream_bytes"],
        "yes" if fields["client_aborted"] else "no", tokens,
        extra=fields,
    )
