"""``python server.py --check-config`` and ``--version``, the warnings about names that are not settings, ENV_FILE.

The node runs as a subprocess with the environment tests/conftest.py's NodeProcess gives it: every variable
the node reads cleared, ENV_FILE=os.devnull unless a test names a file.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import config
from config import ENV_VARIABLES, setting_typos
from tests.conftest import NODE_VARIABLES, ROOT, SECRETS

SETTING_LINE = re.compile(r"([A-Z0-9_]+)=(.*) \(([^()]+)\)")


class Run:
    """One finished ``python server.py ARGS``: exit code, stdout, stderr."""

    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.code = done.returncode
        self.out = done.stdout
        self.err = done.stderr

    @property
    def output(self) -> str:
        return self.out + self.err

    def settings(self) -> dict[str, tuple[str, str]]:
        """The ``NAME=value (source)`` lines of --check-config: name -> (value, source); each name once."""
        found: dict[str, tuple[str, str]] = {}
        for line in self.out.splitlines():
            if line.startswith("warning: "):
                continue
            match = SETTING_LINE.fullmatch(line)
            assert match is not None, f"not a setting line: {line!r}"
            assert match.group(1) not in found, f"{match.group(1)} listed twice"
            found[match.group(1)] = (match.group(2), match.group(3))
        return found

    def warnings(self) -> list[str]:
        return [line.removeprefix("warning: ") for line in self.out.splitlines() if line.startswith("warning: ")]


def run_node(args: list[str], env: dict[str, str | None] | None = None, cwd: Path = ROOT) -> Run:
    """``python server.py ARGS`` to its end; ``env`` over a clean environment (a value of None: unset)."""
    full = {k: v for k, v in os.environ.items() if k not in NODE_VARIABLES}
    full.update({"ENV_FILE": os.devnull, "PYTHONUNBUFFERED": "1"})
    full.update({k: v for k, v in (env or {}).items() if v is not None})
    for name in [k for k, v in (env or {}).items() if v is None]:
        full.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    return Run(done)


def check_config(env: dict[str, str | None] | None = None, cwd: Path = ROOT) -> Run:
    return run_node(["--check-config"], env, cwd)


def fragments(secret: str, size: int = 8) -> list[str]:
    """Every part of ``secret`` of ``size`` characters (the whole of a shorter one): none may show."""
    return [secret[i : i + size] for i in range(max(1, len(secret) - size + 1))]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# -- --check-config: the effective settings -------------------------------------------------------------------------


def test_every_setting_is_listed_once_with_its_value_and_where_it_came_from(tmp_path: Path) -> None:
    env_file = write(tmp_path / "node.env", "PORT=9100\nVERSION=from-file\nLOG_LEVEL=DEBUG\n")
    run = check_config({"ENV_FILE": env_file, "VERSION": "from-env", "MAX_BODY_SIZE": "1234", "WORKERS": "3"})
    assert run.code == 0, run.output
    assert run.err == ""
    listed = run.settings()
    assert list(listed) == list(ENV_VARIABLES)  # every variable the node reads, in the table's order
    assert listed["ENV_FILE"] == (env_file, "environment")
    assert listed["PORT"] == ("9100", env_file)  # from the .env file, named by ENV_FILE
    assert listed["LOG_LEVEL"] == ("DEBUG", env_file)
    assert listed["VERSION"] == ("from-env", "environment")  # the environment wins over the file
    assert listed["MAX_BODY_SIZE"] == ("1234", "environment")
    assert listed["WORKERS"] == ("3", "environment")
    assert listed["HOST"] == ("0.0.0.0", "default")
    assert listed["UPSTREAM_RETRY_MAX_WAIT"] == ("5", "default")
    assert listed["ALLOW_CUSTOM_PROVIDERS"] == ("true", "default")
    assert listed["OPENAI_BASE_URL"] == ("https://api.openai.com/v1", "default")
    assert listed["OPENAI_API_KEY"] == ("", "default")
    assert run.warnings() == []
    assert "listening" not in run.output


def test_the_default_env_file_is_read_from_the_working_directory_and_may_be_missing(tmp_path: Path) -> None:
    run = check_config({"ENV_FILE": None}, cwd=tmp_path)  # no .env there: fine
    assert run.code == 0, run.output
    assert run.settings()["ENV_FILE"] == (".env", "default")
    assert run.settings()["LOG_LEVEL"] == ("INFO", "default")
    write(tmp_path / ".env", "LOG_LEVEL=DEBUG\n")
    run = check_config({"ENV_FILE": None}, cwd=tmp_path)
    assert run.code == 0, run.output
    assert run.settings()["LOG_LEVEL"] == ("DEBUG", ".env")


def test_every_secret_is_masked(tmp_path: Path) -> None:
    secrets = {
        **SECRETS,
        "OPENAI_API_KEY": "sk-openai-SECRET-0001,sk-openai-SECRET-0011",  # a pool of two keys
        "ADMIN_API_TOKEN": "admin-token-SECRET-0007",
        "MACHINE_API_TOKEN": "mt-SECRET-08",
        "SERVICE_API_KEY": "svc-key-SECRET-0009,svc-SECRET-10",
        "REDIS_URL": "redis://mira:redis-pass-SECRET-0012@127.0.0.1:1/0",  # never connected to
    }
    env: dict[str, str | None] = dict(secrets)
    env.pop("GROQ_API_KEY")
    env["ENV_FILE"] = write(tmp_path / "node.env", f"GROQ_API_KEY={SECRETS['GROQ_API_KEY']}\n")  # one from the file
    run = check_config(env)
    assert run.code == 0, run.output
    values = [key for name, value in secrets.items() if name != "REDIS_URL" for key in value.split(",")]
    values.append("redis-pass-SECRET-0012")  # the secret of REDIS_URL: its password
    for value in values:
        for piece in fragments(value):
            assert piece not in run.output, f"{piece!r} of a secret shows in --check-config's output"
    listed = run.settings()
    assert listed["OPENAI_API_KEY"][0].endswith("(masked, 2 keys)")
    assert listed["OPENAI_API_KEY"][1] == "environment"
    assert listed["GROQ_API_KEY"][1] == env["ENV_FILE"]
    assert "masked" in listed["GROQ_API_KEY"][0]
    assert listed["SERVICE_API_KEY"][0].endswith("(masked, 2 keys)")
    assert "masked" in listed["ADMIN_API_TOKEN"][0]
    assert listed["MACHINE_API_TOKEN"][0] == "********(masked)"  # too short to show any of it
    assert listed["REDIS_URL"] == ("redis://mira:********@127.0.0.1:1/0", "environment")


def test_it_opens_no_port_and_calls_nothing(tmp_path: Path) -> None:
    """PORT is a port this test holds: a node that tried to listen on it would fail. The router, Redis and the
    provider all point at a socket of this test's, which no connection reaches."""
    with socket.socket() as held, socket.socket() as trap:
        held.bind(("127.0.0.1", 0))
        held.listen()
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        port, trap_port = held.getsockname()[1], trap.getsockname()[1]
        run = check_config({
            "PORT": str(port), "HOST": "127.0.0.1",
            "ROUTER_BASE_URL": f"http://127.0.0.1:{trap_port}", "MACHINE_API_TOKEN": "mt-token-0001",
            "REDIS_URL": f"redis://127.0.0.1:{trap_port}/0", "OPENAI_BASE_URL": f"http://127.0.0.1:{trap_port}/v1",
            "OPENAI_API_KEY": "sk-test-0001",
        })
        assert run.code == 0, run.output
        assert run.settings()["PORT"] == (str(port), "environment")
        assert "listening" not in run.output
        trap.setblocking(False)
        with pytest.raises(BlockingIOError):  # nobody knocked
            trap.accept()


