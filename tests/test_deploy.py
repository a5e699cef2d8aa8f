"""The deployment files: the systemd unit and the Dockerfile.

``systemd-analyze verify`` checks the unit where it is installed (Debian's
``systemd`` package); the plain tests read the files and check the settings
the operations contract relies on. The Dockerfile's HEALTHCHECK command is
run against a real node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config import Settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "mira-service.service"
DOCKERFILE = ROOT / "Dockerfile"
TARGET_PYTHON = "/opt/mira-service/.venv/bin/python"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a systemd unit: name -> (key, value) pairs in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}: {found}"
    return found[0]


def seconds(value: str) -> float:
    """A systemd time span such as ``45``, ``45s`` or ``1min 30s``."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value))


def test_unit_has_the_required_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert one(service, "User") == "mira"
    assert one(service, "WorkingDirectory") == "/opt/mira-service"
    assert one(service, "EnvironmentFile") == "-/etc/mira-service/env"  # "-": optional
    assert one(service, "ExecStart") == f"{TARGET_PYTHON} server.py"
    assert one(service, "KillSignal") == "SIGTERM"
    assert seconds(one(service, "TimeoutStopSec")) > Settings().shutdown_timeout
    assert one(service, "Restart") == "on-failure"
    for key, expected in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                          ("PrivateTmp", "yes")):
        assert one(service, key) == expected, key
    runtime = one(service, "RuntimeDirectory")
    assert runtime == "mira-service"
    assert f"/run/{runtime}" in one(service, "ReadWritePaths").split()
    environment = dict(item.split("=", 1) for line in values(service, "Environment") for item in line.split())
    # The folder systemd creates (prometheus_client does not create it, and it must start empty).
    assert environment["PROMETHEUS_MULTIPROC_DIR"] == f"/run/{runtime}"
    assert "multi-user.target" in one(unit["Install"], "WantedBy").split()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (Debian package systemd)")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The unit names the target host's interpreter; verify checks that ExecStart exists, so point it at ours.
    text = UNIT.read_text()
    assert TARGET_PYTHON in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(TARGET_PYTHON, sys.executable))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # verify reports unknown keys and bad values as warnings with exit 0: there must be none.
    assert UNIT.name not in output, output


# -- Dockerfile ------------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def test_dockerfile_has_the_required_instructions() -> None:
    steps = instructions(DOCKERFILE.read_text())
    by_name: dict[str, list[str]] = {}
    for name, rest in steps:
        by_name.setdefault(name, []).append(rest)
    assert by_name["FROM"] == ["python:3.11-slim"]
    assert by_name["ARG"] == ["VERSION=0.0.0"] and "VERSION=${VERSION}" in by_name["ENV"][0]
    assert any("-r requirements.txt" in run for run in by_name["RUN"])
    assert not any("requirements-dev" in run for run in by_name["RUN"])
    assert any("ca-certificates" in run for run in by_name["RUN"])
    user = by_name["USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert by_name["EXPOSE"] == ["8000"] and by_name["STOPSIGNAL"] == ["SIGTERM"]
    assert json.loads(by_name["CMD"][-1]) == ["python", "server.py"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv", "tests"} <= set(ignored)


def healthcheck_command() -> list[str]:
    (check,) = [rest for name, rest in instructions(DOCKERFILE.read_text()) if name == "HEALTHCHECK"]
    command = json.loads(check[check.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_dockerfile_healthcheck_follows_health(spawn_node: Any) -> None:
    node = spawn_node()
    command = healthcheck_command()
    env = {"PORT": str(node.port), "PATH": "/usr/bin:/bin"}
    assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode == 0
    node.stop()
    assert subprocess.run(command, env=env, capture_output=True, timeout=30).returncode != 0


HADOLINT = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
