"""``GET /health`` and ``GET /v1/models``."""

from __future__ import annotations

from handlers.base import ApiHandler, BaseHandler


class HealthHandler(BaseHandler):
    """Liveness for load balancers and the router: 503 while draining."""

    route_name = "health"

    def get(self) -> None:
        ctx = self.ctx
        if ctx.draining:
            self.write_json({"status": "draining", "version": ctx.settings.version}, status=503)
        else:
            self.write_json({
                "status": "ok", "version": ctx.settings.version, "providers": ctx.routing.health(),
                "router": ctx.router_status.state,
            })


class ModelsHandler(ApiHandler):
    """The supported models, from SUPPORTED_MODELS_FILE (serialised once)."""

    route_name = "models"

    def get(self) -> None:
        self.finish(self.ctx.models_body)


routes = [
    (r"/health", HealthHandler),
    (r"/v1/models", ModelsHandler),
]