# -- --check-config: a bad configuration is start-up's error, exit 2 ----------------------------------------------


def test_a_bad_setting_exits_2_with_start_ups_message() -> None:
    run = check_config({"PORT": "abc"})
    assert run.code == 2
    assert run.out == ""
    assert "configuration error: PORT='abc'" in run.err
    assert "Traceback" not in run.output


def test_a_bad_redis_url_is_refused_without_showing_its_password() -> None:
    run = check_config({"REDIS_URL": "redis://:hunter2-SECRET-pass@"})  # no host
    assert run.code == 2
    assert "REDIS_URL=" in run.err
    for piece in fragments("hunter2-SECRET-pass"):
        assert piece not in run.output


@pytest.mark.parametrize("args", [["--check-config"], ["--version"], []])
def test_an_env_file_that_does_not_exist_stops_start_up(tmp_path: Path, args: list[str]) -> None:
    missing = str(tmp_path / "nowhere.env")
    run = run_node(args, {"ENV_FILE": missing})
    assert run.code == 2
    assert f"ENV_FILE={missing!r}: not found" in run.err
    assert "listening" not in run.output


def test_env_file_dev_null_reads_nothing() -> None:
    run = check_config({"ENV_FILE": os.devnull})
    assert run.code == 0, run.output
    assert run.settings()["ENV_FILE"] == (os.devnull, "environment")
    assert {source for _, source in run.settings().values()} == {"environment", "default"}


