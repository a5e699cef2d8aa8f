"""``GET /status`` in a real browser (Debian's Chromium driven by Playwright), and ``GET /status.json``.

The page is loaded from a node (in process, or ``python server.py`` with WORKERS=2) into headless Chromium,
started from the system's executable (``executable_path``: Playwright's own browser download is never used).
``require_chromium()`` skips a browser test when Chromium or Playwright is missing, and fails it under CI=true.
Every wait is on an event or a condition (Playwright's ``expect`` and ``wait_for_function`` poll), never a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tornado.web

from config import PROVIDERS
from tests.conftest import SECRETS
from tests.helpers import chat_body, error_of, get, post
from tests.loopback_server import LoopbackServer
from tests.mock_upstream import Behavior
from tests.redis_server import RedisServer

INSTALL_HINT = "install Debian's chromium (apt-get install chromium) and requirements-dev.txt (Playwright)"
SERVICE_KEY = "svc-status-SECRET-7777"
POOL = ("sk-pool-one-SECRET-AAAA", "sk-pool-two-SECRET-BBBB")
REDIS_PASSWORD = "redis-SECRET-9999"
LIMITS = {"openai": {"rpm": 100, "tpm": 100000, "tokens_per_day": 1000000}}
WAIT_MS = 10_000  # the longest any one browser wait may take
BROWSER_TEST = pytest.mark.gen_test(timeout=60)


def require_chromium() -> str:
    """The system Chromium's path; without it (or without Playwright): skip, but under CI=true fail."""
    path = shutil.which("chromium")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = f"Chromium or Playwright is missing: {INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; under CI=true the browser tests must run")
        pytest.skip(message)
    return path


@dataclass
class Tab:
    """A page in headless Chromium and what its console and network saw."""

    page: Any
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    requests: list[Any] = field(default_factory=list)

    def unexpected_errors(self, allowed: Callable[[str], bool] = lambda _: False) -> list[str]:
        return [error for error in self.errors if not allowed(error)]


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium from the system's executable (``--no-sandbox`` only as root, where it cannot sandbox)."""
    executable = require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = await playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def open_tab(context: Any) -> Tab:
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    tab = Tab(page)
    page.on("console", lambda message: tab.errors.append(f"{message.text} ({message.location.get('url')})")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: tab.errors.append(f"uncaught: {error}"))
    page.on("request", lambda request: tab.requests.append(request))
    return tab


def the_401_of_status_json(error: str) -> bool:
    """Chromium's own console line for an answer of 401 (not the page's doing): the key prompt's cause."""
    return "status of 401" in error and "/status.json" in error


async def wait_state(tab: Tab, state: str) -> None:
    await tab.page.wait_for_function("state => document.body.dataset.state === state", arg=state)


async def cell_number(tab: Tab, provider: str, column: str) -> int:
    text = await tab.page.locator(f'tr[data-provider="{provider}"] td.{column}').inner_text()
    return int(text.replace(",", ""))


async def wait_number(tab: Tab, selector: str, predicate: str, value: int) -> None:
    """Wait until the number shown by ``selector`` compares (``predicate``: ``>``, ``==``) with ``value``."""
    await tab.page.wait_for_function(
        f"""([selector, value]) => {{
            const node = document.querySelector(selector);
            return node !== null && Number(node.textContent.replace(/,/g, "")) {predicate} value;
        }}""",
        arg=[selector, value],
    )


