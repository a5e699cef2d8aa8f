"""EVENT_LOOP (issue 34): the node's event loop, and the delays it schedules on it.

A node runs on uvloop by default and on asyncio's standard loop with EVENT_LOOP=asyncio; where uvloop cannot be
imported it runs on the standard loop and says so once. The loop is named in the start-up line, in each
worker's "serving" line and in ``mira_build_info``; the in-process tests run on the default loop too
(tests/conftest.py installs it as server.py does).

uvloop refuses a delay that is not a number (``call_later(nan)`` raises ValueError where the standard loop runs
the callback at once), so no delay may be NaN: every number of seconds a setting gives is finite and bounded
(MAX_SECONDS), and an upstream's ``Retry-After`` is read into a finite number or ignored (tests/test_retry_after.py
drives "nan", "inf" and "1e400" through the node, on this loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import sys
import urllib.request
from pathlib import Path

import pycurl
import pytest

import config
from config import MAX_SECONDS, SETTINGS, ConfigError, load_settings
from tests.conftest import NodeProcess
from tests.helpers import chat_body, get, post
from tests.mock_upstream import Behavior
from tests.test_check_config import check_config
from utils import eventloop
from utils.upstream.policy import REGISTER_ATTEMPTS, Policy, doubling
from utils.upstream.transport import UpstreamCall

# Every setting that is a number of seconds (TRAFFIC_WEIGHT, a float too, is unset by default).
SECONDS = [row for row in SETTINGS if isinstance(row.default, float)]
NOT_FINITE = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e400"]


def metrics_of(node: NodeProcess) -> str:
    with urllib.request.urlopen(node.url + "/metrics", timeout=10) as response:
        return response.read().decode()


def build_info_loops(text: str) -> set[str]:
    """The ``event_loop`` labels of every ``mira_build_info`` series."""
    return set(re.findall(r'^mira_build_info\{[^}]*event_loop="([^"]+)"', text, re.M))


@pytest.fixture
def without_uvloop(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import uvloop`` fails: a package of that name, first on the path, that raises."""
    hidden = tmp_path / "hide" / "uvloop"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('raise ImportError("uvloop is hidden by the test")\n')
    return {"PYTHONPATH": str(hidden.parent)}


# -- the loop -----------------------------------------------------------------------------------------------------------


def test_the_default_is_uvloop_and_asyncio_is_the_other_choice() -> None:
    row = config.SETTING_OF["EVENT_LOOP"]
    assert row.default == "uvloop" and eventloop.EVENT_LOOPS == ("uvloop", "asyncio")
    assert row.read("ASYNCIO") == "asyncio" and row.read(" uvloop ") == "uvloop"
    with pytest.raises(ValueError, match="must be one of uvloop, asyncio"):
        row.read("trio")


def test_choose_falls_back_to_the_standard_loop_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    assert eventloop.choose("uvloop") == ("uvloop", "")
    assert eventloop.choose("asyncio") == ("asyncio", "")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop: ImportError
    loop, warning = eventloop.choose("uvloop")
    assert loop == "asyncio"
    assert warning.startswith("EVENT_LOOP=uvloop, but uvloop cannot be imported") and "asyncio" in warning
    assert eventloop.choose("asyncio") == ("asyncio", "")  # nothing to warn about when it is not wanted


def new_loop_name() -> str:
    """The name of the loop a new event loop is (made and closed)."""
    loop = asyncio.new_event_loop()
    try:
        return eventloop.name_of(loop)
    finally:
        loop.close()


def test_install_decides_the_loop_every_later_loop_is(event_loop_name: str) -> None:
    # the policy object itself comes back after: the mock upstream's thread set its loop in that one
    policy = asyncio.get_event_loop_policy()
    try:
        for name in eventloop.EVENT_LOOPS:
            eventloop.install(name)
            assert new_loop_name() == name
    finally:
        asyncio.set_event_loop_policy(policy)
    assert new_loop_name() == event_loop_name