@pytest.mark.parametrize(
    "variable", ["SUPPORTED_MODELS_FILE", "MODEL_FALLBACKS_FILE", "MODEL_ALIASES_FILE", "PROVIDER_LIMITS_FILE"]
)
def test_a_json_file_that_is_missing_is_not_found(tmp_path: Path, variable: str) -> None:
    missing = str(tmp_path / "missing.json")
    run = check_config({variable: missing})
    assert run.code == 2
    assert f"{variable}={missing!r}: not found" in run.err


@pytest.mark.parametrize(
    "variable", ["SUPPORTED_MODELS_FILE", "MODEL_FALLBACKS_FILE", "MODEL_ALIASES_FILE", "PROVIDER_LIMITS_FILE"]
)
def test_a_json_file_that_is_not_json_says_where(tmp_path: Path, variable: str) -> None:
    path = write(tmp_path / "bad.json", '{\n  "openai/a": ["groq/b"]\n  "x": 1\n}\n')
    run = check_config({variable: path})
    assert run.code == 2
    assert f"{variable}={path!r}: not JSON at line 3, column 3: Expecting ',' delimiter" in run.err
    assert "Traceback" not in run.output


def test_a_file_that_is_not_utf8_says_where(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'[\n "openai/\xff"]')
    run = check_config({"SUPPORTED_MODELS_FILE": str(path)})
    assert run.code == 2
    assert "not JSON at line 2, column 10: not UTF-8 text" in run.err


# -- names that are not settings ----------------------------------------------------------------------------------


def test_a_typo_in_the_environment_is_named_with_the_setting_meant() -> None:
    run = check_config({
        "OPENAI_APIKEY": "x", "REDIS_URI": "redis://h", "SERVICE_API_KEYS": "k",
        "PATHX": "1", "HOME_DIR": "1", "OPENAI_ORGANIZATION": "org", "OTEL_SERVICE_NAMEE": "x",
    })
    assert run.code == 0, run.output
    assert "OPENAI_APIKEY is not a setting (did you mean OPENAI_API_KEY?)" in run.warnings()
    assert "REDIS_URI is not a setting (did you mean REDIS_URL?)" in run.warnings()
    assert "SERVICE_API_KEYS is not a setting (did you mean SERVICE_API_KEY?)" in run.warnings()
    assert len(run.warnings()) == 3
    for unrelated in ("PATHX", "HOME_DIR", "OPENAI_ORGANIZATION", "OTEL_SERVICE_NAMEE"):  # another word, too far, the SDK's
        assert unrelated not in run.out
    # the settings come first, the warnings last
    lines = run.out.splitlines()
    assert all(line.startswith("warning: ") for line in lines[len(ENV_VARIABLES):])