class HeldStream:
    """A streamed chat request held open by the mock upstream (``hang_after_chunks``), on its own connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, headers: dict[str, str] | None = None) -> HeldStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps(chat_body(stream=True)).encode()
        lines = [f"{k}: {v}" for k, v in {"Content-Type": "application/json", **(headers or {})}.items()]
        head = "\r\n".join(["POST /v1/chat/completions HTTP/1.1", "Host: node", *lines, f"Content-Length: {len(body)}"])
        writer.write(head.encode() + b"\r\n\r\n" + body)
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 10)
        assert b" 200 " in status, status
        await asyncio.wait_for(reader.readuntil(b"data: "), 10)  # its first event: the stream is open
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()


# -- the page, in Chromium ----------------------------------------------------------------------------------


@BROWSER_TEST
async def test_the_page_shows_every_provider_without_a_console_error(node_url, upstream):
    async with chromium() as browser:
        context = await browser.new_context()
        tab = await open_tab(context)
        await tab.page.goto(node_url + "/status")
        await wait_state(tab, "ok")
        page = tab.page
        assert await page.locator("#login").is_hidden()  # no key asked for: none is set
        assert await page.locator("#version").inner_text() == "9.9.9-test"
        assert await page.locator("#mode").inner_text() == "standalone"
        assert await page.locator("#router").inner_text() == "standalone"
        assert await page.locator("#redis").inner_text() == "off"
        rows = page.locator("#providers tr")
        assert await rows.count() >= len(PROVIDERS)
        for name in PROVIDERS:
            row = page.locator(f'tr[data-provider="{name}"]')
            assert await row.locator("td.configured").inner_text() == "yes"
            assert await row.locator("td.circuit").inner_text() == "up"
        assert await page.locator("#usd-column").count() == 0  # no cost in the data: no USD column
        # Two refreshes later, still nothing wrong, and nothing was fetched from anywhere but the node.
        async with page.expect_request(lambda r: r.url.endswith("/status.json")):
            pass
        async with page.expect_request(lambda r: r.url.endswith("/status.json")):
            pass
        assert tab.unexpected_errors() == []
        assert {r.url.split("/")[2] for r in tab.requests if not r.url.startswith("data:")} == {node_url.split("/")[2]}


@BROWSER_TEST
@pytest.mark.node_env(SERVICE_API_KEY=f"svc-other-key,{SERVICE_KEY}")
async def test_with_a_service_key_the_page_asks_for_it_and_keeps_it_for_the_tab(node_url, upstream):
    async with chromium() as browser:
        context = await browser.new_context()
        tab = await open_tab(context)
        page = tab.page
        await page.goto(node_url + "/status")
        await wait_state(tab, "key")
        assert await page.locator("#key").get_attribute("type") == "password"
        assert await page.locator("#key").is_visible() and await page.locator("#figures").is_hidden()
        # A wrong key is refused and forgotten.
        await page.fill("#key", "not-the-key")
        await page.click("#login button")
        await page.wait_for_function("() => document.getElementById('problem').textContent.includes('refused')")
        await wait_state(tab, "key")
        assert await page.evaluate("sessionStorage.getItem('mira.status.key')") is None
        # The right one shows the figures, and goes with every refresh as a bearer token.
        await page.fill("#key", SERVICE_KEY)
        await page.click("#login button")
        await wait_state(tab, "ok")
        assert await page.locator("#login").is_hidden() and await page.locator("#figures").is_visible()
        assert await page.locator('tr[data-provider="openai"] td.configured').inner_text() == "yes"
        assert await page.evaluate("sessionStorage.getItem('mira.status.key')") == SERVICE_KEY
        async with page.expect_request(lambda r: r.url.endswith("/status.json")) as refresh:
            pass
        assert (await refresh.value).headers.get("authorization") == f"Bearer {SERVICE_KEY}"
        # Kept for the tab: a reload does not ask again...
        await page.reload()
        await wait_state(tab, "ok")
        # ... another tab does (sessionStorage is per tab), and nothing is kept beyond it.
        other = await open_tab(context)
        await other.page.goto(node_url + "/status")
        await wait_state(other, "key")
        assert await other.page.evaluate("localStorage.length") == 0
        assert tab.unexpected_errors(the_401_of_status_json) == []
        assert other.unexpected_errors(the_401_of_status_json) == []


@BROWSER_TEST
@pytest.mark.node_env(UPSTREAM_TIMEOUT="60", OPENAI_API_KEY=",".join(POOL))
async def test_the_figures_follow_requests_streams_and_cooling_keys(node_url, upstream, http_port):
    async with chromium() as browser:
        tab = await open_tab(await browser.new_context())
        page = tab.page
        await page.goto(node_url + "/status")
        await wait_state(tab, "ok")
        tokens = await cell_number(tab, "openai", "tokens")
        streams = int(await page.locator("#streams").inner_text())
        # A chat answer's tokens appear in "tokens today".
        response = await post(node_url + "/v1/chat/completions", chat_body())
        assert response.code == 200
        used = json.loads(response.body)["usage"]["total_tokens"]
        assert used > 0
        await wait_number(tab, 'tr[data-provider="openai"] td.tokens', "==", tokens + used)
        # A stream held open is a stream (and a request) in flight until it ends.
        upstream.default = Behavior(chunks=5, hang_after_chunks=1)
        held = await HeldStream.open(http_port)
        await wait_number(tab, "#streams", "==", streams + 1)
        assert int(await page.locator("#requests").inner_text()) >= 1
        held.close()
        await wait_number(tab, "#streams", "==", streams)
        # A 429 with Retry-After on the pool's first key rests it: the page counts its seconds down.
        upstream.default = Behavior()
        upstream.set_key_behavior(POOL[0][-4:], Behavior(status=429, headers={"Retry-After": "120"}))
        for _ in range(2):  # the pool is taken in turn: one of two calls starts on the first key
            assert (await post(node_url + "/v1/chat/completions", chat_body())).code == 200
        keys = page.locator('tr[data-provider="openai"] td.keys')
        await page.wait_for_function(
            "cell => /^#1 cooling 1[12][0-9]s, #2 ok$/.test(document.querySelector(cell).textContent)",
            arg='tr[data-provider="openai"] td.keys',
        )
        assert "cooling" in (await keys.get_attribute("class") or "")
        assert tab.unexpected_errors() == []


@BROWSER_TEST
async def test_usd_and_a_circuit_that_is_down_show_when_the_data_has_them(node_url, upstream):
    async def with_cost(route: Any) -> None:
        """The node's answer, with what a node that prices its calls (PRICES_FILE) and has a failing provider adds."""
        answer = await route.fetch()
        data = await answer.json()
        for provider in data["providers"]:
            provider["usd_today"] = 0.5 if provider["name"] == "openai" else None
        openai = data["providers"][0]
        openai["limits"]["usd_per_day"] = {"limit": 2, "used": 0.5}
        openai["circuit"] = {"state": "down", "probe_in": 7}
        await route.fulfill(response=answer, json=data)

    async with chromium() as browser:
        tab = await open_tab(await browser.new_context())
        page = tab.page
        await page.route("**/status.json", with_cost)
        await page.goto(node_url + "/status")
        await wait_state(tab, "ok")
        row = page.locator('tr[data-provider="openai"]')
        assert await page.locator("#usd-column").inner_text() == "USD today"
        assert await row.locator("td.usd").inner_text() == "$0.5000"
        assert "USD/day $0.5000 / $2.0000" in await row.locator("td.limits").inner_text()
        assert await row.locator("td.circuit").inner_text() == "down, probe in 7s"
        assert await page.locator('tr[data-provider="groq"] td.usd').inner_text() == "-"
        assert tab.unexpected_errors() == []


