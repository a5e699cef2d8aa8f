"""Hardening: the node facing the internet (secrets, logs, limits, hostile input and upstreams, SSRF).

Each group is one finding of an adversarial pass; every test talks HTTP to a
real node (in process, or ``python server.py``), raw sockets where the shape
of the exchange matters.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket

import pytest
import ujson

from tests.conftest import SECRETS
from tests.fake_router import ADMIN_TOKEN, FakeRouter
from tests.helpers import USER, chat_body, dechunk, error_of, post, sse_events
from tests.mock_upstream import Behavior

pytestmark = pytest.mark.gen_test(timeout=30)

OPENAI_KEY = SECRETS["OPENAI_API_KEY"]
CHAT = "/v1/chat/completions"


def fragments(secret: str, size: int = 8) -> list[str]:
    """Every part of ``secret`` of ``size`` characters: none may show anywhere."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def assert_hidden(text: str | bytes, *secrets: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for secret in secrets or SECRETS.values():
        for part in fragments(secret):
            assert part not in text, f"{part!r} of a secret shows in {text[:300]!r}"


def answer_text(response) -> str:
    return bytes(response.body or b"").decode("utf-8", "replace") + json.dumps(dict(response.headers))


# -- 1. secrets through upstream errors --------------------------------------------------------------


async def test_upstream_error_type_and_code_are_masked(node_url, upstream):
    echo = f"Bearer {OPENAI_KEY}"
    upstream.push(Behavior(status=401, json_body={"error": {"message": "no", "type": echo, "code": echo}}))
    response = await post(node_url + CHAT, chat_body())
    assert response.code == 401
    error = error_of(response)
    assert "[redacted]" in error["type"] and "[redacted]" in error["code"]
    assert_hidden(answer_text(response))


@pytest.mark.parametrize("offset", range(-9, 2))
async def test_a_key_straddling_the_message_cut_is_masked_whole(node_url, upstream, offset):
    # The message is cut at 500 characters; put the key across that cut at every offset.
    prefix = "e" * (500 + offset)
    upstream.push(Behavior(status=400, error_message=prefix + OPENAI_KEY + " tail"))
    response = await post(node_url + CHAT, chat_body())
    assert response.code == 400
    assert_hidden(answer_text(response))


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
@pytest.mark.parametrize("offset", [-12, -5, -1, 0])
async def test_a_key_straddling_the_raw_body_cut_is_masked(node_url, upstream, offset):
    body = ("b" * (500 + offset) + OPENAI_KEY).encode()
    upstream.push(Behavior(status=502, raw_body=body, content_type="text/plain"))
    response = await post(node_url + CHAT, chat_body("openai/m", stream=True))
    assert response.code == 502
    assert_hidden(answer_text(response))


async def test_a_fragment_of_a_key_is_masked(node_url, upstream):
    part = OPENAI_KEY[3:14]  # eleven characters of the key, not the key itself
    upstream.push(Behavior(status=403, error_message=f"key {part} is not allowed"))
    response = await post(node_url + CHAT, chat_body())
    assert response.code == 403
    assert "[redacted]" in error_of(response)["message"]
    assert_hidden(answer_text(response))


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
async def test_upstream_headers_never_carry_a_key_back(node_url, upstream):
    upstream.push(Behavior(status=429, headers={"Retry-After": OPENAI_KEY}, error_message="slow down"))
    upstream.push(Behavior(headers={"Content-Type": f"application/json; k={OPENAI_KEY}"}))
    limited = await post(node_url + CHAT, chat_body(), {"X-Request-ID": "a"})
    assert limited.code == 429 and "Retry-After" not in limited.headers
    ok = await post(node_url + CHAT, chat_body("groq/m"))
    assert ok.code == 200 and ok.headers["Content-Type"] == "application/json"
    assert_hidden(answer_text(limited) + answer_text(ok))


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
async def test_retry_after_in_seconds_is_passed_on(node_url, upstream):
    upstream.push(Behavior(status=429, headers={"Retry-After": "7"}, error_message="slow down"))
    response = await post(node_url + CHAT, chat_body("anthropic/m"))
    assert response.code == 429 and response.headers["Retry-After"] == "7"


