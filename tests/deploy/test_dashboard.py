"""The Grafana dashboard charts/lamina/files/dashboards/lamina.json: every query selects only
series the code exports (recording rules resolved through rules.yaml), every per-function
query follows the `$function` selector, everything reads from the `$datasource` variable,
and every query is valid PromQL (promtool, with Grafana's variables substituted).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import (
    ROOT,
    by_labels,
    check_selectors,
    exported_series,
    load_rules,
    recording_rules,
    run_promtool,
    selectors,
)

DASHBOARD = ROOT / "charts" / "lamina" / "files" / "dashboards" / "lamina.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FUNCTION_MATCHER = ("function", "=~", "$function")
#: Grafana's template variable functions (not PromQL): label_values(label) or label_values(selector, label).
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$", re.DOTALL)
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.+)\)\s*$", re.DOTALL)
#: What Grafana puts in place of its variables, for promtool to parse the queries.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$function": ".*"}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that queries (rows' nested panels included, rows themselves not)."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def template_expr(query: str) -> str:
    """The PromQL inside a template variable's query."""
    if match := _LABEL_VALUES.match(query):
        return match["selector"] or ""
    if match := _QUERY_RESULT.match(query):
        return match["expr"]
    return query


def check_dashboard(dashboard: dict[str, Any], rules: dict[str, Any], series: dict[str, set[str]]) -> list[str]:
    """What is wrong with ``dashboard`` (empty: nothing)."""
    records = recording_rules(rules)
    problems: list[str] = []
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}

    datasource = variables.get("datasource")
    if datasource is None or datasource["type"] != "datasource" or datasource.get("query") != "prometheus":
        problems.append("no `datasource` template variable of type prometheus")
    function = variables.get("function")
    if function is None or function["type"] != "query":
        problems.append("no `function` query variable")
    else:
        match = _LABEL_VALUES.match(variable_query(function))
        if match is None or match["label"] != "function" or not match["selector"]:
            problems.append("the `function` variable is not label_values(<metric>, function)")
        if not (function.get("multi") and function.get("includeAll")):
            problems.append("the `function` variable must allow several values and All")
        if function.get("datasource") != DATASOURCE:
            problems.append("the `function` variable does not use $datasource")

    for name, variable in variables.items():
        if variable["type"] == "query":
            expr = template_expr(variable_query(variable))
            problems += check_selectors(f"variable {name}", expr, series, records)
            problems += _recorded(f"variable {name}", expr, series, records)

    for panel in panels(dashboard):
        where = f"panel {panel.get('title')!r}"
        if panel.get("datasource") != DATASOURCE:
            problems.append(f"{where}: datasource is not $datasource")
        if not panel.get("targets"):
            problems.append(f"{where}: no queries")
        for target in panel.get("targets", []):
            if target.get("datasource", DATASOURCE) != DATASOURCE:
                problems.append(f"{where}: query {target.get('refId')} does not use $datasource")
            expr = target["expr"]
            problems += check_selectors(where, expr, series, records)
            problems += _recorded(where, expr, series, records)
            problems += _per_function(where, expr, series, records)
    return problems


def _recorded(where: str, expr: str, series: dict[str, set[str]], records: dict[str, str]) -> list[str]:
    """The check of the expressions of the recording rules ``expr`` uses (and theirs)."""
    problems: list[str] = []
    seen: set[str] = set()
    pending = [s.name for s in _selectors(expr) if s.name in records]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        problems += check_selectors(f"{where} (through {name})", records[name], series, records)
        pending += [s.name for s in _selectors(records[name]) if s.name in records]
    return problems


def _per_function(where: str, expr: str, series: dict[str, set[str]], records: dict[str, str]) -> list[str]:
    """Every selector of a series that has a `function` label must follow the `$function` variable."""
    problems = []
    for selector in _selectors(expr):
        labels = by_labels(records[selector.name]) if selector.name in records else series.get(selector.name, set())
        if "function" in labels and FUNCTION_MATCHER not in selector.matchers:
            problems.append(f'{where}: {selector.name} is per function but not filtered by function=~"$function"')
    return problems


def _selectors(expr: str) -> list[Any]:
    try:
        return selectors(expr)
    except ValueError:
        return []  # reported by check_selectors


def test_the_dashboard_uses_only_exported_metrics_and_follows_its_variables():
    assert check_dashboard(load_dashboard(), load_rules(), exported_series()) == []