@pytest.mark.gen_test
async def test_the_in_process_node_runs_on_the_default_loop(io_loop, node_url, event_loop_name) -> None:
    assert eventloop.name_of(io_loop.asyncio_loop) == eventloop.name_of(asyncio.get_running_loop()) == event_loop_name
    response = await get(node_url + "/metrics")
    assert build_info_loops(response.body.decode()) == {event_loop_name}


@pytest.mark.parametrize(("env", "loop"), [({}, "uvloop"), ({"EVENT_LOOP": "asyncio"}, "asyncio")], ids=["default", "asyncio"])
def test_a_node_names_its_loop_in_the_start_up_line_and_build_info(spawn_node, env, loop) -> None:
    node = spawn_node(env)
    line = node.wait_for_line("listening on").string
    assert f"(standalone mode, {loop} event loop)" in line
    assert build_info_loops(metrics_of(node)) == {loop}
    assert "cannot be imported" not in node.output


@pytest.mark.parametrize(("env", "loop"), [({}, "uvloop"), ({"EVENT_LOOP": "asyncio"}, "asyncio")], ids=["default", "asyncio"])
def test_every_forked_worker_runs_on_the_chosen_loop(spawn_node, env, loop) -> None:
    node = spawn_node({**env, "WORKERS": "2"})
    assert f"{loop} event loop, 2 workers)" in node.wait_for_line("listening on").string
    for index in (0, 1):
        assert node.wait_for_line(rf"worker {index} serving \(pid \d+\) on {loop}\b", timeout=15), node.output
    assert build_info_loops(metrics_of(node)) == {loop}  # every worker's series (multi-process mode) says the same


def test_without_uvloop_a_node_runs_on_the_standard_loop_and_warns_once(spawn_node, without_uvloop) -> None:
    node = spawn_node(without_uvloop)
    assert "(standalone mode, asyncio event loop)" in node.wait_for_line("listening on").string
    assert build_info_loops(metrics_of(node)) == {"asyncio"}
    assert node.output.count("uvloop cannot be imported") == 1, node.output
    quiet = spawn_node({**without_uvloop, "EVENT_LOOP": "asyncio"})
    quiet.wait_for_line("listening on")
    assert "cannot be imported" not in quiet.output


def test_check_config_shows_the_loop_and_warns_when_uvloop_is_missing(without_uvloop) -> None:
    run = check_config()
    assert run.code == 0 and run.settings()["EVENT_LOOP"] == ("uvloop", "default") and not run.warnings()
    run = check_config({"EVENT_LOOP": "asyncio"})
    assert run.settings()["EVENT_LOOP"] == ("asyncio", "environment")
    run = check_config(without_uvloop)
    assert run.code == 0, run.output
    (warning,) = run.warnings()
    assert warning.startswith("EVENT_LOOP=uvloop, but uvloop cannot be imported"), warning
    run = check_config({"EVENT_LOOP": "libev"})
    assert run.code == 2 and "EVENT_LOOP='libev': must be one of uvloop, asyncio" in run.err


# -- no delay is NaN or infinite ----------------------------------------------------------------------------------------


def test_uvloop_refuses_a_nan_delay_where_the_standard_loop_does_not() -> None:
    """Why the guards below matter: the fact of the stack (STACK-NOTES) the node has to live with."""
    import uvloop

    for make, refuses in ((uvloop.new_event_loop, True), (asyncio.SelectorEventLoop, False)):
        loop = make()
        try:
            if refuses:
                with pytest.raises(ValueError):
                    loop.call_later(math.nan, lambda: None)
            else:
                loop.call_later(math.nan, lambda: None).cancel()
        finally:
            loop.close()


def test_every_number_of_seconds_is_a_setting_the_table_knows() -> None:
    names = {row.env for row in SECONDS}
    assert {"UPSTREAM_TIMEOUT", "SHUTDOWN_TIMEOUT", "KEY_COOLDOWN", "REDIS_TIMEOUT", "LIVENESS_INTERVAL"} <= names