async def test_a_request_id_that_is_a_key_is_not_echoed(node_url, upstream):
    response = await post(node_url + CHAT, chat_body(), {"X-Request-ID": OPENAI_KEY})
    assert response.code == 200
    assert response.headers["X-Request-ID"] != OPENAI_KEY
    assert_hidden(answer_text(response))


def test_json_logs_mask_every_field(spawn_node, upstream):
    upstream.default = Behavior(status=500, error_message=f"echo {OPENAI_KEY}")
    node = spawn_node({"LOG_FORMAT": "json", "UPSTREAM_RETRIES": "0"})
    status, _ = raw_request(node.port, CHAT, ujson.dumps(chat_body()).encode(), {"X-Request-ID": OPENAI_KEY})
    assert status == 500
    assert node.wait_for_line(r'"logger": ?"mira.access"')
    node.stop()
    lines = [line for line in node.output.splitlines() if line.startswith("{")]
    assert any('"request_id"' in line for line in lines)
    for line in lines:
        json.loads(line)
    assert_hidden(node.output)


def test_a_router_refusal_never_shows_the_admin_token(spawn_node):
    with FakeRouter() as router:
        # The refusal is cut at 200 characters: the token straddles the cut.
        router.refuse = (400, "r" * 195 + f" token {ADMIN_TOKEN} rejected")
        node = spawn_node({"ROUTER_BASE_URL": router.base_url, "ADMIN_API_TOKEN": ADMIN_TOKEN, "MACHINE_IP": "10.9.8.7"},
                          ready=False)
        assert node.wait() == 1
    assert "router registration failed" in node.output
    assert_hidden(node.output, ADMIN_TOKEN)


# -- 2. log forging ---------------------------------------------------------------------------------------


def raw_request(port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
                method: str = "POST") -> tuple[int, bytes]:
    """One request on a fresh socket (Connection: close); status and whole raw answer."""
    head = f"{method} {path} HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    for name, value in (headers or {}).items():
        head += f"{name}: {value}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_outside_text_cannot_forge_or_garble_a_text_log_line(spawn_node, upstream):
    forged = "\r\n2026-01-01 00:00:00,000 INFO mira.access[1]: FORGED\x1b[2J\x85\u2028end"
    upstream.default = Behavior(status=500, error_message="boom" + forged)
    node = spawn_node({"UPSTREAM_RETRIES": "0"})
    status, _ = raw_request(node.port, CHAT, ujson.dumps(chat_body()).encode())
    assert status == 500
    assert node.wait_for_line(r"mira.access.* 500 ")
    node.stop()
    out = node.output
    for line in out.splitlines():
        assert "FORGED" not in line or not line.lstrip().startswith("2026-01-01")
    assert "\x1b" not in out and "\r" not in out and "\x85" not in out and "\u2028" not in out and "\x7f" not in out
    assert "boom\\r\\n2026-01-01" in out and "FORGED\\x1b[2J\\x85\\u2028end" in out


# -- 3. trickled bodies -------------------------------------------------------------------------------------


@pytest.mark.node_env(REQUEST_BODY_TIMEOUT="0.3")
async def test_a_body_that_does_not_arrive_in_time_is_408_and_closed(node_url, http_port, upstream):
    sock = socket.create_connection(("127.0.0.1", http_port), timeout=10)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: n\r\nContent-Length: 100\r\n\r\n{\"model\":")
        data = await asyncio.get_running_loop().run_in_executor(None, read_until_closed, sock)
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 408")
    assert b"Connection: close" in data
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert upstream.requests == []


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.node_env(MAX_CONCURRENT_REQUESTS="2", REQUEST_BODY_TIMEOUT="30")
async def test_bodies_still_arriving_do_not_take_concurrency_slots(node_url, http_port, upstream):
    body = ujson.dumps(chat_body()).encode()
    slow = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", http_port), timeout=10)
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: n\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        slow.append(sock)
    try:
        for _ in range(3):
            response = await post(node_url + CHAT, chat_body())
            assert response.code == 200
        # the trickled requests are live: once their bodies are in, they are answered too
        loop = asyncio.get_running_loop()
        for sock in slow[:2]:
            sock.sendall(body[5:])
        answers = [await loop.run_in_executor(None, read_head, sock) for sock in slow[:2]]
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    finally:
        for sock in slow:
            sock.close()


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and (chunk := sock.recv(65536)):
        data += chunk
    return data


