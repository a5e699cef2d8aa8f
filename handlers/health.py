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
    """The supported models (SUPPORTED_MODELS_FILE) and aliases (MODEL_ALIASES_FILE), serialised once.

    A request with ``anthropic-version`` (an Anthropic SDK, Claude Code) gets Anthropic's list shape.
    """

    route_name = "models"
    takes_x_api_key = True  # an Anthropic client may send the service key as x-api-key

    def get(self) -> None:
        anthropic = "anthropic-version" in self.request.headers
        self.finish(self.ctx.anthropic_models_body if anthropic else self.ctx.models_body)


routes = [
    (r"/health", HealthHandler),
    (r"/v1/models", ModelsHandler),
]
