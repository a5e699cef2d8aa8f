"""HTTPS upstreams: certificates always verified, against UPSTREAM_CA_BUNDLE when it is set.

A local CA made by ``trustme`` signs the certificate of an https mock
upstream; the node trusts it only through UPSTREAM_CA_BUNDLE. A second CA
that nobody trusts stands for a self-signed upstream.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import trustme

from tests.helpers import chat_body, error_of, get, post, sse_events
from tests.mock_upstream import MockUpstream

pytestmark = pytest.mark.gen_test(timeout=20)

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="session")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("tls") / "local-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, path


def tls_upstream(ca: trustme.CA) -> MockUpstream:
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)
    return MockUpstream().start(ssl_context=context)


@pytest.fixture(scope="session")
def https_server(local_ca: tuple[trustme.CA, Path]) -> Iterator[MockUpstream]:
    up = tls_upstream(local_ca[0])
    yield up
    up.stop()


@pytest.fixture(scope="session")
def self_signed_server() -> Iterator[MockUpstream]:
    up = tls_upstream(trustme.CA())  # a CA nobody trusts
    yield up
    up.stop()


@pytest.fixture
def https_upstream(https_server: MockUpstream) -> MockUpstream:
    https_server.reset()
    return https_server


@pytest.fixture
def node_env(node_env: dict[str, str], https_upstream: MockUpstream, self_signed_server: MockUpstream,
             local_ca: tuple[trustme.CA, Path]) -> dict[str, str]:
    """openai/ and groq/ over https to the local CA's upstream, anthropic/ to the self-signed one."""
    self_signed_server.reset()
    env = dict(node_env, OPENAI_BASE_URL=https_upstream.base_url, GROQ_BASE_URL=https_upstream.base_url,
               ANTHROPIC_BASE_URL=self_signed_server.base_url)
    env.setdefault("UPSTREAM_CA_BUNDLE", str(local_ca[1]))  # a test's node_env marker wins
    return env


async def test_json_over_https_with_the_ca_bundle(node_url, https_upstream):
    client = openai.AsyncOpenAI(base_url=node_url + "/v1", api_key="unused", max_retries=0)
    reply = await client.chat.completions.create(model="openai/mock-model", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Hello from mock"
    assert https_upstream.requests[0].headers["authorization"].startswith("Bearer ")
    await client.close()


async def test_a_stream_over_https_with_the_ca_bundle(node_url, https_upstream):
    response = await post(node_url + CHAT, chat_body("groq/mock-model", stream=True))
    assert response.code == 200
    assert sse_events(response.body)[-1] == b"data: [DONE]"


async def test_a_self_signed_upstream_is_refused_and_not_retried(node_url, self_signed_server):
    before = await retries_of(node_url, "anthropic")
    response = await post(node_url + CHAT, chat_body("anthropic/claude"))
    assert response.code == 502
    error = error_of(response)
    assert error["code"] == "upstream_tls_error"
    assert "TLS verification failed for anthropic" in error["message"]
    assert self_signed_server.requests == []
    assert await retries_of(node_url, "anthropic") == before


@pytest.mark.node_env(UPSTREAM_CA_BUNDLE="")
async def test_without_the_bundle_the_system_store_does_not_trust_the_local_ca(node_url, https_upstream):
    response = await post(node_url + CHAT, chat_body("openai/mock-model"))
    assert response.code == 502
    assert error_of(response)["code"] == "upstream_tls_error"
    assert https_upstream.requests == []


async def retries_of(node_url: str, provider: str) -> float:
    text = (await get(node_url + "/metrics")).body.decode()
    prefix = f'mira_upstream_retries_total{{provider="{provider}"}} '
    return next((float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


@pytest.mark.parametrize("value", ["missing.pem", "."], ids=["missing", "a-directory"])
def test_an_unreadable_bundle_stops_start_up_naming_it(spawn_node, tmp_path, value):
    path = tmp_path / value if value != "." else tmp_path
    node = spawn_node({"UPSTREAM_CA_BUNDLE": str(path)}, ready=False)
    assert node.wait() == 2
    assert "UPSTREAM_CA_BUNDLE" in node.output