# -- 4. upstream statuses that cannot be passed on -------------------------------------------------------

ODD_STATUSES = [
    Behavior(raw_response=b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"),
    Behavior(raw_response=b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n"),
    Behavior(status=302, headers={"Location": "http://169.254.169.254/"}, raw_body=b"moved"),
    Behavior(raw_response=b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"),
    Behavior(raw_response=b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("behavior", ODD_STATUSES, ids=["204", "304", "302", "600", "999"])
async def test_an_odd_upstream_status_is_502_invalid_response(node_url, upstream, behavior, stream):
    upstream.push(behavior)
    response = await post(node_url + CHAT, chat_body(stream=stream))
    assert response.code == 502
    assert error_of(response)["code"] == "upstream_invalid_response"
    assert "Location" not in response.headers
    assert len(upstream.requests) == 1  # not retried


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_switching_protocols_answer_then_silence_is_a_prompt_502(node_url, upstream, stream):
    # libcurl takes an unasked-for 101 as the final answer and would wait for the connection to close.
    upstream.push(Behavior(raw_response=b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", raw_then_hang=True))
    response = await post(node_url + CHAT, chat_body(stream=stream))
    assert response.code == 502  # not 504 after UPSTREAM_TIMEOUT
    assert error_of(response)["code"] == "upstream_invalid_response"
    assert "101" in error_of(response)["message"]
    assert len(upstream.requests) == 1  # not retried
    assert upstream.wait_for(lambda u: u.requests[0].closed_at is not None)  # the connection was let go


# -- 5. an endless error body on a stream -----------------------------------------------------------------


@pytest.mark.node_env(UPSTREAM_RETRIES="0")
async def test_an_endless_error_body_is_cut_at_its_cap_and_answered(node_url, upstream):
    upstream.push(Behavior(status=500, error_body_bytes=1 << 30))  # a gigabyte: never read in full
    response = await post(node_url + CHAT, chat_body(stream=True))
    assert response.code == 500
    assert error_of(response)["message"].startswith("Error from openai API: xxxx")
    assert upstream.wait_for(lambda u: u.requests[0].closed_at is not None)


# -- 6. bodies that are not JSON ----------------------------------------------------------------------------

NOT_JSON = [
    b'{"model": "openai/m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"model": "openai/m", "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}',
    b'{"model": "openai/m", "messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}',
    b'{"model": "openai/m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
    b'{"model": "openai/m", "messages": [{"role": "user", "content": "hi"}], "x": [1.5e999]}',
    b'{"model": "openai/m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    b'{"model": "openai/m", "messages": [{"role": "user", "content": "\xc0\xaf"}]}',
]


@pytest.mark.parametrize("path", [CHAT, "/v1/verify", "/v1/eval"])
@pytest.mark.parametrize("raw", NOT_JSON, ids=["nan", "inf", "-inf", "1e400", "nested", "surrogate", "overlong"])
async def test_not_json_is_400_and_never_reaches_the_upstream(node_url, upstream, raw, path):
    if path == "/v1/eval":
        raw = raw.replace(b'"messages"', b'"csv": "q\\nhi", "models": ["openai/m"], "m"')
    response = await post(node_url + path, raw)
    assert response.code == 400, response.body
    assert "not valid" in error_of(response)["message"]
    assert upstream.requests == []


async def test_big_integers_and_escaped_surrogates_still_pass(node_url, upstream):
    raw = b'{"model": "openai/m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "seed": 1' + b"0" * 30 + b"}"
    response = await post(node_url + CHAT, raw)
    assert response.code == 200
    assert upstream.requests[0].json["seed"] == 10**30


# -- 7. custom provider keys that cannot be a header --------------------------------------------------------

BAD_KEYS = ["sk-a\r\nX-Injected: 1", "sk-\nb", "sk-\tc", "sk-\x7fd", "sk-\x85e", "ключ-12345", "sk-\x00"]


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")
@pytest.mark.parametrize("key", BAD_KEYS, ids=["crlf", "lf", "tab", "del", "c1", "cyrillic", "nul"])
@pytest.mark.parametrize("path", [CHAT, "/v1/verify", "/v1/eval"])
async def test_a_custom_key_that_cannot_be_a_header_is_400_naming_it(node_url, upstream, key, path):
    provider = {"base_url": upstream.base_url, "api_key": key}
    body = {"model": "m", "messages": USER, "model_provider": provider}
    if path == "/v1/eval":
        body = {"csv": "q\nhi\nho", "models": ["m"], "model_provider": provider}
    response = await post(node_url + path, body)
    assert response.code == 400
    assert error_of(response)["param"] == "model_provider.api_key"
    assert upstream.requests == []


@pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")
async def test_a_provider_name_with_control_characters_is_400(node_url, upstream):
    provider = {"base_url": upstream.base_url, "provider_name": "evil\nINFO forged"}
    response = await post(node_url + CHAT, chat_body("m", model_provider=provider))
    assert response.code == 400
    assert error_of(response)["param"] == "model_provider.provider_name"


# -- 8. streams cut by the drain ---------------------------------------------------------------------------------


def test_a_stream_cut_by_the_drain_ends_with_a_shutting_down_event(spawn_node, upstream):
    upstream.default = Behavior(chunks=5, hang_after_chunks=1)
    node = spawn_node({"SHUTDOWN_TIMEOUT": "0.3"})
    body = ujson.dumps(chat_body(stream=True)).encode()
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=20)
    sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: n\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 200")
    node.signal(signal.SIGTERM)
    rest = read_until_closed(sock)
    sock.close()
    assert node.wait() == 0
    raw = head.split(b"\r\n\r\n", 1)[1] + rest
    assert raw.endswith(b"0\r\n\r\n")  # a complete chunked body: nothing was cut mid-frame
    events = sse_events(dechunk(raw))
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "node_shutting_down"
    assert upstream.wait_for(lambda u: u.requests[0].closed_at is not None)


def test_a_json_request_cut_by_the_drain_is_503(spawn_node, upstream):
    upstream.default = Behavior(hang=True)
    node = spawn_node({"SHUTDOWN_TIMEOUT": "0.3"})
    body = ujson.dumps(chat_body()).encode()
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=20)
    sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: n\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    assert upstream.wait_for(lambda u: len(u.requests) == 1)
    node.signal(signal.SIGTERM)
    data = read_until_closed(sock)
    sock.close()
    assert node.wait() == 0
    assert data.startswith(b"HTTP/1.1 503")
    assert b'"node_shutting_down"' in data


# -- 9. hostile bodies ------------------------------------------------------------------------------------------------


@pytest.mark.node_env(MAX_BODY_SIZE="4000000")
@pytest.mark.parametrize(
    "filler", [b"[],", b"{},", b'"ab",', b"0,", b"[[[[[[[[]]]]]]]],"], ids=["lists", "dicts", "strs", "ints", "nest"]
)
async def test_a_body_of_tiny_values_is_refused_before_it_is_parsed(node_url, upstream, filler):
    head = b'{"model": "openai/m", "messages": [{"role": "user", "content": "hi"}], "x": ['
    raw = head + filler * (900_000 // len(filler)) + b"0]}"
    response = await post(node_url + CHAT, raw)
    assert response.code == 400
    assert error_of(response)["code"] == "body_too_complex"
    assert upstream.requests == []


async def test_deep_nesting_is_refused(node_url, upstream):
    raw = b'{"model": "openai/m", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = await post(node_url + CHAT, raw)
    assert response.code == 400
    assert "nested too deeply" in error_of(response)["message"]


@pytest.mark.node_env(MAX_BODY_SIZE="4000000")
async def test_large_bodies_of_real_content_pass(node_url, upstream):
    tokens = list(range(10_000, 310_000))  # a prompt of token ids, as /v1/completions takes
    conversation = [{"role": "user", "content": f"Message {i}, with some words, and commas, in it."} for i in range(20_000)]
    picture = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "QUJD" * 500_000}}
    image = {"role": "user", "content": [picture]}
    for body in ({"x": tokens}, {"messages": conversation}, {"messages": [image]}):
        payload = {"model": "openai/m", "messages": USER, **body}
        response = await post(node_url + CHAT, payload)
        assert response.code == 200, response.body[:300]


# -- 10. the open relay ----------------------------------------------------------------------------------------------

FORBIDDEN_HOSTS = [
    "127.0.0.1", "127.8.9.10", "localhost", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.251", "[::1]", "[fc00::1]", "[fe80::1]", "[::ffff:127.0.0.1]", "[::]",
]


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
async def test_a_custom_provider_at_an_internal_address_is_refused(node_url, upstream, host):
    response = await post(node_url + CHAT, chat_body("m", model_provider={"base_url": f"http://{host}:{upstream.port}/v1"}))
    assert response.code == 400
    error = error_of(response)
    assert error["code"] == "custom_provider_forbidden"
    assert error["param"] == "model_provider.base_url"
    assert upstream.requests == []


@pytest.mark.parametrize("path", ["/v1/verify", "/v1/eval"])
async def test_verify_and_eval_refuse_an_internal_custom_provider_before_any_call(node_url, upstream, path):
    provider = {"base_url": upstream.base_url}
    body = {"messages": USER, "model": "m", "model_provider": provider}
    if path == "/v1/eval":
        body = {"csv": "q\nhi\nho", "models": ["m", "n"], "model_provider": provider}
    response = await post(node_url + path, body)
    assert response.code == 400
    assert error_of(response)["code"] == "custom_provider_forbidden"
    assert upstream.requests == []


@pytest.mark.parametrize("allow", [
    pytest.param("false"),
    pytest.param("true", marks=pytest.mark.node_env(CUSTOM_PROVIDER_ALLOW_PRIVATE="true")),
])
@pytest.mark.parametrize("suffix", ["/v1?", "/v1#", "/v1?x=1", "/v1#frag", "@user"], ids=["q", "hash", "query", "frag", "user"])
async def test_query_fragment_and_user_info_are_always_refused(node_url, upstream, suffix, allow):
    url = upstream.base_url + suffix if suffix != "@user" else upstream.base_url.replace("http://", "http://user:pw@")
    response = await post(node_url + CHAT, chat_body("m", model_provider={"base_url": url}))
    assert response.code == 400
    assert error_of(response)["code"] == "custom_provider_forbidden"
    assert upstream.requests == []


_early_lookups: list[str] = []


async def _public(host: str) -> list[str]:
    """A rebinding DNS server's first answer: a public address."""
    _early_lookups.append(host)
    return ["93.184.216.34"]


@pytest.mark.parametrize("node_options", [{"resolve": _public}])
async def test_dns_rebinding_is_caught_where_the_connection_is_made(node_url, upstream, node_options):
    # The early look-up sees a public address; libcurl's own look-up of the same name then gives
    # loopback, as a rebinding DNS server would answer the second time.
    _early_lookups.clear()
    response = await post(node_url + CHAT, chat_body("m", model_provider={"base_url": f"http://localhost:{upstream.port}/v1"}))
    assert response.code == 400
    assert error_of(response)["code"] == "custom_provider_forbidden"
    assert _early_lookups == ["localhost"]  # the early check let it through: the connection's own check refused it
    assert upstream.requests == []


async def test_configured_providers_are_never_filtered(node_url, upstream):
    # every configured provider of the suite is the loopback mock; mira is a local Ollama by default
    response = await post(node_url + CHAT, chat_body("mira/llama3.1"))
    assert response.code == 200

