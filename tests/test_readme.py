"""README.md against the running node, as tests/test_config.py checks its Configuration table against config.py.

- The Metrics table (Operations) names exactly the ``mira_*`` families a live ``/metrics`` exports, with their labels.
- The error table (Endpoints and errors): each status's ``type`` is the node's own (``models.errors.ERROR_TYPES``);
  each error the node answers, provoked through HTTP where that is cheap, is in a row with its status, type and code;
  every code the source raises is in a row with the status it is raised with. The Messages routes' types
  (Anthropic's) are the ones ``models.endpoints`` gives.
- Every internal link (``(#anchor)``) of README.md and bench/README.md points at a heading, and every relative link
  at a file inside the repository.
- The Endpoints table lists exactly the paths (and methods) openapi.json documents, and every path the app serves.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ujson
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

import server
from models.endpoints import ANTHROPIC_ERROR_TYPES
from models.errors import ERROR_TYPES
from tests.conftest import ROOT
from tests.helpers import chat_body, closed_port, get, post
from tests.mock_upstream import Behavior
from utils import metrics
from utils.upstream.failures import FAILURE_ERRORS
from utils.upstream.ledger import CODES as LIMIT_CODES

README = ROOT / "README.md"
DOCUMENT = json.loads((ROOT / "openapi.json").read_bytes())
HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head")
CHAT = "/v1/chat/completions"
# Made only when REDIS_URL is set (utils.metrics.redis_up): the README lists it, the test node may not export it.
ONLY_WITH_REDIS = {"mira_redis_up"}
# The source folders whose ``ApiError``s reach a caller.
SOURCE_DIRS = ("handlers", "models", "utils")


# -- reading markdown ------------------------------------------------------------------------------------------


def outside_code(text: str) -> Iterator[str]:
    """The lines of a markdown text that are not inside a fenced code block."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def section(text: str, heading: str) -> str:
    """The body under ``heading`` (a whole heading line, ``## Title``) up to the next heading of its level or above."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = list(outside_code(text))
    assert heading in lines, f"README has no heading {heading!r}"
    body = []
    for line in lines[lines.index(heading) + 1:]:
        match = re.match(r"(#+) ", line)
        if match and len(match.group(1)) <= level:
            break
        body.append(line)
    return "\n".join(body)


def tables(text: str) -> list[list[list[str]]]:
    """Every table of a markdown text: its rows (the header first, the ``---`` row left out), each a list of cells."""
    found: list[list[list[str]]] = []
    current: list[list[str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            current = None
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            continue
        if current is None:
            current = []
            found.append(current)
        current.append(cells)
    return found


def table_with(text: str, header: list[str]) -> list[list[str]]:
    """The rows (header excluded) of the one table of ``text`` whose header is ``header``."""
    matching = [table for table in tables(text) if table[0] == header]
    assert len(matching) == 1, f"expected one table headed {header}, found {len(matching)}"
    return matching[0][1:]


def ticked(cell: str) -> list[str]:
    """The `code spans` of a cell, in order."""
    return re.findall(r"`([^`]+)`", cell)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading of a markdown text (a repeated heading's as GitHub numbers them: ``-1``, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for line in outside_code(text):
        match = re.match(r"#{1,6} (.+)", line)
        if match is None:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    """The targets of every inline link outside code blocks."""
    return [target for line in outside_code(text) for target in re.findall(r"\]\(([^)\s]+)\)", line)]


# -- (a) the Metrics table against /metrics ---------------------------------------------------------------------------


def readme_metrics() -> dict[str, set[str]]:
    """The Metrics table: metric name -> its label names."""
    rows = table_with(section(README.read_text(), "### Metrics"), ["metric", "labels", "what"])
    documented: dict[str, set[str]] = {}
    for cells in rows:
        (name,) = ticked(cells[0])
        assert name not in documented, f"the Metrics table lists {name} twice"
        documented[name] = set(ticked(cells[1]))
    return documented


def exported_families(text: str) -> dict[str, set[str] | None]:
    """Every ``mira_*`` family of an exposition, by its ``# TYPE`` name: its label names, None when it has no sample."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE mira_"):
            names.add(line.split(" ")[2])
    # prometheus_client gives a counter's and a histogram's creation time as a gauge family of its own: not a metric
    names = {name for name in names if not (name.endswith("_created") and {name[:-8], name[:-8] + "_total"} & names)}
    families: dict[str, set[str] | None] = dict.fromkeys(names)
    for family in text_string_to_metric_families(text):
        key = family.name if family.name in names else family.name + "_total"
        if key not in names or not family.samples:
            continue
        families[key] = {label for sample in family.samples for label in sample.labels if label != "le"}
    return families


