"""``GET /status`` (the operator's page, open) and ``GET /status.json`` (its data, gated like ``/v1``).

The page is one static file, ``handlers/status.html``: inline CSS and script,
no data of its own. It is read once at start-up and served with a
Content-Security-Policy that lets it run only its own inline script and style
(by their SHA-256) and fetch only from this node, so nothing outside the file
can load. The data comes from :mod:`utils.status`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from handlers.base import ApiHandler, BaseHandler
from utils.status import status

PAGE_FILE = Path(__file__).resolve().parent / "status.html"


def content_policy(page: str) -> str:
    """A CSP that allows exactly the page's inline ``<script>`` and ``<style>`` blocks, and fetches to this origin."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    return (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self';"
        " img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def load_page(path: Path = PAGE_FILE) -> tuple[bytes, str]:
    """The page's bytes and its Content-Security-Policy."""
    page = path.read_text(encoding="utf-8")
    return page.encode(), content_policy(page)


class StatusPageHandler(BaseHandler):
    """The status page: open like /health (its data, /status.json, is not)."""

    route_name = "status_page"

    def initialize(self, page: bytes, policy: str) -> None:  # type: ignore[override]
        super().initialize()
        self.page = page
        self.policy = policy

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", self.policy)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-cache")
        self.finish(self.page)


class StatusHandler(ApiHandler):
    """The page's figures (see utils/status.py): behind ALLOWED_CLIENTS and SERVICE_API_KEY.

    Like /health it is not a request in flight: it is answered at MAX_CONCURRENT_REQUESTS too (when an
    operator most wants to look), and it is not among the figures it reports, on any worker.
    """

    route_name = "status"

    def _admit(self) -> None:
        pass

    async def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.write_json(await status(self.ctx))


_page, _policy = load_page()

routes = [
    (r"/status", StatusPageHandler, {"page": _page, "policy": _policy}),
    (r"/status.json", StatusHandler),
]
