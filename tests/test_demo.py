"""``make demo``: tools/demo.py starts the demo upstream and a node, answers chat through them, and stops both.

The demo runs exactly as ``make demo`` runs it (``python tools/demo.py``), on a
free port (``--port 0``); its stdout is read for the node's URL and both PIDs.
The demo upstream (``tools/demo_upstream.py``) is also run alone, for the rest
of the OpenAI surface it answers (responses, embeddings, completions: JSON,
SSE, errors). tests/test_demo_commands.py runs the commands the demo prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
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


def test_the_demo_names_the_nodes_settings_through_configs_table(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    from config import ENV_VARIABLES, load_settings
    from tools import demo

    # Demo() makes its scratch folder (the alias file), which only a run removes: here, in the test's tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = demo.Demo(demo.parse_args(["--port", "0", "--log-level", "DEBUG"]))
    assert Path(made.scratch).parent == tmp_path
    env = made.node_env("http://127.0.0.1:9/v1")
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


@pytest.fixture
def demo_upstream() -> Iterator[str]:
    """tools/demo_upstream.py on a free port (200 words/s); its base URL (``.../v1``)."""
    child = ChildProcess([sys.executable, str(ROOT / "tools" / "demo_upstream.py"), "--port", "0",
                          "--words-per-second", "200"], name="demo-upstream")
    try:
        match = child.wait_for_line(r"listening on [^ ]+:(\d+)", READY_TIMEOUT)
        assert match is not None, child.output
        yield f"http://127.0.0.1:{match.group(1)}/v1"
    finally:
        child.stop(5.0)


def post(url: str, body: object) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, method="POST", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name or None, data) of each event of an SSE body."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields.get("event"), fields["data"]))
    return events


def test_the_demo_upstream_answers_responses_embeddings_and_completions(demo_upstream: str) -> None:
    client = openai.OpenAI(base_url=demo_upstream, api_key="unused", max_retries=0, timeout=10)
    answer = client.responses.create(model="m", input="Hello demo", instructions="Be brief")
    assert answer.output_text.startswith("Hello from the Mira demo upstream!") and "Hello demo" in answer.output_text
    assert answer.usage is not None and answer.usage.output_tokens == len(answer.output_text.split())
    assert answer.usage.input_tokens == 4  # "Be brief" and "Hello demo"
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Answer yes or no: is it?"}]}]
    assert client.responses.create(model="m", input=items).output_text == "Yes."

    status, raw = post(demo_upstream + "/responses", {"model": "m", "input": "Hello demo", "stream": True})
    assert status == 200
    events = sse_events(raw)
    names = [name for name, _ in events]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    datas = [json.loads(data) for _, data in events]
    assert [data["type"] for data in datas] == names
    assert [data["sequence_number"] for data in datas] == list(range(len(datas)))
    deltas = [data["delta"] for data in datas if data["type"] == "response.output_text.delta"]
    completed = datas[-1]["response"]
    assert "".join(deltas) == completed["output"][0]["content"][0]["text"] == answer.output_text
    assert len(deltas) == len(answer.output_text.split())  # word by word
    assert completed["status"] == "completed" and completed["usage"]["output_tokens"] == len(deltas)
    streamed = client.responses.create(model="m", input="Hello demo", stream=True)
    assert "".join(e.delta for e in streamed if e.type == "response.output_text.delta") == answer.output_text

    vectors = client.embeddings.create(model="e", input=["a", "b", "a"])
    assert [len(item.embedding) for item in vectors.data] == [8, 8, 8]
    assert vectors.data[0].embedding == vectors.data[2].embedding != vectors.data[1].embedding
    assert abs(sum(x * x for x in vectors.data[0].embedding) - 1) < 1e-4
    assert vectors.usage.prompt_tokens == 3
    packed = client.embeddings.create(model="e", input="a", encoding_format="base64", dimensions=4)
    wide = client.embeddings.create(model="e", input="a", dimensions=40)
    assert isinstance(packed.data[0].embedding, str)  # as sent: base64 of float32
    assert len(wide.data[0].embedding) == 40

    text = client.completions.create(model="c", prompt="Once upon")
    assert text.object == "text_completion" and 'You said: "Once upon"' in text.choices[0].text
    assert client.completions.create(model="c", prompt=["a", "yes or no?"]).choices[1].text == "Yes."
    chunks = list(client.completions.create(model="c", prompt="Once upon", stream=True,
                                            stream_options={"include_usage": True}))
    pieces = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert "".join(pieces) == text.choices[0].text and len(pieces) == len(text.choices[0].text.split()) + 1
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(pieces) - 1
    client.close()

    status, raw = post(demo_upstream + "/completions", {"prompt": "x", "stream": True})
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/responses", b"not json", "JSON object"),
        ("/responses", {"input": 3}, "input"),
        ("/embeddings", {"input": []}, "input"),
        ("/embeddings", {"input": ["a", ""]}, "input"),
        ("/embeddings", {"input": [1, 2]}, "token arrays"),
        ("/embeddings", {"input": "a", "dimensions": 0}, "dimensions"),
        ("/embeddings", {"input": "a", "encoding_format": "hex"}, "encoding_format"),
        ("/completions", [1], "prompt"),
        ("/completions", {"prompt": [1, 2]}, "prompt"),
    ],
)
def test_the_demo_upstream_refuses_bad_bodies_in_openais_shape(demo_upstream: str, path: str, body: object,
                                                                message: str) -> None:
    status, raw = post(demo_upstream + path, body)
    assert status == 400
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]
