"""``make demo``: the node doing its main job on a fresh machine, with no provider key.

Starts two processes and stops them together:

1. the demo upstream (``tools/demo_upstream.py``, a canned OpenAI- and
   Anthropic-compatible provider that streams its reply word by word: chat,
   responses, embeddings, completions, messages), on a free loopback port;
2. the node (``python server.py``), with every provider's base URL pointed at
   the demo upstream and a dummy key, on ``--port`` (default: $PORT, else 8000;
   0 picks a free port). Its settings come from here only, named through
   config's settings table (``config.SETTINGS``): the shell's node variables and
   any ``.env`` file are not read, so nothing leaves the machine.

Once the node logs ``listening on HOST:PORT`` and ``GET /health`` answers, it
prints the node's URL, both PIDs, its scratch folder (a temporary folder,
removed when the demo stops: the node's alias file, the eval client's CSV)
and commands to try, each of which runs as printed in another terminal from
the repository root: curl (``-f``, so a failure exits non-zero) for chat,
streamed chat, /v1/verify, /v1/eval, /metrics, /v1/responses, /v1/embeddings,
streamed /v1/completions and /v1/messages; the eval client
(``.venv/bin/python -m tools.eval_client``, its CSV written to the scratch
folder, a system prompt, ``--fail-on-errors``); heredocs for the OpenAI SDK
(chat, streams, responses, embeddings, completions) and the Anthropic SDK run
by ``.venv/bin/python``, the venv ``make demo`` builds; Claude Code's command
line. tests/test_demo_commands.py runs every one of them but Claude Code's.
The processes' logs go to stderr.

Ctrl-C or SIGTERM stops the node (it drains) and then the upstream, each by
its PID with a bounded wait and SIGKILL as the last resort; so does either
child exiting by itself (the demo then exits 1).

    python tools/demo.py [--port 0] [--words-per-second 20] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as ``python tools/demo.py``
    sys.path.insert(0, str(ROOT))

from config import ENV_FILE, ENV_VARIABLES, PROVIDERS, env_name  # noqa: E402
from tools.childproc import ChildProcess  # noqa: E402

UPSTREAM_SCRIPT = ROOT / "tools" / "demo_upstream.py"
LISTENING = r"listening on [^ ]+:(\d+)"
DUMMY_KEY = "demo-key-not-a-secret"
START_TIMEOUT = 20.0
HEALTH_TIMEOUT = 10.0
NODE_DRAIN_SECONDS = 5
STOP_TIMEOUT = NODE_DRAIN_SECONDS + 5.0
KILL_TIMEOUT = 5.0
EXIT_GRACE = 1.0  # seconds for a child whose output ended to be reaped
POLL = 0.2
# Variables of the caller's environment that the children keep; never one of the node's own settings
# (config.ENV_VARIABLES): those the node gets are set in Demo.node_env.
# The demo's MODEL_ALIASES_FILE: Claude model names as Claude Code sends them, sent to the demo's models (every
# other bare name goes to anthropic/, the demo's DEFAULT_PROVIDER).
DEMO_ALIASES = {"claude-sonnet-4-6": "anthropic/claude-sonnet-4-6", "claude-haiku-4-5": "groq/llama-3.1-8b-instant"}
ALIASES_NAME = "aliases.json"
# The lines around the banner's commands (see banner()).
COMMANDS_START = "Try these in another terminal, from the repository root (each runs as printed; Python is .venv's):"
COMMANDS_END = "Ctrl-C stops both (and removes the scratch folder)."
PASSED_ON = tuple(name for name in ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SYSTEMROOT")
                  if name not in ENV_VARIABLES)


def provider_variables() -> list[tuple[str, str]]:
    """(base URL variable, key variable) of every provider the node knows, from config.PROVIDERS."""
    return [(row.url_var, row.key_var) for row in PROVIDERS.values()]


def start_child(name: str, args: list[str], env: dict[str, str], echo: bool, ended: threading.Event) -> ChildProcess:
    """A child in its own session; its last 200 output lines kept (and echoed to stderr); ``ended`` set when its output ends."""
    return ChildProcess(args, name=name, env=env, echo=echo, keep=200, on_eof=ended.set)


def stop_child(child: ChildProcess, timeout: float) -> int | None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL (said on stderr); return the exit code."""

    def killing() -> None:
        print(f"demo: {child.name} (pid {child.pid}) did not stop within {timeout:g}s: SIGKILL", file=sys.stderr)

    return child.stop(timeout, kill_timeout=KILL_TIMEOUT, on_kill=killing)


