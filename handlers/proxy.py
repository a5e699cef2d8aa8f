"""The OpenAI-compatible proxy: ``POST /v1/chat/completions``, ``/v1/responses``, ``/v1/embeddings``, ``/v1/completions``.

One handler for all four; the endpoint table (``models.endpoints``) says
where each goes upstream, whether the chat rules apply, and how a stream that
fails after its first byte ends.
"""

from __future__ import annotations

from handlers.base import ApiHandler
from models.chat import ProxyRequest, parse_proxy_request
from models.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Endpoint
from models.errors import ApiError
from utils import metrics
from utils.cost import usd_text
from utils.upstream import check_custom_provider, shutdown_error
from utils.upstream.routing import Plan


class ProxyHandler(ApiHandler):
    """Validate, pick the provider, relay the answer (JSON or SSE) as it comes."""

    endpoint: Endpoint = CHAT
    route_name = CHAT.route
    accept_body = True
    machine_ip_header = True
    cost: float | None = None  # USD of the answer, when PRICES_FILE prices it (the access line)
    plan: Plan | None = None  # a stream's plan, settled at its first byte

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.route_name = cls.endpoint.route  # the metrics and log name is the endpoint's

    async def post(self) -> None:
        """Validate, plan, call and answer (one coroutine: this is the hot path)."""
        if not self.body_received():
            return
        request = self.parse()
        if self.answered_here(request):
            return
        ctx = self.ctx
        self.session = request.session
        self.model = request.client_model
        plan = ctx.routing.plan(request)
        if self.cancel.trace is not None:
            self.cancel.trace.note(request)  # tracing: the sampling parameters on each attempt's span
        if request.custom is not None:
            await check_custom_provider(request.custom, ctx.settings.custom_provider_allow_private, ctx.resolve)
        self.provider = plan.primary.target.label
        if not request.stream:
            response, attempt = await ctx.upstream.complete_plan(plan, self.cancel)
            self.answered_by(attempt.model_id)
            self.provider = attempt.target.label
            self.usage = response.usage
            cost = response.cost
            if cost is not None:
                self.cost = cost
                self._headers["X-Mira-Cost-USD"] = usd_text(cost)  # digits and a dot: set without set_header's checks
            self.upstream_status = response.status
            self.set_status(response.status)
            self.set_header("Content-Type", response.content_type)
            self.finish(response.body)
            return
        # A held stream keeps only what it relays: the raw body goes now, the parsed request when the first byte
        # goes to the client (begin: no fallback is possible after it).
        del request
        self._chunks = []
        self.plan = plan
        result, attempt = await ctx.upstream.stream_plan(plan, self, self.cancel)
        self.provider = attempt.target.label
        self.usage = result.usage
        self.cost = result.cost  # no header: a stream's headers are gone before its usage is known
        self.upstream_status = result.status
        if result.ttfb is not None:
            metrics.upstream_ttfb(attempt.target.label, result.ttfb)
        if self.cancel.shutting_down:
            metrics.stream_event("shutdown")
            self.end_stream(shutdown_error())
            return
        if result.outcome == "client_aborted" or self.cancel.cancelled:
            self.client_aborted = True
            metrics.stream_event("client_aborted")
            return
        if result.outcome == "upstream_failed" and result.error is not None:
            metrics.stream_event("upstream_failed")
            self.end_stream(result.error)
            return
        metrics.stream_event("completed")
        self.finish()

    def answered_here(self, request: ProxyRequest) -> bool:
        """Whether the node answers ``request`` itself, with no upstream call (count_tokens' estimate)."""
        return False

    def parse(self) -> ProxyRequest:
        """The validated request (a 400 raised when it is not)."""
        ctx = self.ctx
        return parse_proxy_request(self.body, ctx.registry.routable, ctx.settings.allow_custom_providers, self.endpoint)

    def end_stream(self, error: ApiError) -> None:
        """End a stream that has begun with one error event (in its API's format), so the client knows it is incomplete."""
        self.write(self.endpoint.error_event(error))
        self.finish()

    def answered_by(self, model_id: str) -> None:
        """``X-Mira-Model``: the model that answered (the primary, or the fallback that took over)."""
        self.set_header("X-Mira-Model", model_id)

    # -- StreamSink -------------------------------------------------------------------

    def begin(self, model_id: str) -> None:
        """Switch the response to SSE before its first byte."""
        metrics.stream_event("opened")
        if self.plan is not None:
            self.plan.settle()
        self.answered_by(model_id)
        self.start_streaming("text/event-stream")


class ChatCompletionsHandler(ProxyHandler):
    endpoint = CHAT


class ResponsesHandler(ProxyHandler):
    endpoint = RESPONSES


class EmbeddingsHandler(ProxyHandler):
    endpoint = EMBEDDINGS


class CompletionsHandler(ProxyHandler):
    endpoint = COMPLETIONS


routes = [
    (f"/v1{handler.endpoint.path}", handler)
    for handler in (ChatCompletionsHandler, ResponsesHandler, EmbeddingsHandler, CompletionsHandler)
]
