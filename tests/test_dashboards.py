"""The Grafana dashboard and the Prometheus alerts query only what the node really exports.

``deploy/grafana/mira-node.json`` and ``deploy/prometheus/alerts.yml`` are
checked for their structure, then every metric name (and label name) in their
expressions is looked up in a live ``GET /metrics`` of the in-process node,
after traffic that creates every labelled series: a JSON chat with one retry
and a streamed chat. Histogram series (``_bucket``, ``_sum``, ``_count``)
match their ``# TYPE`` family; Prometheus' own ``up`` and the labels it adds
(``job``, ``instance``) are exempt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import chat_body, get, post
from tests.mock_upstream import Behavior

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "mira-node.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"

# Planned metrics: another change is adding them to the node, and the dashboard and alerts already show them, so
# they may be missing from /metrics today (with the labels they will have). Once the node exports one, it is checked
# like every other metric; then remove it from here. Any other name missing from /metrics fails the test.
PLANNED: dict[str, set[str]] = {
    "mira_tokens_total": {"provider", "model", "kind"},
    "mira_provider_up": {"provider"},
    "mira_fallbacks_total": {"from", "to"},
    "mira_limit_refusals_total": {"provider", "limit"},  # limit: rpm, tpm, tokens_per_day
    "mira_tokens_today": {"provider"},
    "mira_provider_key_cooling": {"provider", "key"},  # key: the key's position in the pool, "1", "2", ...
    "mira_redis_up": set(),  # only with REDIS_URL set: absent from the test node's /metrics unless it sets one
    # only with PRICES_FILE (and a usd_per_day budget): declared, without a series in the test node's /metrics
    "mira_cost_usd_total": {"provider", "model"},
    "mira_unpriced_calls_total": {"provider", "model"},
    "mira_node_cost_today_usd": {"provider"},
    "mira_cost_today_usd": {"provider"},
    "mira_budget_usd_per_day": {"provider"},
}
PROMETHEUS_OWN = {"up"}  # made by Prometheus itself, not by the node
ADDED_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
SERIES_OF_TYPE = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# What an operator needs on the dashboard (exported or planned), each in at least one panel.
REQUIRED_ON_DASHBOARD = {
    "mira_requests_total", "mira_request_duration_seconds_bucket", "mira_upstream_ttfb_seconds_bucket",
    "mira_streams_total", "mira_upstream_calls_total", "mira_upstream_retries_total", "mira_heartbeat_failures_total",
    "mira_requests_in_flight", *PLANNED,
}
REQUIRED_ALERTS = {
    "MiraNodeDown", "MiraNodeErrorRatioHigh", "MiraHeartbeatsFailing", "MiraProviderDown", "MiraUpstreamErrorsHigh",
    "MiraLimitRefusals", "MiraBudgetExhausted", "MiraProviderKeysCooling", "MiraProviderKeyCoolingLong", "MiraRedisDown",
    "MiraDollarBudgetExhausted", "MiraCostBudgetAt80Percent",
}
SEVERITIES = {"critical", "warning", "info"}

PREFIXED_NAME = re.compile(r"(?<![\w$])((?:mira|process)_[a-z0-9_]+)")
SELECTOR = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
DURATION = re.compile(r"^\d+[smhd]$")


# -- reading the files ----------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def load_alerts() -> dict[str, Any]:
    return yaml.safe_load(ALERTS.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and of every query variable."""
    exprs = [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", []) if "expr" in t]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def alert_rules(alerts: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in alerts["groups"] for rule in group["rules"]]


def alert_exprs() -> list[str]:
    return [rule["expr"] for rule in alert_rules(load_alerts())]


# -- reading PromQL and the exposition --------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric names in an expression: every mira_/process_ identifier and every name before a ``{`` selector."""
    names = set(PREFIXED_NAME.findall(expr))
    names.update(name for name, _ in SELECTOR.findall(expr))
    return names


def label_names(expr: str) -> set[str]:
    """Label names used in selectors and in ``by (...)`` / ``without (...)``."""
    used = {label for _, body in SELECTOR.findall(expr) for label in MATCHER.findall(body)}
    for group in GROUPING.findall(expr):
        used.update(label.strip() for label in group.split(",") if label.strip())
    return used


def exported_series(text: str) -> dict[str, set[str]]:
    """Every series name the exposition offers (from ``# TYPE`` families and samples), with its label names."""
    series: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            base = family.removesuffix("_total") if kind == "counter" else family
            for suffix in SERIES_OF_TYPE.get(kind, ("",)):
                series.setdefault(base + suffix, set())
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def unknown_names(exprs: list[str], exported: dict[str, set[str]]) -> dict[str, set[str]]:
    """Per expression, the metric names neither exported, planned nor Prometheus' own."""
    known = exported.keys() | PLANNED.keys() | PROMETHEUS_OWN
    return {expr: missing for expr in exprs if (missing := metric_names(expr) - known)}


def unknown_labels(exprs: list[str], exported: dict[str, set[str]]) -> dict[str, set[str]]:
    """Per expression, the label names that none of its metrics has."""
    found = {}
    for expr in exprs:
        available = set(ADDED_LABELS)
        for name in metric_names(expr):
            available |= exported.get(name) or PLANNED.get(name, set())
            if name.endswith("_bucket"):
                available.add("le")
        if missing := label_names(expr) - available:
            found[expr] = missing
    return found


# -- the files' structure ----------------------------------------------------------------------


def overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def test_dashboard_is_a_grafana_dashboard_on_a_datasource_variable() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    placed = []
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        assert not [other for other in placed if overlaps(pos, other["gridPos"])], f"{panel['title']} overlaps another panel"
        placed.append(panel)
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}" and target["expr"].strip(), panel["title"]


