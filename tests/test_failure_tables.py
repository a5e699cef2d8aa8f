"""The failure tables: libcurl's errors to failure classes, failure classes to the caller's error (SPEC "Errors").

Every concrete :class:`~utils.upstream.failures.UpstreamFailure` subclass
must be in :data:`~utils.upstream.failures.FAILURE_ERRORS` or be one of the
two computed cases, so a failure class added without a mapping fails here
rather than answering as a generic 502.
"""

from __future__ import annotations

import inspect

import pycurl
import pytest
from tornado.curl_httpclient import CurlError

from utils.redact import Redactor
from utils.upstream.failures import (
    COMPUTED_FAILURES,
    FAILURE_ERRORS,
    FORBIDDEN_MESSAGE,
    ConnectFailed,
    ConnectionLost,
    Forbidden,
    InvalidStatus,
    QueueTimeout,
    TimedOut,
    TlsFailed,
    TransportError,
    UpstreamFailure,
    UpstreamStatus,
    api_error,
)
from utils.upstream.transport import CURL_FAILURES, Reply, Transfer, TransferRefused, failure_of

SECRET = "sk-failure-table-SECRET-0001"

# The SPEC's Errors table (and the node's codes) for each failure class.
EXPECTED = {
    ConnectFailed: (502, "upstream_unreachable", "Could not connect to acme API"),
    ConnectionLost: (502, "upstream_connection_lost", "Connection to acme API was lost"),
    TimedOut: (504, "upstream_timeout", "acme API did not answer in time"),
    TlsFailed: (502, "upstream_tls_error", "TLS verification failed for acme API: its certificate is not trusted"),
    QueueTimeout: (503, None, "No upstream connection became free in time"),
    Forbidden: (400, "custom_provider_forbidden", FORBIDDEN_MESSAGE),
    InvalidStatus: (502, "upstream_invalid_response",
                    "acme API answered with HTTP status 304, which the node cannot pass on"),
}


def concrete_failures(base: type[UpstreamFailure] = UpstreamFailure) -> set[type[UpstreamFailure]]:
    """Every subclass of ``base``, at any depth, that is not abstract (those this test module makes left out)."""
    found: set[type[UpstreamFailure]] = set()
    for sub in base.__subclasses__():
        if not inspect.isabstract(sub) and sub.__module__ != __name__:
            found.add(sub)
        found |= concrete_failures(sub)
    return found


def example(kind: type[UpstreamFailure]) -> UpstreamFailure:
    """One failure of class ``kind`` from provider ``acme``."""
    if issubclass(kind, InvalidStatus):
        return kind("acme", 304)
    if issubclass(kind, UpstreamStatus):
        return kind("acme", 500, b"", None)
    return kind("acme")


def test_every_failure_class_is_mapped_or_computed():
    unmapped = {kind.__name__ for kind in concrete_failures() if kind not in FAILURE_ERRORS and kind not in COMPUTED_FAILURES}
    assert not unmapped, f"failure classes without an entry in FAILURE_ERRORS: {sorted(unmapped)}"
    assert set(COMPUTED_FAILURES) == {UpstreamStatus, TransportError}
    assert not set(FAILURE_ERRORS) & set(COMPUTED_FAILURES)


def test_every_mapped_class_is_a_failure_class():
    for kind in FAILURE_ERRORS:
        assert issubclass(kind, UpstreamFailure) and kind is not UpstreamFailure


def test_every_libcurl_error_maps_to_a_failure_class():
    assert CURL_FAILURES
    for errno, kind in CURL_FAILURES.items():
        assert isinstance(errno, int)
        assert issubclass(kind, UpstreamFailure) and kind is not UpstreamFailure, (errno, kind)
        assert kind in FAILURE_ERRORS, f"libcurl error {errno} maps to {kind.__name__}, which has no error"


MAPPED = sorted(FAILURE_ERRORS, key=lambda kind: kind.__name__)