def declared_labels() -> dict[str, set[str]]:
    """The label names of every metric utils/metrics.py declares, by exposition name (for those without a sample)."""
    declared = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + "_total" if value._type == "counter" else value._name
            declared[name] = set(value._labelnames)
    return declared


@pytest.mark.gen_test(timeout=30)
async def test_the_metrics_table_names_every_family_the_node_exports_with_its_labels(node_url: str, upstream: Any) -> None:
    # what makes the lazily created series: a chat request, a stream, a Messages request (translated and relayed)
    assert (await post(node_url + CHAT, chat_body("openai/mock-model"))).code == 200
    streamed = await post(node_url + CHAT, chat_body("groq/mock-model", stream=True))
    assert streamed.code == 200 and b"[DONE]" in streamed.body
    for model in ("openai/mock-model", "anthropic/mock-model"):
        body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
        assert (await post(node_url + "/v1/messages", body)).code == 200, model
    scraped = await get(node_url + "/metrics")
    assert scraped.code == 200
    exported = exported_families(scraped.body.decode())
    documented = readme_metrics()

    assert set(exported) - set(documented) == set(), "exported by the node, missing from README's Metrics table"
    assert set(documented) - set(exported) - ONLY_WITH_REDIS == set(), "in README's Metrics table, not exported"
    declared = declared_labels()
    for name, labels in documented.items():
        found = exported.get(name)
        expected = found if found is not None else declared.get(name, set())
        assert labels == expected, f"{name}: README gives the labels {sorted(labels)}, the node {sorted(expected)}"
    for name in ("mira_requests_total", "mira_streams_total", "mira_tokens_total", "mira_build_info"):
        assert exported[name] is not None, f"{name} has no series after the requests"


def test_the_metrics_check_tells_counters_from_their_created_gauges() -> None:
    text = (
        "# HELP mira_x_total x\n# TYPE mira_x_total counter\nmira_x_total{a=\"1\"} 1.0\n"
        "# HELP mira_x_created x\n# TYPE mira_x_created gauge\nmira_x_created{a=\"1\"} 1.0\n"
        "# HELP mira_y y\n# TYPE mira_y gauge\n"
    )
    assert exported_families(text) == {"mira_x_total": {"a"}, "mira_y": None}


# -- (b) the error table against the node -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorRow:
    situation: str
    status: int | None  # None: the upstream's own status
    types: frozenset[str]
    codes: frozenset[str | None]  # None: `null`


def readme_errors() -> list[ErrorRow]:
    rows = table_with(section(README.read_text(), "## Endpoints and errors"), ["situation", "status", "`type`", "`code`"])
    found = []
    for situation, status, types, codes in rows:
        match = re.match(r"(\d{3})\b", status)
        found.append(ErrorRow(
            situation,
            int(match.group(1)) if match else None,
            frozenset(ticked(types)),
            frozenset(None if code == "null" else code for code in ticked(codes)),
        ))
    return found


def documented_row(status: int, type_: str, code: str | None) -> ErrorRow:
    """The README row of an error the node answered, asserted to give its status, type and code."""
    rows = [row for row in readme_errors() if row.status == status and code in row.codes]
    assert rows, f"README's error table has no row for {status} with code {code!r}"
    assert len(rows) == 1, f"README's error table has {len(rows)} rows for {status} with code {code!r}"
    assert rows[0].types == {type_}, f"README's row for {status} {code!r} gives the type {set(rows[0].types)}, the node {type_}"
    return rows[0]


def test_each_status_of_the_error_table_has_the_nodes_type() -> None:
    rows = readme_errors()
    for row in rows:
        if row.status is None:
            continue
        assert row.status in ERROR_TYPES, f"README's error table answers {row.status}, which the node has no type for"
        assert row.types == {ERROR_TYPES[row.status]}, f"{row.situation}: {set(row.types)} vs {ERROR_TYPES[row.status]}"
    assert set(ERROR_TYPES) - {row.status for row in rows} == set(), "a status the node answers has no row"
    upstream = [row for row in rows if row.status is None]
    assert len(upstream) == 1 and "upstream" in upstream[0].situation


