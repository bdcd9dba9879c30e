"""The monitoring assets under deploy/monitoring/ (and the Helm chart's identical copies): the
Prometheus rules file has the shape Prometheus loads, every PromQL expression in it and in the
Grafana dashboard parses (promql-parser, the Rust parser's Python bindings), and every metric
they read is one the worker or the operator actually exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from embedfleet_operator import operator_metrics
from embedfleet_worker import metrics as worker_metrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
CHART_FILES = ROOT / "charts" / "embedfleet" / "files"
RULES = MONITORING / "embedfleet-alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"

WORKER_JOB = "embedfleet-workers"
OPERATOR_JOB = "embedfleet-operator"
REQUIRED_ALERTS = {
    "EmbedfleetWorkerDown",
    "EmbedfleetQueueSaturated",
    "EmbedfleetHighErrorRate",
    "EmbedfleetFleetAtMax",
    "EmbedfleetScrapeFailures",
}
SEVERITIES = {"critical", "warning", "info"}
# Grafana's own variables, replaced by a harmless value before parsing.
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


# What the two programs define: module constants, plus the series a histogram expands to.


def constants(module: Any) -> set[str]:
    return {
        value
        for name, value in vars(module).items()
        if re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and isinstance(value, str)
    }


def histogram_names(registry: Any) -> set[str]:
    return {family.name for family in registry.collect() if family.type == "histogram"}


def defined_metrics() -> set[str]:
    names = constants(worker_metrics) | constants(operator_metrics)
    histograms = histogram_names(worker_metrics.WorkerMetrics().registry) | histogram_names(
        operator_metrics.OperatorMetrics().registry
    )
    assert histograms <= names  # the registries use the constants, not literals
    for histogram in histograms:
        names |= {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"}
    return names | {"up"}


ALLOWED_METRICS = defined_metrics()


# PromQL helpers.


def selectors(expr: Any) -> list[Any]:
    found: list[Any] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(expr, pre_visit=visit)
    return found


def matchers(selector: Any) -> dict[str, tuple[str, str]]:
    return {m.name: (str(m.op), m.value) for m in selector.matchers.matchers}


def metric_name(selector: Any) -> str:
    if selector.name:
        return str(selector.name)
    op, value = matchers(selector)["__name__"]
    assert op.endswith("Equal"), f"metric name by regex: {selector}"
    return value


def output_labels(node: Any) -> frozenset[str] | None:
    """Labels every result series of `node` is sure to carry; None when it keeps the input
    series' labels as they are (a plain selector), so any target label may be there."""
    if isinstance(node, promql_parser.ParenExpr):
        return output_labels(node.expr)
    if isinstance(node, promql_parser.NumberLiteral):
        return frozenset()
    if isinstance(node, promql_parser.AggregateExpr):
        modifier = node.modifier
        if modifier is None:
            return frozenset()
        if str(modifier.type).endswith("By"):
            return frozenset(modifier.labels)
        return None
    if isinstance(node, promql_parser.Call):
        name = node.func.name
        if name == "histogram_quantile":
            inner = output_labels(node.args[1])
            return None if inner is None else inner - {"le"}
        if name == "absent":
            return frozenset()
        vectors = [a for a in node.args if not isinstance(a, promql_parser.NumberLiteral)]
        return output_labels(vectors[0]) if vectors else frozenset()
    if isinstance(node, promql_parser.MatrixSelector):
        return None
    if isinstance(node, promql_parser.BinaryExpr):
        left, right = output_labels(node.lhs), output_labels(node.rhs)
        if str(node.op) == "or":
            if left is None or right is None:
                return right if left is None else left
            return left & right
        if isinstance(node.lhs, promql_parser.NumberLiteral):
            return right
        return left
    return None