@pytest.mark.parametrize("kind", MAPPED, ids=[kind.__name__ for kind in MAPPED])
def test_each_entry_gives_the_spec_status_code_and_message(kind):
    error = api_error(example(kind), Redactor())
    assert (error.status, error.code, error.message) == EXPECTED[kind]


def test_the_expected_table_covers_every_entry():
    assert set(EXPECTED) == set(FAILURE_ERRORS)


def test_the_entries_carry_their_param_and_headers():
    forbidden = api_error(Forbidden("acme"), Redactor())
    assert forbidden.param == "model_provider.base_url"
    assert api_error(QueueTimeout("upstream"), Redactor()).headers == {"Retry-After": "1"}
    first, second = api_error(QueueTimeout("upstream"), Redactor()), api_error(QueueTimeout("upstream"), Redactor())
    first.headers["X-Mira-Model"] = "openai/x"
    assert "X-Mira-Model" not in second.headers  # each error has headers of its own
    for kind in FAILURE_ERRORS:
        if kind not in (Forbidden, QueueTimeout):
            error = api_error(example(kind), Redactor())
            assert error.param is None and error.headers == {}


def test_a_timeout_with_words_of_its_own_keeps_them():
    assert api_error(TimedOut("acme", "acme API went silent"), Redactor()).message == "acme API went silent"


def test_a_subclass_answers_as_its_nearest_mapped_base():
    class Refused(ConnectFailed):  # made here: concrete_failures leaves it out
        pass

    error = api_error(Refused("acme"), Redactor())
    assert (error.status, error.code) == (502, "upstream_unreachable")


def test_the_computed_cases():
    redactor = Redactor([SECRET])
    transport = api_error(TransportError("acme", f"libcurl said {SECRET}"), redactor)
    assert (transport.status, transport.code) == (502, "upstream_error")
    assert transport.message.startswith("Error calling acme API: libcurl said ") and SECRET not in transport.message
    assert api_error(TransportError("acme"), redactor).message == "Error calling acme API: unknown error"
    body = b'{"error": {"message": "no such model", "code": "model_not_found"}}'
    status = api_error(UpstreamStatus("acme", 404, body, None), redactor)
    assert (status.status, status.code, status.message) == (404, "model_not_found", "Error from acme API: no such model")


# -- failure_of: a 599 reply to its failure ----------------------------------------------------------


def reply_of(errno: int, message: str = "libcurl words") -> Reply:
    return Reply(599, b"", {}, CurlError(errno, message))


@pytest.mark.parametrize(("errno", "kind"), sorted(CURL_FAILURES.items()), ids=lambda v: str(v))
def test_failure_of_reads_the_errno_table(errno, kind):
    assert type(failure_of(reply_of(errno), Transfer(), "acme")) is kind


@pytest.mark.parametrize(("errno", "kind"), [
    (pycurl.E_OPERATION_TIMEDOUT, TimedOut),
    (pycurl.E_COULDNT_CONNECT, ConnectFailed),
    (pycurl.E_COULDNT_RESOLVE_HOST, ConnectFailed),
    (pycurl.E_PEER_FAILED_VERIFICATION, TlsFailed),
    (pycurl.E_RECV_ERROR, ConnectionLost),
    (pycurl.E_GOT_NOTHING, ConnectionLost),
])
def test_the_usual_libcurl_errors(errno, kind):
    assert CURL_FAILURES[errno] is kind


def test_an_unmapped_libcurl_error_is_a_transport_error_with_libcurls_words():
    failure = failure_of(reply_of(pycurl.E_TOO_MANY_REDIRECTS, "too many"), Transfer(), "acme")
    assert type(failure) is TransportError and "too many" in failure.detail
    assert type(failure_of(Reply(599, b"", {}, None), Transfer(), "acme")) is TransportError


def test_a_refused_or_aborted_transfer_is_a_queue_timeout():
    assert type(failure_of(Reply(599, b"", {}, TransferRefused()), Transfer(), "acme")) is QueueTimeout
    aborted = Transfer()
    aborted.abort()
    assert type(failure_of(reply_of(pycurl.E_ABORTED_BY_CALLBACK), aborted, "acme")) is QueueTimeout
