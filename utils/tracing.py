"""Tracing's switch: whether this process exports OpenTelemetry spans, without loading OpenTelemetry when it does not.

With OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, :func:`start` (each serving
process, after the fork) imports :mod:`utils.spans`, which alone imports the OpenTelemetry SDK, and sets
:data:`active`. Unset, nothing here imports anything, and the request path pays one ``None`` check per
request (``ApiHandler.prepare``) and one per upstream call (``UpstreamClient._across``): the request's
:class:`~utils.spans.RequestTrace` rides on its ``Cancel`` token (``cancel.trace``), None when tracing is off.

Cost (PRICES_FILE): the answer's ``cost`` (``UpstreamResponse.cost``, ``StreamResult.cost``, set by the
upstream client once it has counted the usage) becomes the answering attempt's ``mira.cost_usd``: that span is
ended, at the time its answer was complete, only when the request finishes (:meth:`utils.spans.RequestTrace.finish`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config import Settings
    from utils.redact import Redactor
    from utils.spans import Tracing

active: Tracing | None = None  # this process's tracing, while it is on
SHUTDOWN_WAIT = 2.0  # seconds the drain's end gives the last spans to reach the collector


def start(settings: Settings, redactor: Redactor) -> None:
    """Turn tracing on in this process when the settings name a collector (each worker calls it after its fork)."""
    global active
    if not settings.traces_url or active is not None:
        return
    try:
        from utils.spans import Tracing  # the one import of the OpenTelemetry SDK
    except ImportError as exc:
        from config import ConfigError

        raise ConfigError(
            f"tracing is on (OTEL_EXPORTER_OTLP_ENDPOINT) but the OpenTelemetry SDK cannot be loaded ({exc}):"
            " pip install -r requirements.txt"
        ) from None
    active = Tracing(settings, redactor)


def stop(wait: float = SHUTDOWN_WAIT) -> None:
    """Export what is left (for at most ``wait`` seconds: a stalled collector loses it) and turn tracing off."""
    global active
    tracing, active = active, None
    if tracing is not None:
        tracing.shutdown(wait)
