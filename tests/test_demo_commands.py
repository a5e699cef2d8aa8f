"""``make demo``'s banner: every command it prints runs as printed, from the repository root, and leaves no file behind.

The demo runs as tests/test_demo.py runs it (``python tools/demo.py --port 0``);
the commands between its ``COMMANDS_START`` and ``COMMANDS_END`` lines are cut
out of its stdout as a reader would copy them (a ``curl`` line with its
continuation lines, a heredoc up to its ``EOF`` line, any other line alone) and
run one after the other, in the order printed, with ``bash -c`` from the
repository root: each must exit 0 (the curls carry ``-f``, so an HTTP error
fails them) and print what it is there to show. Claude Code's line is not run
(``claude`` is interactive and may not be installed). Afterwards the demo is
stopped, its scratch folder is gone and ``git status`` shows no new untracked
file where they could have written one (see left_behind: others may be adding
source files to this tree meanwhile).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.test_demo import EXIT_TIMEOUT, RunningDemo, assert_all_gone
from tools.demo import COMMANDS_END, COMMANDS_START

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
BANNER_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
SCRATCH_LINE = re.compile(r"scratch:\s+(\S+)")
# New untracked files left out of the check: Python source (no printed command writes any), since other work
# in this tree may add source files while the test runs.
CONCURRENT_SOURCES = (".py",)
GREETING = "Hello from the Mira demo upstream!"
HELLO_REPLY = GREETING + ' You said: "Hello".'
EVAL_HEADER = "question,openai/gpt-4o-mini,groq/llama-3.1-8b-instant"

# (a piece of the command, what its stdout must contain): the first rule whose piece the command has applies,
# and every command run must have one, so that a command added to the banner gets its check here too.
EXPECTED: list[tuple[str, tuple[str, ...]]] = [
    ("printf ", ()),
    ("tools.eval_client", (EVAL_HEADER, "Is Paris in France?,yes,yes", "Is the sea dry?,yes,yes")),
    ("/v1/eval", (EVAL_HEADER, "Is the sea dry?")),
    ("/v1/verify", ('"result"', "yes")),
    ("/v1/responses", ('"output_text"', GREETING, '"input_tokens"')),
    ("/v1/embeddings", ('"embedding"', '"prompt_tokens"')),
    ("/v1/completions", ("text_completion", '"finish_reason": "stop"', "data: [DONE]")),
    ('"stream": true', ("chat.completion.chunk", "data: [DONE]")),
    ("/v1/chat/completions", (GREETING,)),
    ("/v1/messages", (GREETING, "end_turn")),
    ("/metrics", ("mira_",)),
    ("from openai import OpenAI", (GREETING, "2 vectors of 8 numbers", 'You said: "Once upon"')),
    ("import anthropic", (GREETING,)),
]
# stdout of the SDK snippets: a reply to "Hello" per chat, streamed chat, streamed response (OpenAI) or message (Anthropic).
GREETINGS = {"from openai import OpenAI": 3, "import anthropic": 2}


def printed_commands(lines: list[str]) -> list[str]:
    """The shell commands between COMMANDS_START and COMMANDS_END, each one's lines joined by newlines.

    A command starts on any line that is neither blank nor a ``#`` comment; it
    goes on while its last line ends with a backslash or, for a ``<<'EOF'``
    heredoc, up to the ``EOF`` line.
    """
    assert COMMANDS_START in lines and COMMANDS_END in lines, "\n".join(lines)
    body = lines[lines.index(COMMANDS_START) + 1 : lines.index(COMMANDS_END)]
    commands: list[str] = []
    current: list[str] = []
    for line in body:
        if not current and (not line.strip() or line.startswith("#")):
            continue
        current.append(line)
        heredoc = current[0].endswith("<<'EOF'")
        ended = line == "EOF" if heredoc else not line.endswith("\\")
        if ended and (len(current) > 1 or not heredoc):
            commands.append("\n".join(current))
            current = []
    assert not current, "a command runs past the end of the list:\n" + "\n".join(current)
    return commands


def expectations(command: str) -> tuple[str, ...]:
    for piece, wanted in EXPECTED:
        if piece in command:
            return wanted
    pytest.fail(f"no expected output is known for this printed command:\n{command}")


def needs_claude(command: str) -> bool:
    return "claude" in command.split()


def command_env() -> dict[str, str]:
    """The caller's environment without a node key, a port or a proxy in the way of loopback URLs."""
    dropped = {"PORT", "SERVICE_API_KEY", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"}
    env = {name: value for name, value in os.environ.items() if name not in dropped}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def untracked_files() -> set[str] | None:
    """The untracked files of the work tree (ignored ones left out); None when it is not a git work tree."""
    if shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        return None
    return {line[3:] for line in done.stdout.splitlines() if line.startswith("?? ")}


def top_folders() -> set[str]:
    return {path.name for path in ROOT.iterdir() if path.is_dir()}


def left_behind(before: set[str], after: set[str], folders: set[str], banner: str) -> set[str]:
    """The new untracked files the demo or its commands may have made.

    They run from the repository root, so a relative path they write makes a
    new top-level entry (a file, or a file in a new folder); a path the banner
    names counts wherever it is. New files inside ``folders`` (the top-level
    folders before the run) that the banner does not name, and new Python
    source, are left out: they are other work going on in this tree meanwhile.
    """
    return {
        path for path in after - before
        if (not path.endswith(CONCURRENT_SOURCES) and ("/" not in path or path.split("/")[0] not in folders))
        or path in banner
    }


def test_printed_commands_are_cut_as_a_reader_copies_them() -> None:
    lines = [COMMANDS_START, "", "# a", "curl -sf x \\", "  -d '{}'", "printf 'a\\n' > f", "python - <<'EOF'",
             "print(1)", "", "EOF", "# b", COMMANDS_END]
    assert printed_commands(lines) == ["curl -sf x \\\n  -d '{}'", "printf 'a\\n' > f", "python - <<'EOF'\nprint(1)\n\nEOF"]
    with pytest.raises(AssertionError, match="runs past the end"):
        printed_commands([COMMANDS_START, "curl x \\", COMMANDS_END])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.skipif(not VENV_PYTHON.exists(), reason="no .venv: the printed commands use the venv make demo builds")
def test_every_printed_command_runs_as_printed(tmp_path: Path) -> None:
    before, folders = untracked_files(), top_folders()
    lines: list[str] = []
    scratch: Path | None = None
    demo = RunningDemo(tmp_path)
    try:
        demo.wait_ready()
        if demo.child.wait_for_line(re.escape(COMMANDS_END), BANNER_TIMEOUT) is None:
            pytest.fail("the banner did not end:\n" + demo.child.output)
        lines = demo.child.lines
        scratch_match = next(filter(None, map(SCRATCH_LINE.search, lines)))
        scratch = Path(scratch_match.group(1))
        assert scratch.is_dir()
        commands = printed_commands(lines)

        skipped = [command for command in commands if needs_claude(command)]
        assert len(skipped) == 1 and skipped[0].startswith("ANTHROPIC_BASE_URL=")
        run = [command for command in commands if not needs_claude(command)]
        for command in run:
            assert not re.match(r"python3? ", command), f"a bare python, not the venv's:\n{command}"
            if command.startswith("curl "):
                assert re.match(r"curl -[a-zA-Z]*f", command), f"a curl without -f:\n{command}"
            if ">" in command.split("\n")[0] and command.startswith("printf "):
                assert str(scratch) in command, f"a file written outside the scratch folder:\n{command}"
        for route in ("/v1/chat/completions", "/v1/verify", "/v1/eval", "/v1/responses", "/v1/embeddings",
                      "/v1/completions", "/v1/messages", "/metrics"):
            assert any(command.startswith("curl ") and route in command for command in run), route
        assert sum(command.startswith(".venv/bin/python - <<'EOF'") for command in run) == 2
        assert any(".venv/bin/python -m tools.eval_client" in c and "--system-prompt" in c for c in run)

        for command in run:
            done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, env=command_env(),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
            report = f"\n$ {command}\nexit {done.returncode}\nstdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-2000:]}"
            assert done.returncode == 0, report
            for wanted in expectations(command):
                assert wanted in done.stdout, f"{wanted!r} is missing" + report
            for piece, count in GREETINGS.items():
                if piece in command:
                    assert done.stdout.count(HELLO_REPLY) == count, report
            assert "Traceback" not in done.stderr, report
        assert (scratch / "prompts.csv").is_file()

        demo.proc.send_signal(signal.SIGTERM)
        assert demo.proc.wait(EXIT_TIMEOUT) == 0
        assert_all_gone(demo)
        assert not scratch.exists(), "the demo left its scratch folder"
    finally:
        demo.kill_all()
        if scratch is not None:  # a demo killed by kill_all could not remove it
            shutil.rmtree(scratch, ignore_errors=True)
    after = untracked_files()
    if before is not None and after is not None:
        created = left_behind(before, after, folders, "\n".join(lines))
        assert not created, f"new untracked files in the repository: {sorted(created)}"


def test_left_behind_names_what_the_demo_could_have_written() -> None:
    before = {"old.txt", "tools/old.csv"}
    after = before | {"prompts.csv", "mira-demo-x/aliases.json", "tools/out.csv", "utils/status.py",
                      "handlers/status.html", "main.py", "tools/named.csv"}
    banner = "printf 'x' > tools/named.csv"
    assert left_behind(before, after, {"tools", "utils", "handlers"}, banner) == {
        "prompts.csv", "mira-demo-x/aliases.json", "tools/named.csv"}