def test_a_name_in_the_env_file_that_is_not_a_setting_is_named(tmp_path: Path) -> None:
    env_file = write(tmp_path / "node.env", "OPENAI_APIKEY=x\nLOG_LEVLE=DEBUG\nNOTHING_LIKE_IT=1\nOTEL_SERVICE_NAME=n\nPORT=9\n")
    run = check_config({"ENV_FILE": env_file})
    assert run.code == 0, run.output
    assert run.warnings() == [
        f"{env_file}: OPENAI_APIKEY is not a setting (did you mean OPENAI_API_KEY?)",
        f"{env_file}: LOG_LEVLE is not a setting (did you mean LOG_LEVEL?)",
        f"{env_file}: NOTHING_LIKE_IT is not a setting (the node does not read it)",
    ]


def test_setting_typos_rules() -> None:
    env = {
        "OPENAI_API_KYE": "1",  # two letters swapped: one edit
        "OPENAI_APIKEY": "1",
        "GROQ_KEY": "1",  # more than two edits from GROQ_API_KEY
        "PATH": "/bin", "HOME": "/root", "HOSTNAME": "box", "PORTS": "1", "LANG": "C",
        "OPENAI_API_KEY": "sk", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_X": "1",
        "openai_api_key": "sk",  # letter case aside: the node reads OPENAI_API_KEY only
    }
    assert setting_typos(env, []) == [
        "OPENAI_APIKEY is not a setting (did you mean OPENAI_API_KEY?)",
        "OPENAI_API_KYE is not a setting (did you mean OPENAI_API_KEY?)",
        "openai_api_key is not a setting (did you mean OPENAI_API_KEY?)",
    ]
    # a name in both the file and the environment is named once, as the file's
    assert setting_typos({"REDIS_URI": "x"}, ["REDIS_URI", "VERSION"], "x.env") == [
        "x.env: REDIS_URI is not a setting (did you mean REDIS_URL?)"
    ]
    assert config.nearest_setting("UPSTREAM_RETRY_MAXWAIT") == "UPSTREAM_RETRY_MAX_WAIT"
    assert config.nearest_setting("SOMETHING") is None


# -- --version, other arguments -----------------------------------------------------------------------------------


def test_version_prints_version_from_the_environment_or_the_env_file(tmp_path: Path) -> None:
    run = run_node(["--version"], {"VERSION": "1.2.3-check"})
    assert (run.code, run.out, run.err) == (0, "1.2.3-check\n", "")
    env_file = write(tmp_path / "node.env", "VERSION=4.5.6\nPORT=not-read-by-version\n")
    run = run_node(["--version"], {"ENV_FILE": env_file})
    assert (run.code, run.out) == (0, "4.5.6\n")
    assert run_node(["--version"]).out == "0.0.0\n"


@pytest.mark.parametrize("args", [["--bogus"], ["--version", "--check-config"], ["extra"], ["--help"]])
def test_any_other_argument_gets_the_usage_and_exit_2(args: list[str]) -> None:
    run = run_node(args)
    assert run.code == 2
    assert run.out == ""
    assert run.err.startswith("usage: python server.py")
    assert "listening" not in run.output


# -- the node itself ----------------------------------------------------------------------------------------------


def test_the_node_warns_of_a_typo_at_start_up(spawn_node, tmp_path: Path) -> None:
    env_file = write(tmp_path / "node.env", "MAX_BODYSIZE=10\n")
    node = spawn_node({"OPENAI_APIKEY": "x", "PATHX": "1", "HOME_DIR": "1", "ENV_FILE": env_file})
    assert node.wait_for_line(r"OPENAI_APIKEY is not a setting \(did you mean OPENAI_API_KEY\?\)")
    assert node.wait_for_line(r"MAX_BODYSIZE is not a setting \(did you mean MAX_BODY_SIZE\?\)")
    warned = [i for i, line in enumerate(node.lines) if "is not a setting" in line]
    listening = next(i for i, line in enumerate(node.lines) if "listening on" in line)
    assert len(warned) == 2 and max(warned) < listening  # before the node listens; nothing about PATHX, HOME_DIR
    assert "WARNING" in node.lines[warned[0]]
