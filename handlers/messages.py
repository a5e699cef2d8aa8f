"""The Anthropic Messages API at the node's door: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

The same proxy as chat (routing, fallbacks, retries, circuits, key pools,
limits, cancel on disconnect), with the Messages request's own validation and
Anthropic's error shape for everything the node answers itself. A Messages
provider gets the request as it came and its answer (errors included) comes
back byte for byte; any other provider's is translated both ways
(:mod:`utils.translate`).
"""

from __future__ import annotations

from handlers.proxy import ProxyHandler
from models.chat import ProxyRequest
from models.endpoints import COUNT_TOKENS, MESSAGES, anthropic_error
from models.errors import ApiError
from models.jsonbody import json_bytes
from models.messages import parse_messages_request
from utils.translate import count_tokens_estimate
from utils.upstream.routing import header_safe

BETA_QUERY = "?beta=true"  # what Claude Code adds to its calls; passed on to a Messages provider


class MessagesHandler(ProxyHandler):
    """``POST /v1/messages``: JSON or SSE, in Anthropic's dialect."""

    endpoint = MESSAGES
    takes_x_api_key = True

    def parse(self) -> ProxyRequest:
        ctx = self.ctx
        query = BETA_QUERY if self.get_query_argument("beta", "") == "true" else ""
        return parse_messages_request(
            self.body, ctx.registry.routable, ctx.settings.allow_custom_providers, self.request.headers, query, self.endpoint
        )

    def error_body(self, error: ApiError) -> bytes:
        """Anthropic's error shape; a Messages provider's own error answer as it came (masked)."""
        if error.upstream_body is not None and error.upstream_api == "anthropic":
            return error.upstream_body
        return json_bytes(anthropic_error(error))


class CountTokensHandler(MessagesHandler):
    """``POST /v1/messages/count_tokens``: relayed to a Messages provider, estimated by the node for the others."""

    endpoint = COUNT_TOKENS

    def answered_here(self, request: ProxyRequest) -> bool:
        """A provider of the other dialect: the node's estimate; a Messages provider: relayed (False)."""
        api = request.custom.api if request.custom is not None else self.ctx.registry.apis[request.provider]
        if api == "anthropic":
            return False
        self.provider = request.provider
        self.set_header("X-Mira-Token-Count", "estimate")
        self.answered_by(header_safe(f"{request.provider}/{request.model}" if request.custom is None else request.model))
        self.write_json({"input_tokens": count_tokens_estimate(request.body)})
        return True


routes = [
    (r"/v1/messages", MessagesHandler),
    (r"/v1/messages/count_tokens", CountTokensHandler),
]