# -- /status.json ---------------------------------------------------------------------------------------------


@pytest.fixture
def limits_file() -> Iterator[Path]:
    """PROVIDER_LIMITS_FILE with LIMITS (ask for it before the node's fixtures)."""
    handle, name = tempfile.mkstemp(prefix="mira-status-limits-", suffix=".json")
    os.close(handle)
    path = Path(name)
    path.write_text(json.dumps(LIMITS))
    yield path
    path.unlink()


@pytest.fixture
def node_env(node_env: dict[str, str], request: pytest.FixtureRequest) -> dict[str, str]:
    """The limits file, when the test asked for ``limits_file``."""
    if "limits_file" in request.fixturenames:
        node_env = {**node_env, "PROVIDER_LIMITS_FILE": str(request.getfixturevalue("limits_file"))}
    return node_env


def assert_no_secret(body: bytes, *more: str) -> None:
    text = body.decode()
    for secret in (*SECRETS.values(), *POOL, SERVICE_KEY, *more):
        assert secret not in text, secret


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(SERVICE_API_KEY=SERVICE_KEY, OPENAI_API_KEY=",".join(POOL))
async def test_status_json_needs_the_service_key_and_holds_no_secret(limits_file, node_url, upstream):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": SERVICE_KEY}):
        answer = await get(node_url + "/status.json", headers=headers)
        assert answer.code == 401, headers
        assert error_of(answer)["code"] == "invalid_api_key"
    page = await get(node_url + "/status")  # the page itself is open
    assert page.code == 200 and page.headers["Content-Type"].startswith("text/html")
    auth = {"Authorization": f"Bearer {SERVICE_KEY}"}
    assert (await post(node_url + "/v1/chat/completions", chat_body(), headers=auth)).code == 200
    answer = await get(node_url + "/status.json", headers=auth)
    assert answer.code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Cache-Control"] == "no-store"
    assert_no_secret(answer.body)
    data = json.loads(answer.body)
    assert data["version"] == "9.9.9-test" and data["mode"] == "standalone" and data["redis"] == "off"
    assert data["state"] == "worker" and data["workers"] == 1
    assert data["in_flight"]["requests"] == 0  # the status request itself is not counted
    openai = next(p for p in data["providers"] if p["name"] == "openai")
    assert openai["keys"] == [{"position": 1, "cooling": 0}, {"position": 2, "cooling": 0}]
    assert openai["limits"]["rpm"] == {"limit": 100, "used": 1}
    assert openai["limits"]["tpm"]["used"] == openai["limits"]["tokens_per_day"]["used"] > 0
    assert openai["tokens_today"] >= openai["limits"]["tpm"]["used"]
    assert "usd_today" not in openai


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(ALLOWED_CLIENTS="203.0.113.0/24", SERVICE_API_KEY=SERVICE_KEY)
async def test_status_json_is_403_from_an_address_not_allowed_but_the_page_is_open(node_url, upstream):
    answer = await get(node_url + "/status.json", headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    assert answer.code == 403
    assert error_of(answer)["code"] == "client_forbidden"
    assert_no_secret(answer.body)
    page = await get(node_url + "/status")
    assert page.code == 200


@pytest.mark.gen_test(timeout=20)
async def test_the_page_is_one_self_contained_file_without_data(node_url, upstream):
    answer = await get(node_url + "/status")
    html = answer.body.decode()
    assert answer.code == 200 and answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert len(html.splitlines()) < 400
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html), "an external resource"
    assert "<link rel=\"stylesheet\"" not in html and "@import" not in html and "url(" not in html
    assert "9.9.9-test" not in html and "openai" not in html  # the data comes from /status.json only
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy


# -- every worker ---------------------------------------------------------------------------------------------


def fetch_json(url: str, headers: dict[str, str] | None = None, body: Any = None) -> Any:
    request = urllib.request.Request(url, headers={"Content-Type": "application/json", **(headers or {})},
                                     data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as answer:  # a fresh connection each time: any worker
        return json.loads(answer.read())


def started(node: Any, workers: int = 2) -> Any:
    """The node once each of its workers listens (the start-up line comes from the parent, before they do)."""
    for index in range(workers):
        assert node.wait_for_line(rf"worker {index} serving \(pid \d+\)", 15) is not None, node.output
    return node


def poll(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """``check()``'s first true value; its figures come from other processes, so it is asked again until then."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value


@pytest.mark.gen_test(timeout=60)
async def test_with_two_workers_the_figures_cover_both(spawn_node, upstream, io_loop):
    node = await io_loop.run_in_executor(None, lambda: started(spawn_node({"WORKERS": "2", "UPSTREAM_TIMEOUT": "60"})))
    status_url = node.url + "/status.json"

    def status() -> Any:
        return fetch_json(status_url)

    # Tokens: chat answers until both workers have served some (the access line names the worker of each
    # request id); every answer's usage is in "tokens today".
    used, served_by = 0, set()
    for _ in range(40):
        response = await post(node.url + "/v1/chat/completions", chat_body())
        used += json.loads(response.body)["usage"]["total_tokens"]
        line = await node.wait_for_line_async(rf"mira\.access\[(\d+)\]: {response.headers['X-Request-ID']} ", 10)
        assert line is not None
        served_by.add(line.group(1))
        if len(served_by) == 2:
            break
    assert len(served_by) == 2

    def tokens_today() -> int:
        return next(p["tokens_today"] for p in status()["providers"] if p["name"] == "openai")

    # (another worker applies its counts at the end of its loop turn, which may come after its answer arrived)
    assert await io_loop.run_in_executor(None, lambda: poll(lambda: tokens_today() == used))
    assert await io_loop.run_in_executor(None, tokens_today) == used
    # Streams held open, each on its own connection, until both workers hold some.
    upstream.default = Behavior(chunks=5, hang_after_chunks=1)
    held: list[HeldStream] = []
    try:
        for _ in range(40):
            held.append(await HeldStream.open(node.port))
            data = await io_loop.run_in_executor(None, status)
            if sum(1 for w in data["in_flight"]["by_worker"] if w["streams"]) == 2:
                break
        assert len({w["pid"] for w in data["in_flight"]["by_worker"] if w["streams"]}) == 2, data
        assert await io_loop.run_in_executor(None, lambda: poll(lambda: status()["in_flight"]["streams"] == len(held)))
        # Whichever worker answers, the figures are the node's: every held stream, in flight.
        answered_by = set()
        for _ in range(40):
            data = await io_loop.run_in_executor(None, status)
            answered_by.add(data["pid"])
            assert data["in_flight"]["streams"] == len(held), data
            assert data["in_flight"]["requests"] == len(held), data
            assert sum(w["streams"] for w in data["in_flight"]["by_worker"]) == len(held)
            if len(answered_by) == 2:
                break
        assert len(answered_by) == 2
    finally:
        for stream in held:
            stream.close()
    done = await io_loop.run_in_executor(None, lambda: poll(lambda: status()["in_flight"]["streams"] == 0))
    assert done


@pytest.mark.gen_test(timeout=60)
async def test_with_redis_the_limits_and_cooling_shown_are_the_shared_ones(spawn_node, upstream, io_loop, limits_file):
    redis = await io_loop.run_in_executor(None, lambda: RedisServer.start(password=REDIS_PASSWORD))
    try:
        env = {"WORKERS": "2", "REDIS_URL": redis.url, "PROVIDER_LIMITS_FILE": str(limits_file),
               "OPENAI_API_KEY": ",".join(POOL)}
        node = await io_loop.run_in_executor(None, lambda: started(spawn_node(env)))
        upstream.set_key_behavior(POOL[0][-4:], Behavior(status=429, headers={"Retry-After": "200"}))
        for _ in range(6):
            await io_loop.run_in_executor(None, lambda: fetch_json(node.url + "/v1/chat/completions", body=chat_body()))
        calls = len(upstream.requests)  # the 429s count as calls too: each took the window's room

        def shared_figures() -> Any:
            data = fetch_json(node.url + "/status.json")
            return data if data["state"] == "shared" else None

        for _ in range(10):  # every worker that answers shows the same, shared figures
            data = await io_loop.run_in_executor(None, lambda: poll(shared_figures))
            assert data and data["redis"] == "up"
            openai = next(p for p in data["providers"] if p["name"] == "openai")
            assert openai["limits"]["rpm"]["used"] == calls, (openai, calls)
            assert 190 <= openai["keys"][0]["cooling"] <= 200 and openai["keys"][1]["cooling"] == 0
        assert_no_secret(json.dumps(data).encode(), REDIS_PASSWORD)
    finally:
        redis.stop()


# -- a page on another origin calling the node --------------------------------------------------------------

SDK_HEADERS = {  # what the OpenAI JavaScript SDK sends from a browser (dangerouslyAllowBrowser)
    "Content-Type": "application/json",
    "Accept": "application/json",
    "Authorization": f"Bearer {SERVICE_KEY}",
    "X-Stainless-Lang": "js",
    "X-Stainless-Package-Version": "4.104.0",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "browser:chrome",
    "X-Stainless-Runtime-Version": "156.0.0",
    "X-Stainless-Retry-Count": "0",
    "X-Stainless-Timeout": "600",
}

CALLER_PAGE = """<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body><script>
const node = new URLSearchParams(location.search).get("node");
fetch(node + "/v1/chat/completions", {method: "POST", headers: %s, body: JSON.stringify(%s)})
  .then(async (answer) => { window.result = {status: answer.status, body: await answer.json()}; })
  .catch((error) => { window.result = {status: 0, error: String(error)}; });
</script></body></html>"""


class CallerSite(LoopbackServer):
    """Another origin (another port): serves one page whose script calls the node from the browser."""

    thread_name = "caller-site"

    def make_app(self) -> tornado.web.Application:
        page = CALLER_PAGE % (json.dumps(SDK_HEADERS), json.dumps(chat_body()))

        class Page(tornado.web.RequestHandler):
            def get(self) -> None:
                self.set_header("Content-Type", "text/html; charset=utf-8")
                self.finish(page)

        return tornado.web.Application([(r"/", Page)])


@BROWSER_TEST
@pytest.mark.node_env(SERVICE_API_KEY=SERVICE_KEY)
async def test_a_page_on_another_origin_calls_chat_with_the_openai_sdk_headers(node_url, upstream, caplog):
    caplog.set_level(logging.INFO, logger="mira.access")
    with CallerSite() as site:
        async with chromium() as browser:
            tab = await open_tab(await browser.new_context())
            await tab.page.goto(f"{site.base_url}/?node={node_url}")
            await tab.page.wait_for_function("() => window.result !== undefined")
            result = await tab.page.evaluate("window.result")
    assert result["status"] == 200, result
    assert result["body"]["choices"][0]["message"]["content"], result
    assert tab.unexpected_errors() == []
    lines = [r.getMessage() for r in caplog.records if r.name == "mira.access"]
    assert any(" OPTIONS /v1/chat/completions 204 " in line for line in lines), lines  # the browser asked first


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(MAX_CONCURRENT_REQUESTS="1", UPSTREAM_TIMEOUT="60")
async def test_status_json_answers_at_the_concurrency_limit_and_is_not_in_flight_itself(node_url, upstream, http_port):
    upstream.default = Behavior(chunks=5, hang_after_chunks=1)
    held = await HeldStream.open(http_port)
    try:
        assert (await get(node_url + "/v1/models")).code == 503  # the node is full...
        answer = await get(node_url + "/status.json")  # ... and still shows why
        assert answer.code == 200
        assert json.loads(answer.body)["in_flight"]["requests"] == 1
    finally:
        held.close()


@pytest.mark.gen_test(timeout=30)
@pytest.mark.node_env(UPSTREAM_TIMEOUT="60", OPENAI_API_KEY=",".join(POOL))
async def test_computing_the_figures_takes_well_under_a_millisecond_of_cpu(limits_file, node_url, upstream, http_port, ctx):
    from utils.status import status

    upstream.default = Behavior(chunks=5, hang_after_chunks=1)
    held = [await HeldStream.open(http_port) for _ in range(20)]
    try:
        data = await status(ctx)
        assert data["in_flight"]["streams"] >= 20  # nothing walks them: the cost does not grow with their number
        calls = 200
        started = time.process_time()
        for _ in range(calls):
            await status(ctx)
        assert (time.process_time() - started) / calls < 0.001
    finally:
        for stream in held:
            stream.close()
