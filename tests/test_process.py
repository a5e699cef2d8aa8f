"""Process life: start-up errors, drain on SIGTERM, worker processes, logs, metrics."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket

import pytest

from tests.helpers import chat_body
from tests.mock_upstream import Behavior
from tools.childproc import pid_alive


def raw_get(sock: socket.socket, path: str) -> tuple[int, bytes, bytes]:
    """One keep-alive GET on an open socket; returns status, head and body."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: node\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), head, body


def open_stream(port: int, body: dict) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn.getresponse()


def read_status(conn: http.client.HTTPConnection) -> int:
    response = conn.getresponse()
    response.read()
    return response.status


# -- configuration errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("PORT", "abc"), ("PORT", "70000"), ("PORT", ""), ("LIVENESS_INTERVAL", "-1"), ("WORKERS", "-2"),
    ("UPSTREAM_TIMEOUT", "0"), ("LOG_FORMAT", "xml"), ("ALLOW_CUSTOM_PROVIDERS", "maybe"),
    ("OPENAI_BASE_URL", "not-a-url"), ("MAX_BODY_SIZE", "big"),
])
def test_a_bad_value_stops_start_up_naming_the_variable(spawn_node, name, value):
    node = spawn_node({name: value}, ready=False)
    assert node.wait() != 0
    assert f"{name}=" in node.output
    assert "Traceback" not in node.output


def test_env_file_is_read_and_the_environment_wins(spawn_node, tmp_path, upstream):
    env_file = tmp_path / "node.env"
    env_file.write_text("VERSION=from-env-file\nMAX_BODY_SIZE=1234\n")
    node = spawn_node({"ENV_FILE": str(env_file), "MAX_BODY_SIZE": "999", "VERSION": None})
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.request("GET", "/health")
    assert json.loads(conn.getresponse().read())["version"] == "from-env-file"
    conn.request("POST", "/v1/chat/completions", "x" * 1000)
    assert read_status(conn) == 413  # 999 from the environment, not 1234


def test_start_line_names_address_version_providers_and_mode(spawn_node):
    node = spawn_node({"VERSION": "1.2.3", "GROQ_API_KEY": ""})
    line = node.wait_for_line("listening on").string
    assert f"127.0.0.1:{node.port}" in line and "1.2.3" in line and "standalone" in line
    assert "openai" in line and "groq" not in line
    assert "SECRET" not in node.output


# -- drain ------------------------------------------------------------------------------------------------


def test_sigterm_lets_a_live_stream_finish_and_exits_0(spawn_node, upstream):
    upstream.default = Behavior(chunks=8, chunk_delay=0.1)
    node = spawn_node({"SHUTDOWN_TIMEOUT": "10"})
    keepalive = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    assert raw_get(keepalive, "/health")[0] == 200
    response = open_stream(node.port, chat_body(stream=True))
    assert response.readline().startswith(b"data: ")  # the stream is live
    node.signal(signal.SIGTERM)
    assert node.wait_for_line("draining")
    status, head, body = raw_get(keepalive, "/health")
    assert status == 503
    assert json.loads(body)["status"] == "draining"
    assert b"Connection: close" in head  # answered, then closed: the client reconnects elsewhere
    assert keepalive.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", node.port), timeout=5)
    rest = response.read()
    assert rest.endswith(b"data: [DONE]\n\n")
    assert node.wait() == 0
    keepalive.close()


def test_a_stream_outlasting_the_drain_is_cut_and_its_upstream_aborted(spawn_node, upstream):
    upstream.default = Behavior(chunks=5, hang_after_chunks=1)
    node = spawn_node({"SHUTDOWN_TIMEOUT": "0.3"})
    response = open_stream(node.port, chat_body(stream=True))
    assert response.readline().startswith(b"data: ")
    node.signal(signal.SIGTERM)
    assert node.wait() == 0
    assert upstream.wait_for(lambda u: u.requests[0].closed_at is not None)
    assert "still running after 0.3s" in node.output


def test_second_signal_exits_at_once(spawn_node, upstream):
    upstream.default = Behavior(hang=True)
    node = spawn_node({"SHUTDOWN_TIMEOUT": "60"})
    response_conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=20)
    response_conn.request("POST", "/v1/chat/completions", json.dumps(chat_body()))
    assert upstream.wait_for(lambda u: len(u.requests) == 1)
    node.signal(signal.SIGTERM)
    assert node.wait_for_line("draining")
    node.signal(signal.SIGINT)
    assert node.wait(timeout=5) == 0
    assert "second signal" in node.output


# -- workers ---------------------------------------------------------------------------------------------------


def test_two_workers_serve_and_all_stop_on_sigterm(spawn_node, upstream):
    node = spawn_node({"WORKERS": "2"})
    pids = {int(node.wait_for_line(rf"worker {i} serving \(pid (\d+)\)").group(1)) for i in (0, 1)}
    assert len(pids) == 2
    for _ in range(40):  # separate connections, spread over the workers' sockets by the kernel
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", json.dumps(chat_body()), {"Content-Type": "application/json"})
        assert read_status(conn) == 200
        conn.close()
    node.signal(signal.SIGTERM)
    assert node.wait() == 0
    served = {int(p) for p in re.findall(r"mira\.access\[(\d+)\]", node.output)}
    assert served == pids
    assert not any(pid_alive(pid) for pid in pids)
    assert "all workers stopped" in node.output


# -- logs ---------------------------------------------------------------------------------------------------------


def test_json_logs_are_one_object_per_line_with_the_request_id(spawn_node, upstream):
    node = spawn_node({"LOG_FORMAT": "json"})
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(chat_body()), {"X-Request-ID": "json-log-1"})
    assert read_status(conn) == 200
    conn.request("POST", "/v1/chat/completions", "{bad", {"X-Request-ID": "json-log-2"})
    assert read_status(conn) == 400
    node.signal(signal.SIGTERM)
    assert node.wait() == 0
    records = [json.loads(line) for line in node.lines if line.strip()]
    access = {r["request_id"]: r for r in records if r["logger"] == "mira.access"}
    assert access["json-log-1"]["status"] == 200
    assert access["json-log-1"]["provider"] == "openai"
    assert access["json-log-1"]["upstream_status"] == 200
    assert access["json-log-2"]["status"] == 400
    assert {"time", "level", "message", "method", "path", "duration_ms", "client_aborted"} <= set(access["json-log-1"])


def test_config_error_is_json_too_when_asked(spawn_node):
    node = spawn_node({"LOG_FORMAT": "json", "PORT": "abc"}, ready=False)
    assert node.wait() == 2
    (line,) = [line for line in node.lines if line.strip()]
    assert "PORT=" in json.loads(line)["message"]

