"""Fuzz the node's HTTP API with schemathesis against ``openapi.json``.

Starts the mock upstream (``tests/mock_upstream.py``) and a node
(``server.py``) on free loopback ports, with every provider pointed at the
mock, runs ``schemathesis run`` with a bounded number of examples, then stops
both by PID. The run fails when schemathesis finds a failure (a 500, a
response that does not match the document, ...) or when the node logged an
unexpected error.

    make fuzz                                   # installs schemathesis into .venv/fuzz first
    .venv/fuzz/bin/python tools/fuzz.py --max-examples 20 --seed 1
    .venv/fuzz/bin/python tools/fuzz.py -- --include-path /v1/verify

Arguments after ``--`` go to ``schemathesis run`` as they are.

What the run changes in the document it fuzzes (a temporary copy):

* ``model_provider`` is left out of every request body, and the node runs
  with ALLOW_CUSTOM_PROVIDERS=false: a fuzzed base URL must never make the
  node call a host other than the mock. Without it, ``model`` must be
  ``PROVIDER/MODEL``, so that is what the fuzzed ``model`` is.
* Cross-field rules JSON Schema cannot state are narrowed so that valid
  examples are valid for the node: ``min_yes`` is at most 1 (it must not
  exceed the number of ``models``) and the eval ``csv`` is a one-column CSV
  (every row has the header's cell count).

The check ``negative_data_rejection`` is off: the node validates only what
it relies on and passes every other field to the provider, which is the one
to reject it; the mock accepts anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python tools/fuzz.py``
    sys.path.insert(0, str(ROOT))

from tools.childproc import ChildProcess  # noqa: E402

DOCUMENT = ROOT / "openapi.json"
EXCLUDED_CHECKS = ("negative_data_rejection",)
SERVICE_KEY = "fuzz-service-key"
# A one-column CSV: no separators or quotes, so every row matches the header.
ONE_COLUMN_CSV = r"^[A-Za-z0-9 ?]{1,20}(\n[A-Za-z0-9 ?]{0,20}){0,10}$"
UNEXPECTED = re.compile(r"unexpected error|Traceback", re.IGNORECASE)


def wait_for(process: ChildProcess, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    """The first output line matching ``pattern``; raise if the process ends or the line does not come in time."""
    match = process.wait_for_line(pattern, timeout)
    if match is not None:
        return match
    if process.ended:
        raise RuntimeError(f"{process.name} exited ({process.proc.wait()}); see {process.log_path}")
    raise RuntimeError(f"{process.name}: no line matching {pattern!r} within {timeout:g}s")


def fuzz_document(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of the document narrowed for fuzzing (see the module docstring)."""
    doc = copy.deepcopy(document)
    schemas = doc["components"]["schemas"]
    for schema in schemas.values():
        properties = schema.get("properties", {})
        if "model_provider" in properties:
            properties["model_provider"] = False
            if properties.get("model", {}).get("type") == "string":  # without model_provider, only PROVIDER/MODEL routes
                properties["model"] = {"$ref": "#/components/schemas/RoutedModel"}
    schemas["VerifyRequest"]["properties"]["min_yes"]["maximum"] = 1
    schemas["EvalRequest"]["properties"]["csv"]["pattern"] = ONE_COLUMN_CSV
    return doc


def node_env(mock_url: str, key: str) -> dict[str, str]:
    """The node's environment: loopback only, every provider at the mock, no .env file."""
    env = {name: value for name, value in os.environ.items() if name in ("PATH", "LANG", "LC_ALL", "TMPDIR", "HOME")}
    env.update(
        {
            "ENV_FILE": os.devnull,
            "PORT": "0",
            "HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            "VERSION": "0.0.0-fuzz",
            "MACHINE_IP": "127.0.0.1",
            "LOG_LEVEL": "WARNING",
            "ALLOW_CUSTOM_PROVIDERS": "false",
            "UPSTREAM_TIMEOUT": "10",
            "UPSTREAM_CONNECT_TIMEOUT": "2",
            "UPSTREAM_RETRY_BACKOFF": "0.01",
        }
    )
    if key:
        env["SERVICE_API_KEY"] = key
    for provider in ("OPENAI", "OPENROUTER", "ANTHROPIC", "GROQ", "MIRA"):
        env[f"{provider}_BASE_URL"] = mock_url
        env[f"{provider}_API_KEY"] = f"fuzz-{provider.lower()}-key"
    return env


def schemathesis_command(args: argparse.Namespace, document: Path, base_url: str) -> list[str]:
    """The ``schemathesis run`` command line."""
    executable = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    command = [
        executable,
        "run",
        str(document),
        "--url",
        base_url,
        "--checks",
        "all",
        "--exclude-checks",
        ",".join(EXCLUDED_CHECKS),
        "--max-examples",
        str(args.max_examples),
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
    ]
    if args.service_key:
        command += ["--header", f"Authorization: Bearer {args.service_key}"]
    if args.max_time:
        command += ["--max-time", str(args.max_time)]
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    return command + args.extra


def node_errors(log_path: Path) -> list[str]:
    """Lines of the node's log that tell of an unexpected error (a 500)."""
    return [line.rstrip() for line in log_path.read_text(errors="replace").splitlines() if UNEXPECTED.search(line)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description="Fuzz the node's API against openapi.json with schemathesis")
    parser.add_argument("--max-examples", type=int, default=50, help="test cases per operation (default 50)")
    parser.add_argument("--max-time", type=int, default=0, help="time budget in seconds; fuzzing repeats until it is spent")
    parser.add_argument("--timeout", type=float, default=900, help="hard limit for the whole schemathesis run (s)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--service-key", default=SERVICE_KEY, help="SERVICE_API_KEY of the node ('' for none)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, fuzzed document)")
    args = parser.parse_args(argv)
    args.extra = extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    work = Path(tempfile.mkdtemp(prefix="mira-fuzz-"))
    document = work / "openapi.fuzz.json"
    document.write_text(json.dumps(fuzz_document(json.loads(DOCUMENT.read_text()))))
    started: list[ChildProcess] = []
    code = 1
    try:
        mock = ChildProcess([sys.executable, "-m", "tests.mock_upstream", "--port", "0"], name="mock upstream",
                            env=dict(os.environ), log_path=work / "mock.log")
        started.append(mock)
        mock_url = wait_for(mock, r"serving on (http://\S+)").group(1)
        node = ChildProcess([sys.executable, "server.py"], name="node", env=node_env(mock_url, args.service_key),
                            log_path=work / "node.log")
        started.append(node)
        port = wait_for(node, r"listening on [^ ]+:(\d+)").group(1)
        base_url = f"http://127.0.0.1:{port}"
        print(f"fuzz: node {base_url} (pid {node.proc.pid}), mock upstream {mock_url} (pid {mock.proc.pid})", flush=True)
        try:
            code = subprocess.run(schemathesis_command(args, document, base_url), cwd=str(work), timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            print(f"fuzz: schemathesis did not finish within {args.timeout:g}s", file=sys.stderr)
            code = 1
    finally:
        for process in reversed(started):
            process.stop(15)  # SIGTERM to its PID; SIGKILL if it has not exited within 15 s
    errors = node_errors(work / "node.log") if (work / "node.log").exists() else []
    if errors:
        print("fuzz: the node logged unexpected errors:", *errors[:20], sep="\n  ", file=sys.stderr)
        code = code or 1
    if args.keep or code:
        print(f"fuzz: logs and the fuzzed document are in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