def raised_codes() -> set[tuple[int, str | None]]:
    """(status, code) of every error the source answers with a code of its own."""
    found: set[tuple[int, str | None]] = set()
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            for match in re.finditer(r'\bcode="([a-z_]+)"', text):
                before = text[:match.start()]
                call = max(before.rfind("ApiError("), before.rfind("bad_request("))
                assert call >= 0, f"{path.name}: code={match.group(1)!r} outside an ApiError"
                if before.startswith("bad_request(", call):
                    status = 400
                else:
                    number = re.match(r"ApiError\(\s*(\d{3})\b", before[call:])
                    assert number, f"{path.name}: the status of code={match.group(1)!r} is not a number"
                    status = int(number.group(1))
                found.add((status, match.group(1)))
    found |= {(shape.status, shape.code) for shape in FAILURE_ERRORS.values()}
    found |= {(429, code) for code in LIMIT_CODES.values()}
    return found


def test_every_code_the_source_raises_is_in_the_table_with_its_status() -> None:
    raised = raised_codes()
    assert len(raised) > 20 and (404, "not_found") in raised and (503, None) in raised
    rows = readme_errors()
    missing = sorted((status, code) for status, code in raised
                     if not [row for row in rows if row.status == status and code in row.codes])
    assert missing == [], f"codes the node answers that README's error table does not give with their status: {missing}"
    documented = {(row.status, code) for row in rows if row.status is not None for code in row.codes}
    assert documented - raised - {(400, None), (405, None), (500, None)} == set(), "codes in README the node never answers"


def test_the_messages_routes_types_are_anthropics() -> None:
    text = section(README.read_text(), "## Claude Code and the Anthropic SDKs")
    errors = next(item for item in text.split("\n- ") if item.startswith("**Errors**"))
    given: dict[int, str] = {}
    for statuses, kind in re.findall(r"(\d{3}(?: and \d{3})*) `([a-z_]+)`", " ".join(errors.split())):
        for status in statuses.split(" and "):
            given[int(status)] = kind
    assert given == ANTHROPIC_ERROR_TYPES
    assert "other 5xx `api_error`" in " ".join(errors.split())
    assert "[Claude Code and the Anthropic SDKs](#claude-code-and-the-anthropic-sdks)" in section(
        README.read_text(), "## Endpoints and errors"), "the error table must point to the Messages routes' shape"


# Each case: a request, the node environment it needs, and the status and code it must get.
LIMITS_FILE = "<limits file>"  # replaced by the node_env fixture below with a file of LIMITS
LIMITS = {"openai": {"rpm": 0}, "groq": {"tokens_per_day": 0}}
BUDGET_FILES = "<budget files>"  # replaced by the node_env fixture: a dollar budget for anthropic, and PRICES_FILE
SERVICE_KEY = "sk-readme-service-key-0001"
BAD_HOST = closed_port()


@dataclass(frozen=True)
class Provoke:
    method: str
    path: str
    body: Any = None
    headers: dict[str, str] | None = None


def case(name: str, request: Provoke, status: int, code: str | None, **env: str) -> Any:
    return pytest.param(request, status, code, id=name, marks=pytest.mark.node_env(**env))