def test_the_dashboard_covers_what_the_issue_asks():
    exprs = "\n".join(t["expr"] for p in panels(load_dashboard()) for t in p["targets"])
    for needed in ("lamina_invoker_invocations_total", 'outcome!="success"', "histogram_quantile(0.5,",
                   "histogram_quantile(0.99,", "lamina_invoker_duration_seconds_bucket", "lamina_invoker_cold_starts_total",
                   "lamina_invoker_init_duration_seconds_bucket", "lamina_invoker_warm_workers",
                   "lamina_invoker_busy_workers", "lamina_invoker_gb_seconds_total", "lamina_gateway_async_queue_depth",
                   "lamina_gateway_async_queue_age_seconds"):
        assert needed in exprs, needed


def test_the_dashboard_is_a_current_grafana_dashboard():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("description"), f"panel {panel['title']!r} has no description"
            assert [t["refId"] for t in panel["targets"]] == [chr(65 + i) for i in range(len(panel["targets"]))]


def test_every_query_is_valid_promql(tmp_path: Path):
    """promtool parses each query (Grafana's variables substituted) as a recording rule."""
    exprs = [t["expr"] for p in panels(load_dashboard()) for t in p["targets"]]
    exprs += [template_expr(variable_query(v)) for v in load_dashboard()["templating"]["list"] if v["type"] == "query"]
    rules = []
    for i, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run_promtool("check", "rules", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_panel_is_documented():
    doc = (ROOT / "docs" / "monitoring.md").read_text()
    for panel in panels(load_dashboard()):
        assert f"**{panel['title']}**" in doc, f"docs/monitoring.md does not explain panel {panel['title']!r}"


# --- the check itself can fail (on an in-memory copy) -----------------------------------------------


def _first_target(dashboard: dict[str, Any]) -> dict[str, Any]:
    return next(panels(dashboard))["targets"][0]


def _set_expr(expr: str) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def change(dashboard: dict[str, Any], rules: dict[str, Any]) -> None:
        _first_target(dashboard)["expr"] = expr
    return change


def _break_rule(dashboard: dict[str, Any], rules: dict[str, Any]) -> None:
    _first_target(dashboard)["expr"] = 'sum(lamina:gb_seconds:rate5m{function=~"$function"})'
    rule = next(r for g in rules["groups"] for r in g["rules"] if r.get("record") == "lamina:gb_seconds:rate5m")
    rule["expr"] = rule["expr"].replace("lamina_invoker_gb_seconds_total", "lamina_invoker_gb_secs_total")


def _hardcode_datasource(dashboard: dict[str, Any], rules: dict[str, Any]) -> None:
    next(panels(dashboard))["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}


def _single_function(dashboard: dict[str, Any], rules: dict[str, Any]) -> None:
    next(v for v in dashboard["templating"]["list"] if v["name"] == "function")["multi"] = False


def _unknown_variable_metric(dashboard: dict[str, Any], rules: dict[str, Any]) -> None:
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "function")
    variable["query"]["query"] = "label_values(lamina_functions_total, function)"


@pytest.mark.parametrize(("change", "problem"), [
    (_set_expr('sum by (function) (rate(lamina_invoker_invokations_total{function=~"$function"}[5m]))'),
     "lamina_invoker_invokations_total is not a series the code exports"),
    (_set_expr('sum by (function) (rate(lamina_gateway_invocations{function=~"$function"}[5m]))'),
     "lamina_gateway_invocations is not a series the code exports"),
    (_set_expr('sum(lamina_invoker_invocations_total{function=~"$function", result="ok"})'),
     "lamina_invoker_invocations_total has no label 'result'"),
    (_set_expr("sum by (function) (rate(lamina_invoker_invocations_total[5m]))"),
     'lamina_invoker_invocations_total is per function but not filtered by function=~"$function"'),
    (_set_expr('lamina:made_up:rate5m{function=~"$function"}'), "recording rule lamina:made_up:rate5m is not in rules.yaml"),
    (_set_expr("sum by (function) (lamina:invocations:rate5m)"),
     'lamina:invocations:rate5m is per function but not filtered by function=~"$function"'),
    (_break_rule, "(through lamina:gb_seconds:rate5m): lamina_invoker_gb_secs_total is not a series the code exports"),
    (_hardcode_datasource, "datasource is not $datasource"),
    (_single_function, "the `function` variable must allow several values and All"),
    (_unknown_variable_metric, "variable function: lamina_functions_total is not a series the code exports"),
])
def test_the_check_finds_a_wrong_dashboard(change: Callable[[dict[str, Any], dict[str, Any]], None], problem: str):
    dashboard, rules = copy.deepcopy(load_dashboard()), copy.deepcopy(load_rules())
    change(dashboard, rules)
    problems = check_dashboard(dashboard, rules, exported_series())
    assert len(problems) == 1 and problem in problems[0], problems
