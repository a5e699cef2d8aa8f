"""tools/eval_client.py: a CSV through a node's /v1/eval, the result written as it streams, progress on stderr.

The client runs as a subprocess (``python -m tools.eval_client``) against a
node process whose providers all point at the mock upstream.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import closed_port
from tests.mock_upstream import Behavior
from tools.eval_client import RecordSplitter, count_rows

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["openai/gpt-4o", "groq/llama-3.1-8b-instant"]
PROMPTS = 'question,context\nIs the sky blue?,"on a clear\nday"\nIs water wet?,plain\n"Say ""hi""",x\n'


def run_client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "SERVICE_API_KEY"}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tools.eval_client", *args],
        cwd=str(ROOT), env=full, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.csv"
    path.write_text(PROMPTS, newline="")
    return path


def test_result_csv_in_order_with_progress(spawn_node: Any, upstream: Any, prompts: Path, tmp_path: Path) -> None:
    node = spawn_node()
    output = tmp_path / "result.csv"
    done = run_client(str(prompts), "--models", *MODELS, "--url", node.url, "--system-prompt", "Answer yes or no.",
                      "--output", str(output))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    raw = output.read_bytes()
    assert raw.endswith(b"\r\n")  # the node's bytes, as sent
    rows = parse(raw.decode())
    assert rows[0] == ["question", "context", *MODELS]
    assert [row[:2] for row in rows[1:]] == [["Is the sky blue?", "on a clear\nday"], ["Is water wet?", "plain"],
                                            ['Say "hi"', "x"]]
    assert all(row[2:] == ["hello from mock", "hello from mock"] for row in rows[1:])
    assert "3/3" in done.stderr  # three records, although the file has five lines
    assert "eval: 3 rows x 2 models written to" in done.stderr
    assert len(upstream.requests) == 6
    assert upstream.requests[0].json["messages"][0] == {"role": "system", "content": "Answer yes or no."}


def test_stdout_with_the_service_key_from_the_environment(spawn_node: Any, prompts: Path) -> None:
    node = spawn_node({"SERVICE_API_KEY": "svc-key-123"})
    refused = run_client(str(prompts), "--models", "openai/m", "--url", node.url)
    assert refused.returncode == 1
    assert "401" in refused.stderr
    done = run_client(str(prompts), "--models", "openai/m", "--url", node.url + "/v1", "--quiet",
                      env={"SERVICE_API_KEY": "svc-key-123"})
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = parse(done.stdout)
    assert rows[0] == ["question", "context", "openai/m"] and len(rows) == 4


def test_failed_cells_are_counted(spawn_node: Any, upstream: Any, prompts: Path) -> None:
    upstream.set_behavior("broken", Behavior(status=400, error_message="no such model"))
    node = spawn_node()
    done = run_client(str(prompts), "--models", "openai/ok", "openai/broken", "--url", node.url)
    assert done.returncode == 0, done.stderr
    rows = parse(done.stdout)
    assert all(row[2] == "hello from mock" and row[3].startswith("error: ") for row in rows[1:])
    assert "3 cells are errors" in done.stderr


def test_fail_on_errors_exits_1_after_writing_the_whole_csv(spawn_node: Any, upstream: Any, prompts: Path,
                                                            tmp_path: Path) -> None:
    upstream.set_behavior("broken", Behavior(status=400, error_message="no such model"))
    node = spawn_node()
    output = tmp_path / "result.csv"
    failed = run_client(str(prompts), "--models", "openai/ok", "openai/broken", "--url", node.url, "--output",
                        str(output), "--fail-on-errors")
    assert failed.returncode == 1
    rows = parse(output.read_bytes().decode())
    assert len(rows) == 4 and all(row[3].startswith("error: ") for row in rows[1:])  # written in full first
    assert "3 cells are errors" in failed.stderr
    assert "eval_client: 3 cells are errors (--fail-on-errors)" in failed.stderr

    quiet = run_client(str(prompts), "--models", "openai/broken", "--url", node.url, "--quiet", "--fail-on-errors")
    assert quiet.returncode == 1
    assert len(parse(quiet.stdout)) == 4
    assert quiet.stderr == "eval_client: 3 cells are errors (--fail-on-errors)\n"

    clean = run_client(str(prompts), "--models", "openai/ok", "--url", node.url, "--quiet", "--fail-on-errors")
    assert clean.returncode == 0, clean.stderr
    assert all(row[2] == "hello from mock" for row in parse(clean.stdout)[1:])


def test_help_names_fail_on_errors() -> None:
    done = run_client("--help")
    assert done.returncode == 0
    assert "--fail-on-errors" in done.stdout and "exit 1" in done.stdout


@pytest.mark.parametrize(
    ("csv_text", "models", "message"),
    [
        ("a,b\n1,2\n3\n", ["openai/m"], "CSV row at line 3 has 1 cells but the header has 2"),
        ("a\n1\n", ["nope/x"], "Unknown provider 'nope'"),
    ],
)
def test_a_400_is_reported_with_its_message(spawn_node: Any, tmp_path: Path, csv_text: str, models: list[str],
                                           message: str) -> None:
    node = spawn_node()
    path = tmp_path / "bad.csv"
    path.write_text(csv_text)
    output = tmp_path / "result.csv"
    done = run_client(str(path), "--models", *models, "--url", node.url, "--output", str(output))
    assert done.returncode == 1
    assert "400" in done.stderr and message in done.stderr
    assert not output.exists()


def test_usage_and_connection_errors(prompts: Path, tmp_path: Path) -> None:
    missing = run_client(str(tmp_path / "missing.csv"), "--models", "openai/m")
    assert missing.returncode == 2 and "no such file" in missing.stderr
    no_models = run_client(str(prompts))
    assert no_models.returncode == 2 and "--models" in no_models.stderr
    refused = run_client(str(prompts), "--models", "openai/m", "--url", f"http://127.0.0.1:{closed_port()}")
    assert refused.returncode == 1 and "cannot reach the node" in refused.stderr


def test_records_are_split_whatever_the_chunk_boundaries() -> None:
    data = 'h1,h2\r\n"a\r\nb","say ""x"""\r\nc,"é\nd"\r\n'.encode()
    expected = [b"h1,h2\r\n", b'"a\r\nb","say ""x"""\r\n', 'c,"é\nd"\r\n'.encode()]
    for cut in range(len(data) + 1):
        splitter = RecordSplitter()
        records = splitter.feed(data[:cut]) + splitter.feed(data[cut:])
        assert records == expected, cut
        assert splitter.rest() == b""
    splitter = RecordSplitter()
    assert splitter.feed(b"a,b\r\nlast") == [b"a,b\r\n"]
    assert splitter.rest() == b"last"


def test_rows_of_the_input_are_counted_as_records() -> None:
    assert count_rows(PROMPTS) == 3
    assert count_rows("\ufeffq\n\n1\n\n2\n") == 2
    assert count_rows("q\n") == 0
    assert count_rows('q\n"unclosed\n') is None
