"""Run a CSV of prompts through a node's ``POST /v1/eval`` and show the progress.

    .venv/bin/python -m tools.eval_client prompts.csv --models openai/gpt-4o groq/llama-3.1-8b-instant \\
        [--url http://localhost:8000] [--system-prompt TEXT] [--output result.csv] [--api-key KEY] \\
        [--fail-on-errors]

The node answers with the result CSV as a chunked stream: the header at once
(the input header plus one column per model), then the rows in input order as
each completes. This client writes that CSV to ``--output`` (default: stdout)
as the rows arrive, exactly as the node sent it, and draws a progress bar on
stderr (rows done of the input's data rows, rate, ETA). Cells may hold quoted
newlines, so rows are counted as complete CSV records, not lines.

``--api-key`` defaults to $SERVICE_API_KEY (the node's own key, when it has
one). ``--fail-on-errors``: a run whose result has any ``error: ...`` cell
(a model call that failed) still writes the whole CSV, then exits 1 (for
scripts and CI). Exit codes: 0 done; 1 the node answered an error (its
message is printed), could not be reached, or cut the stream short, or, with
``--fail-on-errors``, a cell is an error; 2 a usage error (a missing or
unreadable file, a bad URL, or a Python without tqdm). The progress bar is
tqdm (requirements-dev.txt): run it with the venv's Python
(``.venv/bin/python``, which ``make install`` builds).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

try:
    from tqdm import tqdm
except ModuleNotFoundError as missing:  # a Python without the dev requirements (the system one, say): a usage error
    print(f"eval_client: the {missing.name} package is missing: run .venv/bin/python -m tools.eval_client "
          "(make install builds .venv from requirements-dev.txt)", file=sys.stderr)
    raise SystemExit(2) from None

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_URL = "http://localhost:8000"
DEFAULT_TIMEOUT = 900.0
READ_SIZE = 65536
ERROR_PREFIX = "error: "
_QUOTE_OR_NEWLINE = re.compile(rb'["\n]')


class ClientError(Exception):
    """Ends the run with a message on stderr and ``code`` as the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- the CSV coming back -----------------------------------------------------------------


class RecordSplitter:
    """Cuts a CSV byte stream into complete records; a newline inside a quoted cell does not end one.

    Each ``"`` flips the quoted state (an escaped ``""`` flips it twice), and a
    newline outside quotes ends a record. Both bytes are ASCII, so this works on
    UTF-8 without decoding, whatever the chunk boundaries.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._scanned = 0  # bytes of _pending already looked at
        self._quoted = False

    def feed(self, data: bytes) -> list[bytes]:
        """The records completed by ``data``, each with its line end."""
        self._pending += data
        records: list[bytes] = []
        start = 0
        for match in _QUOTE_OR_NEWLINE.finditer(self._pending, self._scanned):
            if match.group() == b'"':
                self._quoted = not self._quoted
            elif not self._quoted:
                records.append(bytes(self._pending[start : match.end()]))
                start = match.end()
        del self._pending[:start]
        self._scanned = len(self._pending)
        return records

    def rest(self) -> bytes:
        """What is left after the last line end (a last record without one, or nothing)."""
        rest, self._pending, self._scanned = bytes(self._pending), bytearray(), 0
        return rest


def is_blank(record: bytes) -> bool:
    return not record.strip()


def error_cells(record: bytes, models: int) -> int:
    """How many of a result row's model cells say ``error: ...``."""
    try:
        (row,) = list(csv.reader(io.StringIO(record.decode("utf-8", "replace"), newline="")))
    except (csv.Error, ValueError):
        return 0
    return sum(1 for cell in row[-models:] if cell.startswith(ERROR_PREFIX))


# -- the request ---------------------------------------------------------------------------------


