"""``make demo``: tools/demo.py starts the demo upstream and a node, answers chat through them, and stops both.

The demo runs exactly as ``make demo`` runs it (``python tools/demo.py``), on a
free port (``--port 0``); its stdout is read for the node's URL and both PIDs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tools.childproc import ChildProcess, pid_alive

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "tools" / "demo.py"
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0
NODE_LINE = re.compile(r"node:\s+(http://\S+)\s+\(pid (\d+)\)")
UPSTREAM_LINE = re.compile(r"upstream:\s+(http://\S+)\s+\(pid (\d+)")
USER = [{"role": "user", "content": "Hello demo"}]


class RunningDemo:
    """``tools/demo.py --port 0`` as a child process (tools/childproc.py), its stdout read line by line."""

    def __init__(self, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PORT"}
        self.stderr_path = tmp_path / "demo.stderr"
        self.child = ChildProcess(
            [sys.executable, str(DEMO), "--port", "0", "--words-per-second", "200"],
            name="demo", env=env, stderr_path=self.stderr_path,
        )
        self.proc = self.child.proc
        self.url = ""
        self.pids: dict[str, int] = {}

    def wait_ready(self) -> None:
        """Read stdout until both the node's and the upstream's lines have been printed."""
        deadline = time.monotonic() + READY_TIMEOUT
        for name, line in (("node", NODE_LINE), ("upstream", UPSTREAM_LINE)):
            match = self.child.wait_for_line(line, max(deadline - time.monotonic(), 0.01))
            if match is None and self.child.ended:
                pytest.fail(f"the demo exited ({self.proc.wait(5)}):\n" + self.stderr_path.read_text())
            if match is None:
                pytest.fail("the demo did not get ready:\n" + self.stderr_path.read_text())
            if name == "node":
                self.url = match.group(1)
            self.pids[name] = int(match.group(2))

    def kill_all(self) -> None:
        """Last-resort clean-up: SIGKILL whatever is left, by PID."""
        for pid in [*self.pids.values(), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[RunningDemo]:
    running = RunningDemo(tmp_path)
    try:
        running.wait_ready()
        yield running
    finally:
        running.kill_all()


def health_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def assert_all_gone(demo: RunningDemo) -> None:
    for name, pid in demo.pids.items():
        # the demo reaps its children, so a stopped one leaves no zombie
        assert not pid_alive(pid), f"the {name} (pid {pid}) is still running"
    assert not health_answers(demo.url)


def test_demo_answers_chat_then_stops_on_sigterm(demo: RunningDemo) -> None:
    client = openai.OpenAI(base_url=demo.url + "/v1", api_key="unused", max_retries=0, timeout=10)
    reply = client.chat.completions.create(model="openai/gpt-4o-mini", messages=USER)
    text = reply.choices[0].message.content or ""
    assert text.startswith("Hello from the Mira demo upstream!")
    assert 'You said: "Hello demo"' in text
    assert reply.usage is not None and reply.usage.completion_tokens == len(text.split())

    stream = client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=USER, stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert "".join(pieces) == text
    assert len(pieces) == len(text.split())  # word by word
    client.close()

    request = urllib.request.Request(
        demo.url + "/v1/verify", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": "anthropic/claude", "messages": [{"role": "user", "content": "2 + 2 = 4"}]}).encode(),
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["result"] == "yes"

    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(EXIT_TIMEOUT) == 0
    assert_all_gone(demo)
    log = demo.stderr_path.read_text()
    assert "demo: SIGTERM: stopping" in log
    assert "Traceback" not in log


def test_demo_stops_the_node_when_the_upstream_dies(demo: RunningDemo) -> None:
    os.kill(demo.pids["upstream"], signal.SIGKILL)
    assert demo.proc.wait(EXIT_TIMEOUT) == 1
    assert_all_gone(demo)
    log = demo.stderr_path.read_text()
    assert "the upstream" in log, log


def test_the_demo_names_the_nodes_settings_through_configs_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from config import ENV_VARIABLES, load_settings
    from tools import demo

    env = demo.Demo(demo.parse_args(["--port", "0", "--log-level", "DEBUG"])).node_env("http://127.0.0.1:9/v1")
    assert set(env) <= {*ENV_VARIABLES, *demo.PASSED_ON, "PYTHONUNBUFFERED"}
    assert not set(demo.PASSED_ON) & set(ENV_VARIABLES)
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.port, settings.host, settings.version, settings.log_level) == (0, "127.0.0.1", "0.0.0-demo", "DEBUG")
    assert settings.shutdown_timeout == demo.NODE_DRAIN_SECONDS
    assert {p.base_url for p in settings.providers.values()} == {"http://127.0.0.1:9/v1"}
    assert {p.api_key for p in settings.providers.values()} == {demo.DUMMY_KEY}