TOO_COMPLEX = b'{"model": "openai/m", "messages": [' + b"[]," * 40000 + b"[]]}"
CASES = [
    case("not_found", Provoke("GET", "/v1/no-such-path"), 404, "not_found"),
    case("method_not_allowed", Provoke("GET", CHAT), 405, None),
    case("not_json", Provoke("POST", CHAT, b"{"), 400, None),
    case("unknown_provider", Provoke("POST", CHAT, chat_body("nowhere/m")), 400, "unknown_provider"),
    case("body_too_complex", Provoke("POST", CHAT, TOO_COMPLEX), 400, "body_too_complex"),
    case("custom_provider_forbidden", Provoke("POST", CHAT, chat_body(
        "m", model_provider={"base_url": "http://127.0.0.1:9/v1", "api_key": "k"})), 400, "custom_provider_forbidden"),
    case("provider_not_configured", Provoke("POST", CHAT, chat_body("openai/m")), 400, "provider_not_configured",
         OPENAI_API_KEY=""),
    case("unsupported_endpoint", Provoke("POST", "/v1/embeddings", {"model": "anthropic/m", "input": "hi"}), 400,
         "unsupported_endpoint"),
    case("invalid_api_key", Provoke("GET", "/v1/models"), 401, "invalid_api_key", SERVICE_API_KEY=SERVICE_KEY),
    case("client_forbidden", Provoke("GET", "/v1/models"), 403, "client_forbidden", ALLOWED_CLIENTS="203.0.113.7"),
    case("request_too_large", Provoke("POST", CHAT, chat_body(padding="x" * 200)), 413, "request_too_large",
         MAX_BODY_SIZE="100"),
    case("rate_limited", Provoke("POST", CHAT, chat_body("openai/m")), 429, "rate_limited",
         PROVIDER_LIMITS_FILE=LIMITS_FILE),
    case("budget_exceeded", Provoke("POST", CHAT, chat_body("groq/m")), 429, "budget_exceeded",
         PROVIDER_LIMITS_FILE=LIMITS_FILE),
    case("unpriced_model", Provoke("POST", CHAT, chat_body("anthropic/no-price")), 400, "unpriced_model",
         PROVIDER_LIMITS_FILE=BUDGET_FILES, PRICES_FILE=BUDGET_FILES),
    case("upstream_unreachable", Provoke("POST", CHAT, chat_body("openai/m")), 502, "upstream_unreachable",
         OPENAI_BASE_URL=f"http://127.0.0.1:{BAD_HOST}/v1", UPSTREAM_RETRIES="0"),
]