class Demo:
    """The two children, the signals that stop them, and the order they start and stop in."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.children: list[ChildProcess] = []
        self.stop_requested = threading.Event()  # a signal, or a child's output ended
        self.signal_name = ""
        self.stopping = False
        self.scratch = tempfile.mkdtemp(prefix="mira-demo-")  # the alias file, the eval's CSV; removed at shutdown
        self.aliases_file = os.path.join(self.scratch, ALIASES_NAME)
        with open(self.aliases_file, "w") as out:
            json.dump(DEMO_ALIASES, out, indent=2)

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:  # a second Ctrl-C: the node exits at once on its second signal
            for child in self.children:
                child.signal(signal.SIGTERM)
            return
        self.signal_name = signal.Signals(signum).name
        self.stop_requested.set()

    def base_env(self) -> dict[str, str]:
        env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_upstream(self) -> str:
        """Start the demo upstream; return its base URL."""
        args = [sys.executable, str(UPSTREAM_SCRIPT), "--host", "127.0.0.1", "--port", "0",
                "--words-per-second", str(self.args.words_per_second)]
        upstream = start_child("upstream", args, self.base_env(), not self.args.quiet, self.stop_requested)
        self.children.append(upstream)
        match = upstream.wait_for_line(LISTENING, START_TIMEOUT, self.stop_requested)
        if match is None:
            raise StartError(upstream)
        return f"http://127.0.0.1:{match.group(1)}/v1"

    def node_settings(self) -> dict[str, object]:
        """The node's settings that differ from its defaults, by Settings attribute."""
        return {
            "port": self.args.port,
            "host": self.args.host,
            "version": "0.0.0-demo",
            "log_level": self.args.log_level,
            "shutdown_timeout": NODE_DRAIN_SECONDS,
            "model_aliases_file": self.aliases_file,
            "default_provider": "anthropic",
        }

    def node_env(self, upstream_url: str) -> dict[str, str]:
        """base_env, no ``.env`` file, the settings of node_settings and every provider at the demo upstream."""
        env = self.base_env()
        env[ENV_FILE.env] = os.devnull
        env.update({env_name(attr): str(value) for attr, value in self.node_settings().items()})
        for url_var, key_var in provider_variables():
            env[url_var] = upstream_url
            env[key_var] = DUMMY_KEY
        return env

    def start_node(self, upstream_url: str) -> int:
        """Start the node; return its port once /health answers."""
        node = start_child("node", [sys.executable, str(ROOT / "server.py")], self.node_env(upstream_url), not self.args.quiet,
                           self.stop_requested)
        self.children.append(node)
        match = node.wait_for_line(LISTENING, START_TIMEOUT, self.stop_requested)
        if match is None:
            raise StartError(node)
        port = int(match.group(1))
        if not wait_healthy(f"http://{local_host(self.args.host)}:{port}/health", HEALTH_TIMEOUT, self.stop_requested):
            raise StartError(node)
        return port

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.on_signal)
        try:
            upstream_url = self.start_upstream()
            port = self.start_node(upstream_url)
        except StartError as exc:
            if not self.signal_name:
                print(f"demo: the {exc.child.name} did not start; its last output:\n{exc.child.tail()}", file=sys.stderr)
            return self.shutdown(0 if self.signal_name else 1)
        if self.stop_requested.is_set():
            return self.shutdown(0)
        print(banner(local_host(self.args.host), port, upstream_url, self.children, self.args.words_per_second,
                     self.scratch), flush=True)
        while not self.stop_requested.wait(POLL * 2):
            if not all(child.alive(EXIT_GRACE) for child in self.children):
                break
        return self.shutdown(0 if self.signal_name else 1)

    def shutdown(self, code: int) -> int:
        """Stop the node first (it drains), then the upstream."""
        self.stopping = True
        for child in self.children:
            if not child.alive(EXIT_GRACE) and not self.signal_name:
                print(f"demo: the {child.name} (pid {child.pid}) exited with code {child.proc.returncode}: stopping",
                      file=sys.stderr)
                code = 1
        if self.signal_name:
            print(f"demo: {self.signal_name}: stopping", file=sys.stderr)
        for child in reversed(self.children):
            stop_child(child, STOP_TIMEOUT if child.name == "node" else KILL_TIMEOUT)
        shutil.rmtree(self.scratch, ignore_errors=True)
        print("demo: stopped", file=sys.stderr, flush=True)
        return code