def test_dashboard_shows_what_operators_need() -> None:
    dashboard = load_dashboard()
    queried = set().union(*(metric_names(expr) for expr in dashboard_exprs(dashboard)))
    assert REQUIRED_ON_DASHBOARD - queried == set()
    exprs = " ".join(dashboard_exprs(dashboard))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, route) (rate(mira_request_duration_seconds_bucket" in exprs
        assert f"histogram_quantile({quantile}, sum by (le, provider) (rate(mira_upstream_ttfb_seconds_bucket" in exprs


def test_alerts_file_is_a_prometheus_rules_file() -> None:
    alerts = load_alerts()
    assert isinstance(alerts["groups"], list) and alerts["groups"]
    names = []
    for group in alerts["groups"]:
        assert isinstance(group["name"], str) and isinstance(group["rules"], list) and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            assert isinstance(rule["alert"], str) and re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert DURATION.match(rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names)
    down = next(rule for rule in alert_rules(alerts) if rule["alert"] == "MiraNodeDown")
    assert re.fullmatch(r'up\{job="[^"]+"\} == 0', down["expr"].strip())


# -- against the live node ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_every_queried_metric_and_label_is_exported(node_url: str, upstream: Any) -> None:
    upstream.push(Behavior(status=503))  # one retry, so that mira_upstream_retries_total has a series
    reply = await post(node_url + "/v1/chat/completions", chat_body("openai/mock-model"))
    assert reply.code == 200
    streamed = await post(node_url + "/v1/chat/completions", chat_body("groq/mock-model", stream=True))
    assert streamed.code == 200 and b"[DONE]" in streamed.body
    assert len(upstream.requests) == 3
    scraped = await get(node_url + "/metrics")
    assert scraped.code == 200
    exported = exported_series(scraped.body.decode())

    exprs = dashboard_exprs(load_dashboard()) + alert_exprs()
    assert unknown_names(exprs, exported) == {}
    assert unknown_labels(exprs, exported) == {}

    queried = set().union(*(metric_names(expr) for expr in exprs))
    assert PLANNED.keys() <= queried, "a planned metric nobody queries: drop it from PLANNED"
    # a histogram is shown by its buckets; _sum, _count and _created need no panel of their own
    series = {name for name in exported if name.startswith("mira_") and not name.endswith(("_created", "_sum", "_count"))}
    assert series - queried == set(), "exported but on no panel: add one to deploy/grafana/mira-node.json"


def test_the_checks_catch_unknown_names_and_labels() -> None:
    exported = {"mira_requests_total": {"route", "status"}, "mira_x_seconds_bucket": {"le", "route"}}
    assert unknown_names(['sum(rate(mira_request_total{route="chat"}[5m]))'], exported) == {
        'sum(rate(mira_request_total{route="chat"}[5m]))': {"mira_request_total"}
    }
    assert unknown_names(["up == 0", "mira_provider_up == 0", "rate(http_requests_total{a=\"b\"}[1m])"], exported) == {
        "rate(http_requests_total{a=\"b\"}[1m])": {"http_requests_total"}
    }
    expr = 'sum by (routes) (rate(mira_requests_total{job=~"$job", stat="200"}[5m]))'
    assert unknown_labels([expr], exported) == {expr: {"routes", "stat"}}
    fine = 'histogram_quantile(0.5, sum by (le, route) (rate(mira_x_seconds_bucket{instance=~"$instance"}[5m])))'
    assert unknown_labels([fine], exported) == {}


def test_alert_rules_pass_promtool() -> None:
    """promtool checks the rules and runs their unit tests; without it: a skip, but under CI=true a failure."""
    if shutil.which("promtool") is None:
        message = "promtool is not installed: apt-get install prometheus (Debian's package ships promtool)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; under CI=true the alert rules must be checked")
        pytest.skip(message)
    for command in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS_TEST)]):
        done = subprocess.run(["promtool", *command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
