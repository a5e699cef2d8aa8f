"""Validation of ``POST /v1/eval`` bodies, the CSV included.

The whole CSV is parsed and checked here, before any model is called: a
header must be present, every row must have as many cells as the header, and
there may be at most EVAL_MAX_ROWS rows. A bad row is named by the line of the
CSV text it starts on (the header is line 1; a quoted cell may span lines).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from models.chat import check_type, is_unicode, parse_custom_provider, parse_json_object
from models.errors import bad_request
from models.jsonbody import check_json_numbers
from models.verify import ModelRef, resolve_models

# A cell may be as large as a request body; the csv module's default cap is 128 KiB.
csv.field_size_limit(1 << 30)


@dataclass
class CsvTable:
    """A parsed CSV: the header and the data rows (blank lines dropped)."""

    header: list[str]
    rows: list[list[str]]


@dataclass
class EvalRequest:
    """A validated eval request."""

    table: CsvTable
    models: list[ModelRef]
    system_prompt: str


def parse_csv_table(text: str, max_rows: int) -> CsvTable:
    """Parse and check the eval CSV; raise :class:`ApiError` (400) naming the first bad line."""
    if not is_unicode(text):
        raise bad_request("CSV contains a lone surrogate escape (\\ud800-\\udfff): it is not valid Unicode text", param="csv")
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise bad_request(f"CSV is malformed at line {start}: {exc}", param="csv") from None
        if not row:  # a blank line
            continue
        if header is None:
            header = row
            continue
        if len(row) != len(header):
            raise bad_request(
                f"CSV row at line {start} has {len(row)} cells but the header has {len(header)}", param="csv"
            )
        if len(rows) >= max_rows:
            raise bad_request(f"CSV has more than {max_rows} rows (EVAL_MAX_ROWS)", param="csv")
        rows.append(row)
    if header is None:
        raise bad_request("CSV is empty: the first row must be the header", param="csv")
    return CsvTable(header=header, rows=rows)


def parse_eval_request(raw: bytes, providers: Collection[str], allow_custom: bool, max_rows: int) -> EvalRequest:
    """Validate a ``/v1/eval`` body; raise :class:`ApiError` (400) when bad."""
    body: dict[str, Any] = parse_json_object(raw)
    check_json_numbers(body)
    check_type(body, "csv", (str,))
    check_type(body, "eval_system_prompt", (str,))
    if not body.get("csv"):
        raise bad_request("'csv' is required: CSV text whose first row is the header", param="csv")
    custom = parse_custom_provider(body.get("model_provider"), allow_custom)
    models = resolve_models(body.get("models"), providers, custom)
    table = parse_csv_table(body["csv"], max_rows)
    return EvalRequest(table=table, models=models, system_prompt=body.get("eval_system_prompt") or "")
