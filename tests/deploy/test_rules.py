"""The Prometheus rules in charts/lamina/files/prometheus: valid (`promtool check rules`),
unit-tested (`promtool test rules`), and built only from metrics the code exports.

The metric check reads every selector of every expression with a small PromQL lexer, and
compares it with the series the code's own registries expose (a counter ``x`` is
``x_total``, a histogram ``x_bucket``/``x_sum``/``x_count``): a renamed metric or label in
the code, or a typo in a rule, fails here rather than as an alert that never fires.
test_dashboard.py applies the same check to the Grafana dashboard.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.promql import (
    MONITORING_DOC,
    PROMETHEUS_DIR,
    RULE_TESTS,
    RULES,
    check_rules,
    exported_series,
    load_rules,
    recording_rules,
    run_promtool,
    selectors,
)


def test_promtool_checks_the_rules():
    done = run_promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    count = sum(len(g["rules"]) for g in load_rules()["groups"])
    assert f"SUCCESS: {count} rules found" in done.stdout


def test_promtool_unit_tests_pass():
    assert RULE_TESTS, "no promtool tests"
    done = run_promtool("test", "rules", *(str(p.relative_to(PROMETHEUS_DIR)) for p in RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(RULE_TESTS), done.stdout


def test_promtool_fails_a_wrong_expectation(tmp_path: Path):
    """The unit tests can fail: the same rules, one expected value changed."""
    original = yaml.safe_load((PROMETHEUS_DIR / "tests" / "recording_test.yaml").read_text())
    case = original["tests"][0]["promql_expr_test"][0]
    case["exp_samples"][0]["value"] += 1
    original["rule_files"] = [str(RULES)]
    broken = tmp_path / "broken_test.yaml"
    broken.write_text(yaml.safe_dump(original))
    done = run_promtool("test", "rules", str(broken), cwd=tmp_path)
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr


def test_every_rule_uses_only_exported_metrics_and_labels():
    assert check_rules(load_rules(), exported_series()) == []


def test_every_alert_is_tested_firing_and_not_firing():
    alerts = {r["alert"] for g in load_rules()["groups"] for r in g["rules"] if "alert" in r}
    records = set(recording_rules(load_rules()))
    firing, quiet, evaluated = set(), set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for test in case.get("alert_rule_test", []):
                (firing if test.get("exp_alerts") else quiet).add(test["alertname"])
            evaluated |= {t["expr"] for t in case.get("promql_expr_test", [])}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested not firing"
    assert records - evaluated == set(), "recording rules without an expected value"


def test_every_alert_has_a_runbook_section():
    doc = MONITORING_DOC.read_text()
    anchors = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", doc, re.MULTILINE)}
    for group in load_rules()["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                runbook = rule["annotations"]["runbook"]
                assert runbook == f"docs/monitoring.md#{rule['alert'].lower()}"
                assert rule["alert"].lower() in anchors, f"docs/monitoring.md has no section {rule['alert']}"


def test_the_jobs_the_rules_name_are_the_documented_ones():
    jobs = {v for g in load_rules()["groups"] for r in g["rules"] for s in selectors(r["expr"])
            for label, _, v in s.matchers if label == "job"}
    assert jobs == {"lamina-gateway", "lamina-controller", "lamina-invoker"}
    doc = MONITORING_DOC.read_text()
    assert all(f"`{job}`" in doc for job in jobs)


# --- the checker itself can fail ----------------------------------------------------------------


@pytest.mark.parametrize(("expr", "problem"), [
    ("rate(lamina_invoker_invocatons_total[5m])", "lamina_invoker_invocatons_total is not a series the code exports"),
    ("rate(lamina_invoker_invocations[5m])", "lamina_invoker_invocations is not a series the code exports"),
    ("lamina_invoker_warm_workers_total", "lamina_invoker_warm_workers_total is not a series the code exports"),
    ('sum(lamina_gateway_invocations_total{status="500"})', "lamina_gateway_invocations_total has no label 'status'"),
    ("lamina:nope:rate5m > 1", "recording rule lamina:nope:rate5m is not in rules.yaml"),
    ("rat(lamina_invoker_invocations_total[5m])", "unknown PromQL function rat()"),
])
def test_the_check_finds_a_wrong_rule(expr: str, problem: str):
    rules = copy.deepcopy(load_rules())
    rules["groups"][-1]["rules"].append({
        "alert": "Broken", "expr": expr, "labels": {"severity": "warning"},
        "annotations": {"summary": "s", "description": "d", "runbook": "r"}})
    problems = check_rules(rules, exported_series())
    assert len(problems) == 1 and problem in problems[0], problems


def test_the_check_finds_an_alert_without_severity():
    rules = copy.deepcopy(load_rules())
    alert = next(r for r in rules["groups"][-1]["rules"] if "alert" in r)
    del alert["labels"]["severity"]
    del alert["annotations"]["description"]
    assert check_rules(rules, exported_series()) == [
        f"{alert['alert']}: severity must be critical, warning or info", f"{alert['alert']}: no description annotation"]


def test_the_lexer_reads_selectors_labels_and_variables():
    found = selectors('sum by (function, le) (rate(lamina_x_bucket{function=~"$function", a!="b,c}"}[$__rate_interval]))'
                      ' / on (function) group_left (outcome) max(y offset 5m) > bool 0.5e1 or {__name__="z"}')
    assert [(s.name, s.matchers) for s in found] == [
        ("lamina_x_bucket", [("function", "=~", "$function"), ("a", "!=", "b,c}")]), ("y", []),
        ("z", [("__name__", "=", "z")])]
