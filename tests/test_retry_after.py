"""Retry-After: one reading for the whole node (SPEC "POST /v1/chat/completions", Retries; "Provider keys").

:func:`utils.upstream.failures.retry_after_seconds` turns an upstream's
``Retry-After`` into seconds, or None when it is neither a finite number of
seconds of at least 0 nor an HTTP-date. The retry back-off, a pooled key's
rest and the header passed back to the client all read it through that one
function, so none of them is ever NaN or infinite. The current time is an
argument, so no test moves a clock.
"""

from __future__ import annotations

import calendar
import dataclasses
import math
from email.utils import formatdate

import pytest

import config
from tests.helpers import chat_body, post
from tests.mock_upstream import Behavior
from utils.redact import Redactor
from utils.upstream.failures import UpstreamStatus, api_error, retry_after_header, retry_after_seconds
from utils.upstream.policy import MAX_KEY_REST, MIN_KEY_REST, Policy

NOW = float(calendar.timegm((2026, 12, 3, 12, 0, 0)))  # 2026-12-03T12:00:00Z
IN_90_S = formatdate(NOW + 90, usegmt=True)  # IMF-fixdate: "Thu, 03 Dec 2026 12:01:30 GMT"
AN_HOUR_AGO = formatdate(NOW - 3600, usegmt=True)
BACKOFF = 0.2  # UPSTREAM_RETRY_BACKOFF of the policy under test
KEY_COOLDOWN = 45.0

# raw header -> seconds (None: not a Retry-After the node can read)
CASES = [
    ("nan", None),
    ("NaN", None),
    ("inf", None),
    ("-inf", None),
    ("infinity", None),
    ("-1", None),
    ("-0.5", None),
    ("1e400", None),  # a float, but not a finite one
    ("9" * 400, None),  # digits beyond a float's range
    ("", None),
    ("   ", None),
    ("abc", None),
    ("+5", None),
    ("1_000", None),
    ("0x10", None),
    ("5 s", None),
    ("31 Feb 2026 00:00:00 GMT", None),  # looks like a date, is none
    (None, None),
    (" 7 ", 7.0),
    ("7", 7.0),
    ("0", 0.0),
    ("2.5", 2.5),
    ("1e2", 100.0),
    ("100000", 100000.0),  # a number the callers cap
    (IN_90_S, 90.0),
    ("Thursday, 03-Dec-26 12:01:30 GMT", 90.0),  # RFC 850, obsolete
    ("Thu Dec  3 12:01:30 2026", 90.0),  # asctime, obsolete (GMT)
    (AN_HOUR_AGO, 0.0),  # past: at once
]
IDS = [repr(raw) if raw is None or len(raw) < 40 else "long digits" for raw, _ in CASES]


def policy() -> Policy:
    return Policy(dataclasses.replace(config.Settings(), retry_backoff=BACKOFF, key_cooldown=KEY_COOLDOWN))


@pytest.mark.parametrize(("raw", "seconds"), CASES, ids=IDS)
def test_the_parser_reads_seconds_and_http_dates_and_nothing_else(raw, seconds):
    got = retry_after_seconds(raw, now=NOW)
    assert got == seconds
    assert got is None or (math.isfinite(got) and got >= 0)


def test_the_parser_takes_the_wall_clock_by_default():
    assert retry_after_seconds(formatdate(usegmt=True)) == 0.0  # now, rounded down to the second: already past
    assert 3500 < (retry_after_seconds("Fri, 01 Jan 2100 00:00:00 GMT") or 0)


@pytest.mark.parametrize(("raw", "seconds"), CASES, ids=IDS)
@pytest.mark.parametrize("tried", [1, 3])
def test_the_retry_backoff_is_the_upstreams_wait_capped_else_the_doubling_one(raw, seconds, tried):
    delay = policy().backoff(tried, raw, now=NOW)
    assert math.isfinite(delay) and delay >= 0
    if seconds is None:
        ordinary = BACKOFF * 2 ** (tried - 1)
        assert ordinary / 2 <= delay <= ordinary  # doubling, with jitter
    else:
        assert delay == min(seconds, policy().max_wait)


def test_the_retry_backoff_keeps_its_signature_for_the_engine():
    delay = policy().backoff(2)  # as client.py calls it: no Retry-After
    assert BACKOFF <= delay <= 2 * BACKOFF
    assert policy().backoff(1, "3") == 3.0


@pytest.mark.parametrize(("raw", "seconds"), CASES, ids=IDS)
def test_a_pooled_keys_rest_is_the_429s_wait_within_bounds_else_key_cooldown(raw, seconds):
    rest = policy().key_rest(UpstreamStatus("openai", 429, b"", raw), now=NOW)
    assert math.isfinite(rest)
    assert rest == (KEY_COOLDOWN if seconds is None else min(max(seconds, MIN_KEY_REST), MAX_KEY_REST))


def test_a_401_rests_a_key_for_key_cooldown_whatever_its_retry_after():
    assert policy().key_rest(UpstreamStatus("openai", 401, b"", "5"), now=NOW) == KEY_COOLDOWN
    assert policy().key_rest(UpstreamStatus("openai", 401, b"", IN_90_S), now=NOW) == KEY_COOLDOWN


@pytest.mark.parametrize(("raw", "seconds"), CASES, ids=IDS)
def test_the_header_passed_back_is_whole_seconds_rounded_up_at_most_an_hour(raw, seconds):
    expected = None if seconds is None else str(min(math.ceil(seconds), 3600))
    assert retry_after_header(raw, now=NOW) == expected


@pytest.mark.parametrize("status", [429, 503])
def test_a_429_or_503_passes_the_upstreams_wait_on(status):
    error = api_error(UpstreamStatus("openai", status, b'{"error": {"message": "slow down"}}', "2.5"), Redactor())
    assert (error.status, error.headers.get("Retry-After")) == (status, "3")
    unreadable = api_error(UpstreamStatus("openai", status, b"", "nan"), Redactor())
    assert "Retry-After" not in unreadable.headers


def test_other_statuses_pass_no_retry_after_on():
    error = api_error(UpstreamStatus("openai", 502, b"", "5"), Redactor())
    assert "Retry-After" not in error.headers


# -- through the node --------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(UPSTREAM_RETRIES="2")
@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "1e400", "abc", AN_HOUR_AGO])
async def test_an_unreadable_or_past_retry_after_still_retries_at_once(node_url, upstream, raw):
    upstream.push(Behavior(status=503, headers={"Retry-After": raw}))
    upstream.push(Behavior(status=429, headers={"Retry-After": raw}))
    response = await post(node_url + "/v1/chat/completions", chat_body())
    assert response.code == 200
    assert len(upstream.requests) == 3


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(UPSTREAM_RETRIES="0")
@pytest.mark.parametrize(("raw", "header"), [("nan", None), ("2.5", "3"), ("99999", "3600"), (AN_HOUR_AGO, "0")])
async def test_the_client_gets_the_upstreams_wait_as_whole_seconds(node_url, upstream, raw, header):
    upstream.push(Behavior(status=429, headers={"Retry-After": raw}, error_message="slow down"))
    response = await post(node_url + "/v1/chat/completions", chat_body())
    assert response.code == 429
    assert response.headers.get("Retry-After") == header
