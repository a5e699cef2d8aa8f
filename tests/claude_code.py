"""Claude Code, Anthropic's CLI, run headless against a base URL: the real client of ``POST /v1/messages``.

The CLI is npm's ``@anthropic-ai/claude-code`` (pinned at ``VERSION``), installed by .ci/run outside the
repository, in ``MIRA_CLAUDE_CODE_DIR`` (default ``~/.cache/mira-claude-code``). Its postinstall puts a
native executable in place of ``node_modules/.bin/claude``: running it needs no Node.js.

``claude_binary()`` finds it (else a ``claude`` on PATH); ``require_claude_code()`` returns it or skips
the test, except under ``CI=true``, where it fails (as tests/redis_server.py's ``require_redis_server``
does). ``run_claude(base_url, token, prompt, model)`` runs one ``claude -p PROMPT --output-format json``
and returns a ``ClaudeRun``::

    run = run_claude(f"http://127.0.0.1:{port}", "a-token", "Say hello", "claude-sonnet-4-6")
    assert run.returncode == 0 and run.data["result"] == "Hello from mock"

Each run gets a fresh temporary HOME, working directory and TMPDIR (all removed afterwards), an
environment built from nothing but PATH (no API key, proxy or telemetry setting of the test process leaks
in), ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_AUTH_TOKEN`` (sent as ``Authorization: Bearer``), the settings
that turn off everything but the requests to the model (``QUIET_ENV``) and, as a guard, ``HTTP(S)_PROXY``
pointing at a closed loopback port with ``NO_PROXY`` naming only the base URL's host: any other request
fails at once instead of leaving the machine. Claude Code appends ``/v1/messages?beta=true`` to the base
URL itself: give it the server's root (``http://127.0.0.1:PORT``), not ``.../v1``.

The process runs in a session of its own, stdin from /dev/null; on timeout its process group (the
shells its Bash tool started included) gets SIGKILL, and once it has exited whatever is left of that
group is killed too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import closed_port
from tools.childproc import ChildProcess

VERSION = "2.1.328"
"""The pinned ``@anthropic-ai/claude-code`` version (.ci/run installs it)."""

INSTALL_HINT = (
    f"run .ci/run, or: npm install --prefix ~/.cache/mira-claude-code --no-audit --no-fund @anthropic-ai/claude-code@{VERSION}"
)

QUIET_ENV = {
    # Only the requests the session needs: no auto-update, telemetry, error reporting, release notes...
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    # ...which it stands for (Claude Code's settings documentation), set one by one as well.
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    # Nothing to ask or warn about in a headless run.
    "DISABLE_COST_WARNINGS": "1",
    "DISABLE_INSTALLATION_CHECKS": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
}
"""Environment that keeps Claude Code offline (but for the base URL) and quiet."""

KILL_TIMEOUT = 10.0  # seconds to reap the process after SIGKILL


def claude_code_dir() -> Path:
    """Where .ci/run installs the CLI: ``MIRA_CLAUDE_CODE_DIR``, default ``~/.cache/mira-claude-code``."""
    return Path(os.environ.get("MIRA_CLAUDE_CODE_DIR") or "~/.cache/mira-claude-code").expanduser()


def claude_binary() -> str | None:
    """The ``claude`` executable: ``node_modules/.bin/claude`` under ``claude_code_dir()``, else on PATH, else None."""
    installed = claude_code_dir() / "node_modules" / ".bin" / "claude"
    if installed.is_file() and os.access(installed, os.X_OK):
        return str(installed)
    return shutil.which("claude")


def require_claude_code() -> str:
    """The ``claude`` path; without one: skip the test, but under CI=true fail it."""
    path = claude_binary()
    if path is None:
        message = f"Claude Code is not installed: {INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; under CI=true the Claude Code tests must run")
        pytest.skip(message)
    return path


@dataclass
class ClaudeRun:
    """One finished (or killed) ``claude -p`` run: exit code, output, and its JSON result when stdout held one.

    ``data`` is ``--output-format json``'s result object (``type: result``, ``result``, ``is_error``,
    ``num_turns``, ``usage``, ``session_id``...), or None. ``timed_out``: it was killed after the timeout.
    """

    returncode: int
    stdout: str
    stderr: str
    data: dict[str, Any] | None
    timed_out: bool = False

    def describe(self) -> str:
        """Exit code and output, for an assertion message."""
        return f"exit {self.returncode}{' (timed out)' if self.timed_out else ''}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The JSON object of ``--output-format json``: all of stdout, else its last line that is a JSON object."""
    candidates = [stdout, *reversed(stdout.splitlines())]
    for text in candidates:
        text = text.strip()
        if text.startswith("{"):
            with contextlib.suppress(ValueError):
                data = json.loads(text)
                if isinstance(data, dict):
                    return data
    return None


def claude_env(base_url: str, token: str, root: Path, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a run whose HOME, TMPDIR and so on are under ``root`` (which must exist)."""
    home, tmp = root / "home", root / "tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    host = urllib.parse.urlsplit(base_url).hostname or "127.0.0.1"
    dead_proxy = f"http://127.0.0.1:{closed_port()}"
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "CLAUDE_CODE_TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "SHELL": shutil.which("bash") or "/bin/bash",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_AUTH_TOKEN": token,
        **QUIET_ENV,
        # A guard: whatever is not for the base URL's host goes to a proxy that is not there.
        "HTTPS_PROXY": dead_proxy,
        "HTTP_PROXY": dead_proxy,
        "https_proxy": dead_proxy,
        "http_proxy": dead_proxy,
        "NO_PROXY": host,
        "no_proxy": host,
    }
    env.update(extra_env or {})
    return env


def run_claude(
    base_url: str,
    token: str,
    prompt: str,
    model: str,
    allowed_tools: str | None = None,
    timeout: float = 120,
    extra_env: dict[str, str] | None = None,
) -> ClaudeRun:
    """Run ``claude -p PROMPT --output-format json --model MODEL`` against ``base_url``; wait at most ``timeout`` s.

    ``allowed_tools``: ``--allowedTools`` (``"Bash(echo:*)"`` lets it run ``echo`` without asking).
    ``extra_env`` is added last (it can override anything, ``QUIET_ENV`` included).
    """
    binary = require_claude_code()
    argv = [binary, "-p", prompt, "--output-format", "json", "--model", model]
    if allowed_tools is not None:
        argv += ["--allowedTools", allowed_tools]
    root = Path(tempfile.mkdtemp(prefix="mira-claude-code-"))
    try:
        work = root / "work"
        work.mkdir()
        env = claude_env(base_url, token, root, extra_env)
        stderr_path = root / "stderr.txt"
        child = ChildProcess(argv, name="claude", env=env, cwd=work, stderr_path=stderr_path, die_with_parent=True)
        timed_out = False
        try:
            returncode = child.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            child.kill(group=True)
            returncode = child.wait(KILL_TIMEOUT)
        finally:
            child.kill(group=True)  # what is left of its process group (a shell its Bash tool started)
            child.join(KILL_TIMEOUT)
        stdout = child.output
        stderr = stderr_path.read_text(errors="replace")
        return ClaudeRun(returncode, stdout, stderr, parse_result(stdout), timed_out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