def read_prompts(path: str) -> str:
    """The CSV text of ``path``, as it is."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            return file.read()
    except FileNotFoundError:
        raise ClientError(f"no such file: {path}", EXIT_USAGE) from None
    except UnicodeDecodeError as exc:
        raise ClientError(f"{path} is not UTF-8 text: {exc}", EXIT_USAGE) from None
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror or exc}", EXIT_USAGE) from None


def count_rows(text: str) -> int | None:
    """The number of data rows of the CSV (blank lines skipped), or None if it does not parse here (the node will say why)."""
    csv.field_size_limit(1 << 30)
    try:
        rows = sum(1 for row in csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True) if row)
    except csv.Error:
        return None
    return max(rows - 1, 0)


def eval_body(text: str, models: list[str], system_prompt: str) -> bytes:
    body: dict[str, object] = {"csv": text, "models": models}
    if system_prompt:
        body["eval_system_prompt"] = system_prompt
    return json.dumps(body).encode()


def eval_target(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path of /v1/eval) of the node's base URL; a trailing ``/v1`` is accepted."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"--url must be an http:// or https:// URL, not {url!r}", EXIT_USAGE)
    try:
        port = parts.port
    except ValueError:
        raise ClientError(f"--url has a bad port: {url!r}", EXIT_USAGE) from None
    base = parts.path.rstrip("/").removesuffix("/v1")
    return parts.scheme, parts.hostname, port, f"{base}/v1/eval"


def open_eval(url: str, body: bytes, api_key: str, timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """POST the eval; return the connection and the response (its body not read yet)."""
    scheme, host, port, path = eval_target(url)
    connection_class = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = connection_class(host, port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Accept": "text/csv"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        connection.request("POST", path, body=body, headers=headers)
        return connection, connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise ClientError(f"cannot reach the node at {url}: {describe(exc)}") from None


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def error_message(response: http.client.HTTPResponse) -> str:
    """The message of an error answer: OpenAI's ``{"error": {"message": ...}}``, else the body's text."""
    try:
        raw = response.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    try:
        message = json.loads(raw)["error"]["message"]
        if isinstance(message, str) and message:
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return raw.decode("utf-8", "replace").strip()[:500] or response.reason


# -- the run ---------------------------------------------------------------------------------


@contextlib.contextmanager
def output_file(path: str) -> Iterator[BinaryIO]:
    """``path`` opened for writing bytes, or stdout for ``-``."""
    if path == "-":
        yield sys.stdout.buffer
        return
    try:
        file = open(path, "wb")
    except OSError as exc:
        raise ClientError(f"cannot write {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    with file:
        yield file


def check_output(path: str) -> None:
    """Fail before the eval starts if ``path`` cannot be written (a missing folder, a directory)."""
    if path == "-":
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ClientError(f"cannot write {path}: not a writable file path", EXIT_USAGE)


def chunks(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The body as it arrives (``read1``: whatever is there, without waiting to fill a buffer)."""
    try:
        while data := response.read1(READ_SIZE):
            yield data
    except (OSError, http.client.HTTPException) as exc:
        raise ClientError(f"the node cut the result stream short: {describe(exc)}") from None


class Progress:
    """Counts result rows (the first record is the header) and errors, writes them out, moves the bar."""

    def __init__(self, out: BinaryIO, bar: tqdm, models: int, to_terminal: bool) -> None:
        self.out, self.bar, self.models, self.to_terminal = out, bar, models, to_terminal
        self.header_seen = False
        self.rows = 0
        self.errors = 0

    def write(self, records: list[bytes]) -> None:
        if not records:
            return
        if self.to_terminal:  # the CSV and the bar share the terminal: lift the bar while writing
            with tqdm.external_write_mode(file=sys.stdout):
                self._write(records)
        else:
            self._write(records)

    def _write(self, records: list[bytes]) -> None:
        done = 0
        for record in records:
            self.out.write(record)
            if is_blank(record):
                continue
            if not self.header_seen:
                self.header_seen = True
                continue
            done += 1
            self.errors += error_cells(record, self.models)
        self.out.flush()
        self.rows += done
        if done:
            self.bar.update(done)


def stream_result(response: http.client.HTTPResponse, out: BinaryIO, total: int | None, models: int, quiet: bool) -> Progress:
    """Copy the result CSV to ``out`` record by record, with the bar on stderr."""
    to_terminal = out is sys.stdout.buffer and sys.stdout.isatty() and sys.stderr.isatty()
    with tqdm(total=total, desc="eval", unit="row", file=sys.stderr, disable=quiet, dynamic_ncols=True) as bar:
        progress = Progress(out, bar, models, to_terminal)
        splitter = RecordSplitter()
        for data in chunks(response):
            progress.write(splitter.feed(data))
        progress.write([record for record in [splitter.rest()] if record])
    return progress


def run(args: argparse.Namespace) -> int:
    text = read_prompts(args.csv)
    check_output(args.output)
    total = count_rows(text)
    started = time.monotonic()
    connection, response = open_eval(args.url, eval_body(text, args.models, args.system_prompt), args.api_key, args.timeout)
    try:
        if response.status >= 400:
            raise ClientError(f"the node answered {response.status} {response.reason}: {error_message(response)}")
        with output_file(args.output) as out:
            progress = stream_result(response, out, total, len(args.models), args.quiet)
    finally:
        connection.close()
    if total is not None and progress.rows != total:
        raise ClientError(f"the node sent {progress.rows} rows of {total}: the result is incomplete")
    if not args.quiet:
        where = "stdout" if args.output == "-" else args.output
        note = f"; {progress.errors} cells are errors" if progress.errors else ""
        print(f"eval: {progress.rows} rows x {len(args.models)} models written to {where} in "
              f"{time.monotonic() - started:.1f}s{note}", file=sys.stderr)
    if args.fail_on_errors and progress.errors:
        raise ClientError(f"{progress.errors} cells are errors (--fail-on-errors)")
    return EXIT_OK


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.eval_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="the prompts: a CSV file whose first row is the header")
    parser.add_argument("--models", nargs="+", required=True, help="model ids, one result column each (openai/gpt-4o ...)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the node's base URL (default {DEFAULT_URL})")
    parser.add_argument("--system-prompt", default="", help="eval_system_prompt: the system message of every call")
    parser.add_argument("--output", "-o", default="-", help="where to write the result CSV (default -: stdout)")
    parser.add_argument("--api-key", default=os.environ.get("SERVICE_API_KEY", ""),
                        help="the node's SERVICE_API_KEY (default: $SERVICE_API_KEY)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds the node may stay silent (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary line")
    parser.add_argument("--fail-on-errors", action="store_true",
                        help="exit 1 when any result cell is an 'error: ...' cell (the CSV is written in full first)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ClientError as exc:
        print(f"eval_client: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("eval_client: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
