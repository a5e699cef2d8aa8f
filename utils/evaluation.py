"""CSV evaluation: prompts from rows, verdict cells, and the concurrent run that fills them.

:class:`EvalRun` calls every (row, model) pair with at most ``concurrency``
calls in flight, taking the pairs in row order, and hands back completed rows
strictly in input order as soon as each one (and every row before it) is
done, so the handler can stream the result CSV while the eval goes on.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from models.errors import ApiError
from models.evaluation import EvalRequest
from models.verify import ModelRef
from utils.upstream import Cancel, Cancelled, ProviderRegistry, UpstreamClient, shutdown_error
from utils.verify import complete_chat, message_text, reply_message

log = logging.getLogger("mira.eval")

# Fills the cell of (row index, model index); raises ApiError when the call failed.
CellCall = Callable[[int, int], Awaitable[str]]


def build_prompt(header: Sequence[str], row: Sequence[str]) -> str:
    """The user prompt of one row: each cell as ``HEADER:\\n VALUE\\n\\n\\n`` (``VALUE\\n\\n\\n`` under an empty header)."""
    parts = []
    for name, value in zip(header, row, strict=True):
        parts.append(f"{name}:\n {value}\n\n\n" if name.strip() else f"{value}\n\n\n")
    return "".join(parts)


def normalise_verdict(text: str) -> str:
    """The cell written back for a reply: trimmed, lowercased, without ``.``."""
    return text.replace(".", "").strip().lower()


def error_cell(message: str) -> str:
    """The cell of a call that failed after its retries."""
    return f"error: {message}"


def eval_payload(system_prompt: str, prompt: str) -> dict[str, Any]:
    """The chat body of one eval call (``model`` is set per model)."""
    messages = [{"role": "user", "content": prompt}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"messages": messages}


def output_header(header: Sequence[str], models: Sequence[ModelRef]) -> list[str]:
    """The result CSV's header: the input header, then one column per model id."""
    return [*header, *(ref.id for ref in models)]


def format_csv_rows(rows: Sequence[Sequence[str]]) -> str:
    """CSV text of ``rows`` with proper quoting (RFC 4180, CRLF line ends)."""
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def make_cell_call(
    upstream: UpstreamClient, registry: ProviderRegistry, request: EvalRequest, cancel: Cancel | None
) -> CellCall:
    """The call that fills one cell of ``request`` through the upstream client."""
    header, rows, models = request.table.header, request.table.rows, request.models

    async def call(row: int, column: int) -> str:
        ref = models[column]
        payload = eval_payload(request.system_prompt, build_prompt(header, rows[row]))
        completion = await complete_chat(upstream, registry, ref, payload, cancel)
        message = reply_message(completion)
        if message is None:
            raise ApiError(502, f"{ref.provider} API answered without a message")
        return normalise_verdict(message_text(message))

    return call


class _Row:
    __slots__ = ("cells", "remaining")

    def __init__(self, columns: int) -> None:
        self.cells: list[str] = [""] * columns
        self.remaining = columns


class EvalRun:
    """The calls of one eval, at most ``concurrency`` at once, rows released in order.

    Use it as::

        run = EvalRun(rows, columns, call, concurrency)
        run.start()
        try:
            while (ready := await run.next_rows()) is not None:
                ...  # (row index, verdict cells) in input order
        finally:
            await run.close()

    :meth:`stop` (the client went away) lets no new call start and wakes the
    reader, which then gets None.
    """

    def __init__(self, rows: int, columns: int, call: CellCall, concurrency: int) -> None:
        self.call = call
        self.concurrency = max(1, concurrency)
        self.stopped = False
        self._columns = columns
        self._rows = [_Row(columns) for _ in range(rows)]
        self._jobs: Iterator[tuple[int, int]] = ((r, c) for r in range(rows) for c in range(columns))
        self._next = 0  # first row not yet handed out
        self._workers: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    def start(self) -> None:
        """Start the workers (no more than there are calls)."""
        total = len(self._rows) * self._columns
        for _ in range(min(self.concurrency, total)):
            self._workers.append(asyncio.ensure_future(self._work()))

    def stop(self) -> None:
        """Start no new call, and release the reader."""
        self.stopped = True
        self._wake.set()

    async def _work(self) -> None:
        while not self.stopped:
            job = next(self._jobs, None)
            if job is None:
                return
            row, column = job
            cell = await self._fill(row, column)
            state = self._rows[row]
            state.cells[column] = cell
            state.remaining -= 1
            if state.remaining == 0:
                self._wake.set()

    async def _fill(self, row: int, column: int) -> str:
        try:
            return await self.call(row, column)
        except ApiError as exc:
            return error_cell(exc.message)
        except Cancelled as exc:
            return error_cell(shutdown_error().message if exc.shutting_down else "cancelled")
        except Exception:
            log.exception("eval call for row %d, column %d failed", row + 1, column + 1)
            return error_cell("internal error")

    async def next_rows(self) -> list[tuple[int, list[str]]] | None:
        """Wait for the next row to complete; return it with every completed row after it.

        None when every row has been returned, or after :meth:`stop`.
        """
        rows = self._rows
        while True:
            if self.stopped or self._next >= len(rows):
                return None
            if rows[self._next].remaining == 0:
                break
            self._wake.clear()
            await self._wake.wait()
        ready: list[tuple[int, list[str]]] = []
        while self._next < len(rows) and rows[self._next].remaining == 0:
            ready.append((self._next, rows[self._next].cells))
            rows[self._next].cells = []  # written out: let it go
            self._next += 1
        return ready

    async def close(self) -> None:
        """Stop, cancel the calls still running (none once every row is out) and reap the workers."""
        self.stop()
        for task in self._workers:
            if not task.done():
                task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