@pytest.mark.parametrize("raw", NOT_FINITE)
@pytest.mark.parametrize("row", SECONDS, ids=[row.env for row in SECONDS])
def test_a_number_of_seconds_that_is_not_finite_stops_start_up(clean_env, row, raw) -> None:
    clean_env.setenv(row.env, raw)
    with pytest.raises(ConfigError, match=rf"^{row.env}='{re.escape(raw)}': must be a finite number$"):
        load_settings()


@pytest.mark.parametrize("row", SECONDS, ids=[row.env for row in SECONDS])
def test_a_number_of_seconds_is_at_most_max_seconds(clean_env, row) -> None:
    clean_env.setenv(row.env, "1e10")
    with pytest.raises(ConfigError, match=rf"^{row.env}='1e10': must be at most 1000000000$"):
        load_settings()
    if row.env != "LIVENESS_INTERVAL":  # below 12 s, a check of its own
        clean_env.setenv(row.env, f"{MAX_SECONDS:.0f}")
        assert getattr(load_settings(), row.attr) == MAX_SECONDS


def test_what_the_largest_settings_become_stays_finite_for_the_loop_and_libcurl() -> None:
    largest = dataclasses.replace(
        config.Settings(), **{row.attr: MAX_SECONDS for row in SECONDS if row.env != "LIVENESS_INTERVAL"}
    )
    call = UpstreamCall(
        "http://127.0.0.1:9/", b"", [], largest.upstream_connect_timeout, largest.upstream_timeout, None  # type: ignore[arg-type]
    )
    curl = pycurl.Curl()
    try:
        curl.setopt(pycurl.CONNECTTIMEOUT_MS, call.connect_timeout_ms)  # a C long: an overflow would raise
        curl.setopt(pycurl.TIMEOUT_MS, call.timeout_ms)
    finally:
        curl.close()
    policy = Policy(largest)
    delays = [policy.backoff(tried) for tried in range(1, 11)]  # UPSTREAM_RETRIES is at most 10
    delays += [doubling(largest.router_retry_backoff, attempt) for attempt in range(1, REGISTER_ATTEMPTS)]
    delays += [largest.key_cooldown, largest.circuit_cooldown, largest.shutdown_timeout, largest.redis_timeout]
    assert all(math.isfinite(delay) for delay in delays)
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        for delay in delays:
            loop.call_at(loop.time() + delay, lambda: None).cancel()
    finally:
        loop.close()


def test_a_node_given_a_nan_or_infinite_delay_exits_2_naming_it(spawn_node) -> None:
    for name, raw in (("UPSTREAM_TIMEOUT", "nan"), ("SHUTDOWN_TIMEOUT", "inf")):
        node = spawn_node({name: raw}, ready=False)
        assert node.wait() == 2
        assert f"{name}='{raw}': must be a finite number" in node.output


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(OPENAI_API_KEY="sk-pool-first-AAAA1111,sk-pool-second-BBBB2222", UPSTREAM_RETRIES="0")
@pytest.mark.parametrize("raw", ["nan", "inf", "1e400"])
async def test_a_pooled_keys_rest_after_a_retry_after_that_is_no_number_is_key_cooldown(node_url, upstream, raw) -> None:
    """The rest is a timer on the loop (``mira_provider_key_cooling``): KEY_COOLDOWN, not a NaN uvloop refuses."""
    upstream.set_key_behavior("AAAA1111", Behavior(status=429, error_message="slow", headers={"Retry-After": raw}))
    response = await post(node_url + "/v1/chat/completions", chat_body())
    assert response.code == 200
    assert [r.headers["authorization"][-8:] for r in upstream.requests] == ["AAAA1111", "BBBB2222"]
    text = (await get(node_url + "/metrics")).body.decode()
    assert 'mira_provider_key_cooling{key="1",provider="openai"} 1.0' in text
