"""``GET /openapi.json`` and ``GET /metrics``: the node describing itself.

Neither is under ``/v1``, so neither needs the service key nor counts
against the concurrency limit.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from handlers.base import BaseHandler
from utils import metrics

OPENAPI_FILE = Path(__file__).resolve().parent.parent / "openapi.json"


def load_document(path: Path = OPENAPI_FILE) -> bytes:
    """The bytes of the hand-written OpenAPI document, served as they are."""
    return path.read_bytes()


def metrics_exposition() -> bytes:
    """The Prometheus text exposition of this process, or of all workers.

    With PROMETHEUS_MULTIPROC_DIR set, every worker writes its samples there
    and the answer aggregates them into a fresh registry.
    """
    metrics.flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class OpenApiHandler(BaseHandler):
    """The OpenAPI 3 document of the node's HTTP API."""

    route_name = "openapi"

    def initialize(self, document: bytes) -> None:  # type: ignore[override]
        super().initialize()
        self.document = document

    def get(self) -> None:
        self.finish(self.document)


class MetricsHandler(BaseHandler):
    """Prometheus scrape endpoint."""

    route_name = "metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(metrics_exposition())


routes = [
    (r"/openapi.json", OpenApiHandler, {"document": load_document()}),
    (r"/metrics", MetricsHandler),
]
