"""``POST /v1/eval``: a CSV of prompts × a list of models → the CSV with one verdict column per model.

The CSV is validated whole before any call; the result is streamed (chunked)
row by row in input order as rows complete.
"""

from __future__ import annotations

from tornado.iostream import StreamClosedError

from handlers.base import ApiHandler
from models.evaluation import parse_eval_request
from utils.evaluation import EvalRun, format_csv_rows, make_cell_call, output_header


class EvalHandler(ApiHandler):
    """Validate the CSV, run the calls concurrently, stream the result CSV."""

    route_name = "eval"
    accept_body = True
    machine_ip_header = True

    def initialize(self) -> None:
        super().initialize()
        self.run: EvalRun | None = None

    async def post(self) -> None:
        if not self.body_received():
            return
        ctx = self.ctx
        request = parse_eval_request(
            self.body, ctx.registry.routable, ctx.settings.allow_custom_providers, ctx.settings.eval_max_rows
        )
        table = request.table
        await self.vet_models(request.models)
        self.start_streaming("text/csv; charset=utf-8")

        call = make_cell_call(ctx.upstream, ctx.registry, request, self.cancel)
        self.run = run = EvalRun(len(table.rows), len(request.models), call, ctx.settings.eval_concurrency)
        run.start()
        try:
            await self._send([output_header(table.header, request.models)])
            while (ready := await run.next_rows()) is not None:
                await self._send([table.rows[index] + cells for index, cells in ready])
        except StreamClosedError:
            self._client_gone()
        finally:
            await run.close()
        if self.cancel.cancelled:
            self.client_aborted = True
            return
        self.finish()

    async def _send(self, rows: list[list[str]]) -> None:
        """Write rows of the result CSV and flush them to the client."""
        data = format_csv_rows(rows).encode("utf-8")
        self.write(data)
        await self.flush()

    def _client_gone(self) -> None:
        self.cancel.cancel()
        if self.run is not None:
            self.run.stop()

    def on_connection_close(self) -> None:
        self._client_gone()
        super().on_connection_close()


routes = [
    (r"/v1/eval", EvalHandler),
]