@pytest.fixture
def node_env(node_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The conftest environment, with LIMITS written to a file where a case asks for it."""
    if node_env.get("PROVIDER_LIMITS_FILE") == LIMITS_FILE:
        path = tmp_path / "limits.json"
        path.write_text(json.dumps(LIMITS))
        node_env = {**node_env, "PROVIDER_LIMITS_FILE": str(path)}
    if node_env.get("PROVIDER_LIMITS_FILE") == BUDGET_FILES:
        limits, prices = tmp_path / "budget.json", tmp_path / "prices.json"
        limits.write_text(json.dumps({"anthropic": {"usd_per_day": 10}}))
        prices.write_text(json.dumps({"anthropic/priced": {"input": 1, "output": 1}}))
        node_env = {**node_env, "PROVIDER_LIMITS_FILE": str(limits), "PRICES_FILE": str(prices)}
    return node_env


def error_in(body: bytes) -> dict[str, Any]:
    data = ujson.loads(body)
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}, data
    return data["error"]


def assert_documented(status: int, body: bytes) -> None:
    error = error_in(body)
    assert error["type"] == ERROR_TYPES[status], error
    documented_row(status, error["type"], error["code"])


@pytest.mark.gen_test(timeout=20)
@pytest.mark.parametrize("request_, status, code", CASES)
async def test_each_error_the_node_answers_is_the_readme_row(
    node_url: str, upstream: Any, request_: Provoke, status: int, code: str | None
) -> None:
    if request_.method == "GET":
        response = await get(node_url + request_.path, headers=request_.headers)
    else:
        response = await post(node_url + request_.path, request_.body, request_.headers)
    assert response.code == status, response.body
    assert error_in(response.body)["code"] == code
    if status == 405:
        assert response.headers["Allow"]
    assert_documented(status, response.body)


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(CIRCUIT_FAILURES="1", UPSTREAM_RETRIES="0")
async def test_an_open_circuit_is_the_readme_row(node_url: str, upstream: Any) -> None:
    upstream.push(Behavior(status=500, json_body={"error": {"message": "down"}}))  # a 5xx without a type of its own
    failed = await post(node_url + CHAT, chat_body("openai/m"))
    assert failed.code == 500
    assert error_in(failed.body)["type"] == "upstream_error"
    (row,) = [row for row in readme_errors() if row.status is None]
    assert "upstream_error" in row.types, "README's row of upstream errors must give upstream_error for a 5xx"
    response = await post(node_url + CHAT, chat_body("openai/m"))
    assert response.code == 503 and response.headers["Retry-After"]
    assert error_in(response.body)["code"] == "provider_unavailable"
    assert_documented(503, response.body)


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(UPSTREAM_TIMEOUT="0.3", UPSTREAM_RETRIES="0")
async def test_a_silent_upstream_is_the_readme_row(node_url: str, upstream: Any) -> None:
    upstream.default = Behavior(hang=True)
    response = await post(node_url + CHAT, chat_body("openai/m"))
    assert response.code == 504
    assert error_in(response.body)["code"] == "upstream_timeout"
    assert_documented(504, response.body)


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(MAX_CONCURRENT_REQUESTS="1")
async def test_a_node_at_its_limit_is_the_readme_row(node_url: str, upstream: Any) -> None:
    upstream.default = Behavior(delay=1.0)
    first = asyncio.ensure_future(post(node_url + CHAT, chat_body("openai/slow")))
    assert await upstream.await_for(lambda u: u.in_flight >= 1)
    response = await post(node_url + CHAT, chat_body("openai/m"))
    assert response.code == 503 and response.headers["Retry-After"]
    assert error_in(response.body)["code"] == "overloaded"
    assert_documented(503, response.body)
    assert (await first).code == 200


@pytest.mark.gen_test(timeout=20)
@pytest.mark.node_env(REQUEST_BODY_TIMEOUT="0.3")
async def test_a_body_that_never_arrives_is_the_readme_row(node_url: str, http_port: int, upstream: Any) -> None:
    def trickle() -> bytes:
        with socket.create_connection(("127.0.0.1", http_port), timeout=10) as sock:
            sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: n\r\nContent-Length: 100\r\n\r\n".encode() + b'{"model":')
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    data = await asyncio.get_running_loop().run_in_executor(None, trickle)
    assert data.startswith(b"HTTP/1.1 408")
    body = data.split(b"\r\n\r\n", 1)[1]
    assert error_in(body)["code"] == "request_timeout"
    assert_documented(408, body)


# -- (c) links ----------------------------------------------------------------------------------------------------------


def link_problems(path: Path, text: str | None = None) -> list[str]:
    """What is wrong with the links of a markdown file of the repository (``text``: its text, when not the file's own):
    a target outside the repository, one that is no file, an anchor that is no heading."""
    text = path.read_text() if text is None else text
    problems = []
    for target in links(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.is_relative_to(ROOT):
            problems.append(f"({target}) points outside the repository")
        elif not linked.is_file():
            problems.append(f"({target}) points at no file")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(text if linked == path else linked.read_text())):
            problems.append(f"({target}) points at no heading")
    return problems


@pytest.mark.parametrize("name", ["README.md", "bench/README.md"])
def test_every_link_points_at_a_heading_or_a_file_of_the_repository(name: str) -> None:
    assert link_problems(ROOT / name) == []


def test_the_anchor_rule_is_githubs() -> None:
    text = "# A\n## `make demo`: try it\n## POST /v1/verify\n## Keys, limits and budgets\n## A\n```sh\n# not one\n```\n"
    assert anchors(text) == {"a", "make-demo-try-it", "post-v1verify", "keys-limits-and-budgets", "a-1"}
    assert links("[x](#a) `[y](#b)`\n```\n[z](#c)\n```\n") == ["#a", "#b"]
    wrong = ROOT / "README.md"  # its text with bad links added, in memory only
    text = wrong.read_text() + "\n[a](#no-such-heading) [b](../outside.md) [c](no-such-file.md) [d](bench/README.md#files)\n"
    assert link_problems(wrong, text) == [
        "(#no-such-heading) points at no heading", "(../outside.md) points outside the repository",
        "(no-such-file.md) points at no file",
    ]


# -- (d) the Endpoints table against openapi.json and the app -----------------------------------------------------------


def readme_endpoints() -> dict[str, set[str]]:
    """The Endpoints table: path -> the methods its row names."""
    rows = table_with(section(README.read_text(), "## Endpoints and errors"), ["method, path", "what it does"])
    found: dict[str, set[str]] = {}
    for cells in rows:
        paths = [span for span in ticked(cells[0]) if span.startswith("/")]
        methods = set(re.findall(r"\b(GET|POST|PUT|PATCH|DELETE|HEAD)\b", cells[0].split("`", 1)[0]))
        for path in paths:
            assert path not in found, f"the Endpoints table lists {path} twice"
            found[path] = {method.lower() for method in methods}
    return found


def test_the_endpoints_table_is_what_openapi_documents_and_the_app_serves() -> None:
    listed = readme_endpoints()
    documented = DOCUMENT["paths"]
    assert set(listed) == set(documented), "README's Endpoints table and openapi.json's paths differ"
    for path, methods in listed.items():
        assert methods == {m for m in documented[path] if m in HTTP_METHODS}, f"{path}: README names {methods}"
    served = {route[0] for module in server.ROUTE_MODULES for route in module.routes}
    assert served - set(listed) == set(), "paths the node serves that README's Endpoints table does not list"