def substitute_grafana_variables(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return "5m" if name in GRAFANA_BUILTINS else "x"

    return GRAFANA_VARIABLE.sub(value, expr)


def check_selector_conventions(expr: Any, where: str) -> None:
    """Worker series are read with job="embedfleet-workers" and the Prometheus target label
    `embedfleet_service`; the operator's with job="embedfleet-operator" and its own `service`."""
    for selector in selectors(expr):
        name = metric_name(selector)
        assert name in ALLOWED_METRICS, f"{where}: {name} is not a metric embedfleet defines"
        found = matchers(selector)
        assert "job" in found, f"{where}: {selector} has no job matcher"
        op, job = found["job"]
        assert op.endswith("Equal"), f"{where}: {selector}"
        if name.startswith("embedfleet_operator_"):
            assert job == OPERATOR_JOB, f"{where}: {selector}"
            assert "embedfleet_service" not in found, f"{where}: operator series use `service`"
        elif name != "up":
            assert job == WORKER_JOB, f"{where}: {selector}"
            assert "service" not in found, f"{where}: worker series use `embedfleet_service`"
        else:
            assert job in (WORKER_JOB, OPERATOR_JOB), f"{where}: {selector}"


# The helpers, so that a mis-read cannot make the real checks pass.


def test_helpers_see_names_labels_and_variables() -> None:
    expr = promql_parser.parse(
        'sum by (namespace, embedfleet_service) (rate(embedfleet_requests_total{code="5"}[5m]))'
        ' / sum by (namespace, embedfleet_service) (rate({__name__="up"}[5m])) > 0.05'
    )
    assert [metric_name(s) for s in selectors(expr)] == ["embedfleet_requests_total", "up"]
    assert output_labels(expr) == {"namespace", "embedfleet_service"}
    quantile = promql_parser.parse("histogram_quantile(0.9, sum by (pod, le) (rate(x[1m]))) > 1")
    assert output_labels(quantile) == {"pod"}
    assert output_labels(promql_parser.parse("up == 0")) is None
    assert substitute_grafana_variables('rate(a{n=~"$namespace"}[$__rate_interval])') == (
        'rate(a{n=~"x"}[5m])'
    )
    with pytest.raises(ValueError, match="parenthesis"):
        promql_parser.parse("sum(rate(up[5m])")
    with pytest.raises(AssertionError, match="not a metric"):
        check_selector_conventions(promql_parser.parse('embedfleet_made_up{job="x"}'), "t")
    bad = promql_parser.parse(f'embedfleet_queue_tokens{{job="{WORKER_JOB}", service="a"}}')
    with pytest.raises(AssertionError, match="embedfleet_service"):
        check_selector_conventions(bad, "t")


def test_defined_metrics_include_the_histogram_series_and_the_max_gauge() -> None:
    assert f"{worker_metrics.REQUEST_DURATION}_bucket" in ALLOWED_METRICS
    assert f"{operator_metrics.TICK_DURATION}_count" in ALLOWED_METRICS
    assert f"{worker_metrics.REQUESTS_TOTAL}_bucket" not in ALLOWED_METRICS
    # EmbedfleetFleetAtMax compares the desired replicas with this gauge.
    assert operator_metrics.MAX_REPLICAS == "embedfleet_operator_max_replicas"


# The chart embeds the same files.


@pytest.mark.parametrize("name", ["embedfleet-alerts.yaml", "grafana-dashboard.json"])
def test_chart_copies_are_identical(name: str) -> None:
    assert (CHART_FILES / name).read_bytes() == (MONITORING / name).read_bytes(), (
        f"charts/embedfleet/files/{name} differs from deploy/monitoring/{name}: copy it over"
    )


# Alerting rules.


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        yield from group["rules"]


def test_rules_file_structure() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    groups = document["groups"]
    assert groups
    assert len({g["name"] for g in groups}) == len(groups), "group names must be unique"
    names = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group.keys()
        assert isinstance(group["name"], str)
        assert group["name"]
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule.keys()
            assert re.fullmatch(r"Embedfleet[A-Z][A-Za-z]+", rule["alert"]), rule["alert"]
            names.append(rule["alert"])
            assert isinstance(rule["expr"], str)
            assert promql_parser.parse_duration(rule["for"]).total_seconds() > 0
            assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
            annotations = rule["annotations"]
            assert annotations["summary"].strip(), rule["alert"]
            assert annotations["description"].strip(), rule["alert"]
            assert "runbook" in annotations["description"].lower(), rule["alert"]
    assert len(set(names)) == len(names), "alert names must be unique"
    assert set(names) >= REQUIRED_ALERTS, REQUIRED_ALERTS - set(names)


@pytest.mark.parametrize("rule", list(alert_rules()), ids=lambda r: r["alert"])
def test_alert_expression_parses_and_reads_defined_metrics(rule: dict[str, Any]) -> None:
    expr = promql_parser.parse(rule["expr"])
    assert selectors(expr), rule["alert"]
    check_selector_conventions(expr, rule["alert"])


@pytest.mark.parametrize("rule", list(alert_rules()), ids=lambda r: r["alert"])
def test_alert_annotations_use_labels_the_expression_keeps(rule: dict[str, Any]) -> None:
    """`{{ $labels.x }}` renders empty when the alert's series has no label x (e.g. an
    aggregation that grouped it away, or `service` on a worker series)."""
    text = " ".join(rule["annotations"].values())
    assert text.count("{{") == text.count("}}"), rule["alert"]
    used = set(re.findall(r"\$labels\.(\w+)", text))
    kept = output_labels(promql_parser.parse(rule["expr"]))
    if kept is not None:
        assert used <= kept, f"{rule['alert']}: {used - kept} not in the result's labels {kept}"
    else:  # a bare selector keeps the target labels of its job
        job = matchers(selectors(promql_parser.parse(rule["expr"]))[0])["job"][1]
        target = {"job", "instance", "namespace", "pod"}
        target |= {"embedfleet_service"} if job == WORKER_JOB else {"service"}
        assert used <= target, f"{rule['alert']}: {used - target}"


def test_alert_thresholds_are_the_documented_ones() -> None:
    by_name = {r["alert"]: r for r in alert_rules()}
    assert by_name["EmbedfleetWorkerDown"]["for"] == "5m"
    assert by_name["EmbedfleetHighErrorRate"]["for"] == "10m"
    assert re.search(r">\s*0\.05\s*$", by_name["EmbedfleetHighErrorRate"]["expr"])
    assert by_name["EmbedfleetFleetAtMax"]["for"] == "15m"
    assert operator_metrics.MAX_REPLICAS in by_name["EmbedfleetFleetAtMax"]["expr"]
    assert operator_metrics.DESIRED_REPLICAS in by_name["EmbedfleetFleetAtMax"]["expr"]
    assert by_name["EmbedfleetScrapeFailures"]["for"] == "10m"
    assert 'code="429"' in by_name["EmbedfleetQueueSaturated"]["expr"]


# Grafana dashboard.


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def dashboard_expressions() -> list[tuple[str, str]]:
    found = []
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            found.append((f"{panel['title']}/{target['refId']}", target["expr"]))
    return found


def variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def test_dashboard_structure() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    assert board["uid"]
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # Every query goes to the data source the viewer picked, none to a hard-wired one.
    selected = {"type": "prometheus", "uid": "${datasource}"}
    for name, label in (("namespace", "namespace"), ("service", "embedfleet_service")):
        query = variable_query(variables[name])
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, query
        assert match.group(2) == label
        assert variables[name]["datasource"] == selected, name
        inner = promql_parser.parse(substitute_grafana_variables(match.group(1)))
        check_selector_conventions(inner, f"variable {name}")
    ids = [p["id"] for p in panels(board)]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == selected, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", selected) == selected, panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]


@pytest.mark.parametrize(("where", "expr"), dashboard_expressions(), ids=lambda v: str(v)[:60])
def test_dashboard_expression_parses_and_reads_defined_metrics(where: str, expr: str) -> None:
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    for match in GRAFANA_VARIABLE.finditer(expr):
        name = match.group(1) or match.group(2)
        assert name in variables | GRAFANA_BUILTINS, f"{where}: unknown variable ${name}"
    parsed = promql_parser.parse(substitute_grafana_variables(expr))
    check_selector_conventions(parsed, where)
    for selector in selectors(parsed):  # every series follows the chosen namespace/service
        found = matchers(selector)
        if found["job"][1] == OPERATOR_JOB and metric_name(selector).endswith(
            "_tick_seconds_bucket"
        ):
            continue  # the tick histogram is operator-wide, it has no service label
        service_label = "service" if found["job"][1] == OPERATOR_JOB else "embedfleet_service"
        assert found.get("namespace") == ("MatchOp.Re", "x"), f"{where}: {selector}"
        assert found.get(service_label) == ("MatchOp.Re", "x"), f"{where}: {selector}"


def test_dashboard_shows_the_required_series() -> None:
    text = " ".join(expr for _, expr in dashboard_expressions())
    used = {
        metric_name(s)
        for _, expr in dashboard_expressions()
        for s in selectors(promql_parser.parse(substitute_grafana_variables(expr)))
    }
    required = {
        worker_metrics.REQUESTS_TOTAL,
        worker_metrics.INPUT_TOKENS_TOTAL,
        f"{worker_metrics.REQUEST_DURATION}_bucket",
        f"{worker_metrics.QUEUE_WAIT}_bucket",
        worker_metrics.QUEUE_TOKENS,
        worker_metrics.ENGINE_BUSY,
        worker_metrics.GPU_UTILIZATION,
        worker_metrics.GPU_MEMORY_USED,
        operator_metrics.DESIRED_REPLICAS,
        operator_metrics.SCALE_EVENTS,
        operator_metrics.SCRAPE_FAILURES,
        operator_metrics.SCALE_DECISIONS,
        "up",
    }
    assert required <= used, required - used
    assert any(name.startswith(worker_metrics.BATCH_TOKENS) for name in used)
    assert any(name.startswith(worker_metrics.BATCH_SIZE) for name in used)
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, " in text, quantile
    assert re.search(r"count by \(embedfleet_service\) \(up\{[^}]*\} == 1\)", text)
