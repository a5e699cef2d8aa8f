"""The container image, built and run against the mock upstream.

The image is built from the Dockerfile once per session (a tag unique to the run), then run with
the engine's host networking on a free loopback port, every provider pointed at the mock upstream.
It must answer ``/health`` with the build's VERSION, relay chat JSON and streams, run as uid 10001,
pass its HEALTHCHECK, drain a request in flight on SIGTERM (exit 0), let a request longer than the
engines' default 10 s stop grace finish through a stop with the documented stop timeout, and hold
only what it needs.

The engine: ``DOCKER`` (``podman`` or ``docker``, global flags allowed) where set, else podman, else
docker, the first that answers ``info``. With podman the flags these machines need are added: runc (crun refuses a
mixed cgroup layout), bounded ulimits, ``--format docker`` (keeps the HEALTHCHECK) and the host's
CA bundle mounted read-only for the build alone (pip verifies TLS with it). ``DOCKER_BUILD_FLAGS``
and ``DOCKER_RUN_FLAGS`` replace those machine flags where set. Build and run use host networking
(a bridge network would make the engine add iptables chains and turn on ip_forward).

Where the base image (the Dockerfile's FROM) is missing, ``tools/base_image.sh`` pulls it or makes
the Debian stand-in. With no engine the tests skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from tests.conftest import base_env
from tests.helpers import chat_body, closed_port
from tests.mock_upstream import Behavior, MockUpstream

ROOT = Path(__file__).resolve().parent.parent
UID = 10001
MAX_IMAGE_BYTES = 250_000_000
ENGINE_DEFAULT_STOP = 10.0  # what `docker stop` / `podman stop` wait before SIGKILL unless told otherwise
LONG_REQUEST = 12.0  # seconds the upstream takes in the stop test: longer than ENGINE_DEFAULT_STOP
INSTALL_HINT = (
    "install a container engine: podman and runc (Debian: apt-get install podman runc mmdebstrap), "
    "or run a Docker daemon; DOCKER=podman|docker picks one"
)
# Where the stand-in base is built by .ci/run; pip inside the build verifies TLS against this host bundle.
HOST_CA_BUNDLE = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def makefile_stop_timeout() -> int:
    """The stop timeout the Makefile's `docker-run` gives the engine (DOCKER_STOP_TIMEOUT)."""
    match = re.search(r"^DOCKER_STOP_TIMEOUT\s*\?=\s*(\d+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert match, "Makefile: no DOCKER_STOP_TIMEOUT ?= N"
    return int(match.group(1))


def default_shutdown_timeout() -> float:
    (field,) = [f for f in dataclasses.fields(Settings) if f.name == "shutdown_timeout"]
    assert isinstance(field.default, float)
    return field.default


@dataclasses.dataclass
class Engine:
    command: list[str]  # the engine and its global flags
    kind: str  # "podman" or "docker"
    build_flags: list[str]
    run_flags: list[str]

    def __call__(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.command, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            command = shlex.join([*self.command, *args])
            raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result


def find_engine() -> Engine | None:
    wanted = shlex.split(os.environ.get("DOCKER", ""))  # the engine and its global flags
    for name, *global_flags in [wanted] if wanted else [["podman"], ["docker"]]:
        path = shutil.which(name)
        if path is None:
            continue
        kind = "podman" if "podman" in Path(path).name else "docker"
        command = [path, *global_flags]
        if kind == "podman" and "--runtime" not in global_flags and shutil.which("runc"):
            command += ["--runtime", "runc"]
        try:
            if subprocess.run([*command, "info"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL).returncode != 0:
                continue
        except subprocess.TimeoutExpired:
            continue
        build: list[str] = []
        run: list[str] = []
        if kind == "podman":
            limits = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
            build = ["--format", "docker", *limits]
            if Path(HOST_CA_BUNDLE).is_file():
                build += ["-v", f"{HOST_CA_BUNDLE}:{IMAGE_CA_BUNDLE}:ro"]
            run = list(limits)
        if "DOCKER_BUILD_FLAGS" in os.environ:
            build = shlex.split(os.environ["DOCKER_BUILD_FLAGS"])
        if "DOCKER_RUN_FLAGS" in os.environ:
            run = shlex.split(os.environ["DOCKER_RUN_FLAGS"])
        host = ["--network", "host"]
        build = build if "--network" in build else host + build
        if kind == "podman":
            build.append("--layers=false")  # no intermediate images left behind once the test image is removed
        return Engine(command, kind, build, run if "--network" in run else host + run)
    return None


@dataclasses.dataclass
class Image:
    engine: Engine
    tag: str
    version: str
    build_seconds: float


@pytest.fixture(scope="session")
def engine() -> Engine:
    found = find_engine()
    if found is None:
        if in_ci():
            pytest.fail(f"CI: no container engine runs here; {INSTALL_HINT}")
        pytest.skip(f"no container engine runs here; {INSTALL_HINT}")
    return found


@pytest.fixture(scope="session")
def image(engine: Engine) -> Iterator[Image]:
    base = next(line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.upper().startswith("FROM "))
    if engine("image", "inspect", base, check=False).returncode != 0:
        made = subprocess.run(
            ["bash", str(ROOT / "tools" / "base_image.sh")],
            env={**os.environ, "DOCKER": shlex.join(engine.command)},
            capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
        )
        assert made.returncode == 0, f"tools/base_image.sh could not provide {base}:\n{made.stdout}{made.stderr}"
    run_id = uuid.uuid4().hex[:10]
    tag = f"mira-service-test:{run_id}"
    version = f"0.0.0-test.{run_id}"
    started = time.monotonic()
    try:
        engine("build", *engine.build_flags, "--build-arg", f"VERSION={version}", "-t", tag, str(ROOT), timeout=900)
        yield Image(engine, tag, version, time.monotonic() - started)
    finally:
        engine("rmi", "-f", tag, check=False, timeout=120)


class Container:
    """One container of the image, on a free loopback port of the host's network."""

    def __init__(self, image: Image, upstream: MockUpstream, env: dict[str, str] | None = None) -> None:
        self.engine = image.engine
        self.name = f"mira-test-{uuid.uuid4().hex[:12]}"
        self.port = closed_port()
        full = base_env(upstream)
        full.pop("VERSION")  # the build's VERSION must show
        full.update({"PORT": str(self.port), "HOST": "127.0.0.1", "UPSTREAM_TIMEOUT": "30"})
        full.update(env or {})
        env_args = [arg for key, value in sorted(full.items()) for arg in ("-e", f"{key}={value}")]
        self.started = time.monotonic()
        self.engine(
            "run", "-d", "--name", self.name, *self.engine.run_flags,
            "--stop-timeout", str(makefile_stop_timeout()), *env_args, image.tag,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = self.engine("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Poll /health until it answers 200; the seconds since `run`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except (OSError, urllib.error.URLError):
                pass
            if self.state("{{.State.Running}}") != "true":
                break
            time.sleep(0.05)
        raise AssertionError(f"container {self.name} did not answer /health:\n{self.logs()}")

    def state(self, template: str) -> str:
        return self.engine("inspect", "--format", template, self.name, check=False).stdout.strip()

    def exit_code(self, timeout: float = 60.0) -> int:
        return int(self.engine("wait", self.name, timeout=timeout).stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        self.engine("kill", self.name, check=False)
        self.engine("rm", "-f", self.name, check=False)


@pytest.fixture
def start_container(image: Image, upstream: MockUpstream) -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(env: dict[str, str] | None = None) -> Container:
        container = Container(image, upstream, env)
        started.append(container)
        container.wait_ready()
        return container

    yield start
    for container in started:
        container.remove()


@pytest.fixture(scope="module")
def node(image: Image, upstream_server: MockUpstream) -> Iterator[Container]:
    """One container shared by the tests that only ask it questions."""
    upstream_server.reset()
    container = Container(image, upstream_server)
    try:
        container.wait_ready()
        yield container
    finally:
        container.remove()


def request(url: str, body: Any = None, timeout: float = 60) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_health_answers_with_the_builds_version(node: Container, image: Image) -> None:
    status, body = request(node.url + "/health")
    assert status == 200, body
    health = json.loads(body)
    assert health["status"] == "ok" and health["version"] == image.version, health
    assert "uvloop event loop" in node.logs(), node.logs()  # uvloop installed from requirements.txt, the default


def test_chat_json_and_stream_are_relayed(node: Container, upstream: MockUpstream) -> None:
    status, body = request(node.url + "/v1/chat/completions", chat_body())
    assert status == 200, body + node.logs().encode()
    assert json.loads(body)["choices"][0]["message"]["content"] == "Hello from mock"

    status, body = request(node.url + "/v1/chat/completions", chat_body(stream=True))
    assert status == 200, body
    events = [line[len(b"data: "):] for line in body.splitlines() if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]", body
    text = "".join(
        choice["delta"].get("content") or ""
        for event in events[:-1]
        for choice in json.loads(event).get("choices", [])
    )
    assert text == "Hello from mock", body
    assert len(upstream.requests) == 2


def test_runs_as_uid_10001(node: Container) -> None:
    status = node.engine("exec", node.name, "cat", "/proc/1/status").stdout
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
    assert uids and set(uids.group(1).split()) == {str(UID)}, status
    assert node.engine("exec", node.name, "id", "-u").stdout.strip() == str(UID)


def test_healthcheck_passes(node: Container) -> None:
    if node.engine.kind == "podman":
        result = node.engine("healthcheck", "run", node.name, check=False)
        assert result.returncode == 0, result.stdout + result.stderr + node.logs()
        return
    deadline = time.monotonic() + 60
    while (health := node.state("{{.State.Health.Status}}")) != "healthy" and time.monotonic() < deadline:
        assert health in ("starting", ""), health
        time.sleep(0.5)
    assert health == "healthy", node.logs()


def test_sigterm_drains_a_request_in_flight(start_container: Callable[..., Container], upstream: MockUpstream) -> None:
    container = start_container()
    upstream.push(Behavior(delay=1.5))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(request, container.url + "/v1/chat/completions", chat_body())
        assert upstream.wait_for(lambda u: u.in_flight >= 1, timeout=10), container.logs()
        container.engine("kill", "--signal", "TERM", container.name)
        status, body = answer.result(timeout=30)
    assert status == 200, body + container.logs().encode()
    assert json.loads(body)["choices"][0]["message"]["content"] == "Hello from mock"
    assert container.exit_code() == 0, container.logs()
    assert "draining" in container.logs()


def test_a_request_longer_than_the_engines_default_grace_survives_a_stop(
    start_container: Callable[..., Container], upstream: MockUpstream
) -> None:
    stop_timeout = makefile_stop_timeout()
    assert stop_timeout > default_shutdown_timeout() > LONG_REQUEST > ENGINE_DEFAULT_STOP
    container = start_container()
    upstream.push(Behavior(delay=LONG_REQUEST))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = time.monotonic()
        answer = pool.submit(request, container.url + "/v1/chat/completions", chat_body())
        assert upstream.wait_for(lambda u: u.in_flight >= 1, timeout=10), container.logs()
        stopping = time.monotonic()
        container.engine("stop", container.name, timeout=stop_timeout + 30)  # the stop timeout given at `run`
        stopped = time.monotonic()
        status, body = answer.result(timeout=30)
    assert status == 200, body + container.logs().encode()
    assert json.loads(body)["choices"][0]["message"]["content"] == "Hello from mock"
    assert stopped - sent >= LONG_REQUEST - 0.5
    assert stopped - stopping > ENGINE_DEFAULT_STOP, "the stop did not outlast the engines' default grace"
    assert container.state("{{.State.ExitCode}}") == "0", container.logs()


CONTENTS_SCRIPT = r"""
import glob, importlib.util, json, os
app = "/opt/mira-service"
bundle = open("/etc/ssl/certs/ca-certificates.crt").read() if os.path.exists("/etc/ssl/certs/ca-certificates.crt") else ""
print(json.dumps({
    "cwd": os.getcwd(),
    "present": sorted(os.listdir(app)),
    "pytest": importlib.util.find_spec("pytest") is not None,
    "bundle_certs": bundle.count("BEGIN CERTIFICATE"),
    "debian_certs": len(glob.glob("/usr/share/ca-certificates/mozilla/*.crt")),
}))
"""


def test_image_holds_what_it_needs_and_nothing_else(image: Image) -> None:
    engine = image.engine
    size = int(engine("image", "inspect", "--format", "{{.Size}}", image.tag).stdout.strip())
    assert size < MAX_IMAGE_BYTES, f"{size / 1e6:.0f} MB"
    out = engine("run", "--rm", *engine.run_flags, image.tag, "python", "-c", CONTENTS_SCRIPT).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert found["cwd"] == "/opt/mira-service"
    present = set(found["present"])
    assert {"server.py", "config.py", "handlers", "models", "utils", "data", "openapi.json", "requirements.txt"} <= present
    unwanted = {"tests", ".git", ".env", ".venv", "bench", "tools", "deploy", "Dockerfile", "Makefile", ".mypy_cache"}
    assert not present & unwanted, present & unwanted
    assert not any(name.endswith(".md") for name in present), present
    assert not found["pytest"], "pytest is in the image"
    # Debian's own bundle: every certificate of the image's ca-certificates package, none of the build host's.
    assert found["debian_certs"] > 100 and found["bundle_certs"] == found["debian_certs"], found
