"""``POST /v1/verify``: one model's verdict on a statement, or a consensus of several."""

from __future__ import annotations

from handlers.base import ApiHandler
from models.verify import parse_verify_request
from utils.verify import run_verify


class VerifyHandler(ApiHandler):
    """Validate, ask the model(s) concurrently, answer the verdict."""

    route_name = "verify"
    accept_body = True
    machine_ip_header = True

    async def post(self) -> None:
        if not self.body_received():
            return
        ctx = self.ctx
        request = parse_verify_request(
            self.body, ctx.registry.routable, ctx.settings.allow_custom_providers, ctx.settings.verify_default_model
        )
        await self.vet_models(request.models)
        answer = await run_verify(ctx.upstream, ctx.registry, request, self.cancel)
        if self.cancel.cancelled:
            self.client_aborted = True
            return
        self.write_json(answer)


routes = [
    (r"/v1/verify", VerifyHandler),
]