class StartError(Exception):
    """A child did not get ready."""

    def __init__(self, child: ChildProcess) -> None:
        super().__init__(child.name)
        self.child = child


def local_host(host: str) -> str:
    """The address to reach a server listening on ``host`` from this machine."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def wait_healthy(url: str, timeout: float, abort: threading.Event) -> bool:
    """Poll ``url`` until it answers 200 (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not abort.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        abort.wait(0.05)
    return False


def banner(
    host: str, port: int, upstream_url: str, children: list[ChildProcess], words_per_second: float, scratch: str
) -> str:
    """What to try, with the real port in every line.

    Between ``COMMANDS_START`` and ``COMMANDS_END`` every line is blank, a ``#``
    comment or part of a shell command that runs as printed from the
    repository root (Python through ``.venv/bin/python``, as ``make demo``
    builds it; files only in ``scratch``): a ``curl`` line (continued by a
    trailing backslash), a ``.venv/bin/python - <<'EOF'`` heredoc up to its
    ``EOF`` line, or a single line. tests/test_demo_commands.py runs them all.
    """
    url = f"http://{host}:{port}"
    pids = {child.name: child.pid for child in children}
    aliases_file = os.path.join(scratch, ALIASES_NAME)
    prompts = shlex.quote(os.path.join(scratch, "prompts.csv"))
    json_hdr = "-H 'Content-Type: application/json'"
    hello = '"messages": [{"role": "user", "content": "Hello"}]'
    statement = '"messages": [{"role": "user", "content": "Paris is the capital of France."}]'
    csv_text = r'"question\nIs Paris in France?\nIs the sea dry?\n"'
    models = '["openai/gpt-4o-mini", "groq/llama-3.1-8b-instant"]'
    return f"""
Mira demo is ready: every provider (openai/, openrouter/, anthropic/, groq/, mira/) answers from the demo upstream.
  node:      {url}  (pid {pids["node"]})
  upstream:  {upstream_url}  (pid {pids["upstream"]}, {words_per_second:g} words/s)
  scratch:   {scratch}  (the alias file and the eval's CSV; removed when the demo stops)

{COMMANDS_START}

# Chat (JSON):
curl -sf {url}/v1/chat/completions {json_hdr} \\
  -d '{{"model": "openai/gpt-4o-mini", {hello}}}'
# Chat (streamed, word by word):
curl -sfN {url}/v1/chat/completions {json_hdr} \\
  -d '{{"model": "groq/llama-3.1-8b-instant", "stream": true, {hello}}}'
# Verify a statement:
curl -sf {url}/v1/verify {json_hdr} \\
  -d '{{"model": "openai/gpt-4o-mini", {statement}}}'
# Eval a CSV across two models (the answer streams back as CSV):
curl -sfN {url}/v1/eval {json_hdr} \\
  -d '{{"csv": {csv_text}, "models": {models}, "eval_system_prompt": "Answer yes or no."}}'
# The same with a progress bar (tools/eval_client.py), the CSV in the demo's scratch folder:
printf 'question\\nIs Paris in France?\\nIs the sea dry?\\n' > {prompts}
.venv/bin/python -m tools.eval_client {prompts} --models openai/gpt-4o-mini groq/llama-3.1-8b-instant \\
  --url {url} --system-prompt 'Answer yes or no.' --fail-on-errors
# Metrics:
curl -sf {url}/metrics | grep ^mira_

# The rest of the OpenAI surface: the Responses API, embeddings, text completions (streamed):
curl -sf {url}/v1/responses {json_hdr} \\
  -d '{{"model": "openai/gpt-4.1-mini", "input": "Hello"}}'
curl -sf {url}/v1/embeddings {json_hdr} \\
  -d '{{"model": "openai/text-embedding-3-small", "input": ["a", "b"]}}'
curl -sfN {url}/v1/completions {json_hdr} \\
  -d '{{"model": "openai/gpt-3.5-turbo-instruct", "prompt": "Once upon", "stream": true}}'

# With the OpenAI SDK: chat, streamed chat, a streamed response, embeddings, a text completion:
.venv/bin/python - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{url}/v1", api_key="unused")
hello = [{{"role": "user", "content": "Hello"}}]
print(client.chat.completions.create(model="openai/gpt-4o-mini", messages=hello).choices[0].message.content)
for chunk in client.chat.completions.create(model="groq/llama-3.1-8b-instant", messages=hello, stream=True):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
for event in client.responses.create(model="openai/gpt-4.1-mini", input="Hello", stream=True):
    if event.type == "response.output_text.delta":
        print(event.delta, end="", flush=True)
print()
vectors = client.embeddings.create(model="openai/text-embedding-3-small", input=["a", "b"]).data
print(len(vectors), "vectors of", len(vectors[0].embedding), "numbers")
print(client.completions.create(model="openai/gpt-3.5-turbo-instruct", prompt="Once upon").choices[0].text)
EOF

# Anthropic's Messages API (relayed to anthropic/, translated for any other provider):
curl -sf {url}/v1/messages {json_hdr} \\
  -d '{{"model": "claude-haiku-4-5", "max_tokens": 200, {hello}}}'
# With the Anthropic SDK:
.venv/bin/python - <<'EOF'
import anthropic
client = anthropic.Anthropic(base_url="{url}", api_key="unused")
hello = [{{"role": "user", "content": "Hello"}}]
print(client.messages.create(model="claude-sonnet-4-6", max_tokens=200, messages=hello).content[0].text)
with client.messages.stream(model="claude-haiku-4-5", max_tokens=200, messages=hello) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
print()
EOF
# With Claude Code (npm install -g @anthropic-ai/claude-code):
ANTHROPIC_BASE_URL={url} ANTHROPIC_AUTH_TOKEN=unused claude
# The node's alias file {aliases_file} sends claude-haiku-4-5 to groq/llama-3.1-8b-instant
# and claude-sonnet-4-6 to anthropic/claude-sonnet-4-6; any other Claude name goes to anthropic/ (DEFAULT_PROVIDER).

{COMMANDS_END}
"""


def default_port() -> int:
    try:
        return int(os.environ.get("PORT", "8000"))
    except ValueError:
        return 8000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the node against a local demo upstream (no provider key needed)")
    parser.add_argument("--port", type=int, default=default_port(), help="the node's port (default $PORT or 8000; 0: a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="the node's listen address (default 127.0.0.1)")
    parser.add_argument("--words-per-second", type=float, default=20.0, help="pace of streamed replies (default 20)")
    parser.add_argument("--log-level", default="INFO", help="the node's LOG_LEVEL (default INFO)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the processes' logs to stderr")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    if args.words_per_second < 0:
        parser.error("--words-per-second must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return Demo(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
