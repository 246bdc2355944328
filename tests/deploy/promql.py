"""What the Prometheus rules and the Grafana dashboard are checked with: a small PromQL
lexer, the series the code's own registries export, the rules file, and promtool."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from controller.metrics import ControllerMetrics
from gateway.metrics import GatewayMetrics
from invoker.metrics import InvokerMetrics
from tests.conftest import required_tool

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "charts" / "lamina" / "files" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yaml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yaml"))
MONITORING_DOC = ROOT / "docs" / "monitoring.md"

#: The functions of PromQL (Prometheus 2.42) and its aggregation operators.
FUNCTIONS = frozenset("""
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes clamp clamp_max
    clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year days_in_month deg delta deriv exp
    floor histogram_count histogram_fraction histogram_quantile histogram_sum holt_winters hour idelta increase
    irate label_join label_replace last_over_time ln log10 log2 max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh sort sort_desc
    sqrt stddev_over_time stdvar_over_time sum_over_time tan tanh time timestamp vector year
    start end
""".split())
AGGREGATIONS = frozenset("sum min max avg group stddev stdvar count count_values bottomk topk quantile".split())
#: Keywords followed by a parenthesised list of label names.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
#: Labels every sample may carry besides its own: the scrape's (job, instance), the federating
#: gateway's (invoker), and what a ServiceMonitor's relabelling usually adds.
TARGET_LABELS = frozenset({"job", "instance", "invoker", "pod", "namespace", "service", "container", "endpoint"})

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
  | (?P<ident>[a-zA-Z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^@(){}\[\],=<>])
""", re.VERBOSE)


@dataclass
class Selector:
    """One vector selector: a metric name and its label matchers (label, op, value)."""

    name: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        pos = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("ws", "comment"):
            yield kind, match.group()


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of ``expr``; ``ValueError`` for a call of an unknown function.

    Grafana's variables (``$function``, ``$__rate_interval``) may appear in strings and ranges."""
    toks = list(tokens(expr))
    found: list[Selector] = []
    i = 0

    def skip_group(i: int, opening: str, closing: str) -> int:
        depth = 0
        while i < len(toks):
            if toks[i][1] == opening:
                depth += 1
            elif toks[i][1] == closing:
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        raise ValueError(f"unbalanced {opening!r} in {expr!r}")

    def matchers(i: int, selector: Selector) -> int:
        # i is at "{": label op "value" pairs separated by commas.
        i += 1
        while toks[i][1] != "}":
            if toks[i][1] == ",":
                i += 1
                continue
            label, op, value = toks[i][1], toks[i + 1][1], toks[i + 2][1]
            selector.matchers.append((label, op, value[1:-1]))
            i += 3
        return i + 1

    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1][1] if i + 1 < len(toks) else ""
        if kind == "ident" and text in LABEL_LIST_KEYWORDS and following == "(":
            i = skip_group(i + 1, "(", ")")
        elif kind == "ident" and text in AGGREGATIONS and following in ("(", "by", "without"):
            i += 1
        elif kind == "ident" and following == "(":
            if text not in FUNCTIONS:
                raise ValueError(f"unknown PromQL function {text}() in {expr!r}")
            i += 1
        elif kind == "ident" and text.lower() in KEYWORDS:
            i += 1
        elif kind == "ident":
            selector = Selector(text)
            found.append(selector)
            i = matchers(i + 1, selector) if following == "{" else i + 1
        elif text == "{":
            # A selector without a name: {__name__="x", ...}.
            selector = Selector("")
            i = matchers(i, selector)
            selector.name = next((v for label, op, v in selector.matchers if label == "__name__" and op == "="), "")
            found.append(selector)
        elif text == "[":
            i = skip_group(i, "[", "]")
        else:
            i += 1
    return found


def by_labels(expr: str) -> set[str]:
    """The labels of every ``by (...)`` clause of ``expr``: what a recording rule keeps."""
    return {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")
            if label.strip()}


def exported_series() -> dict[str, set[str]]:
    """Every series name the code's registries expose, with the labels it carries, plus `up`."""
    series: dict[str, set[str]] = {"up": set()}
    for registry in (GatewayMetrics().registry, InvokerMetrics().registry, ControllerMetrics().registry):
        for name, (kind, labels) in _families(registry).items():
            suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                        "summary": ["", "_sum", "_count", "_created"], "info": ["_info"]}.get(kind, [""])
            for suffix in suffixes:
                series[name + suffix] = set(labels) | ({"le"} if suffix == "_bucket" else set()) | (
                    {"quantile"} if kind == "summary" and suffix == "" else set())
    return series


def _families(registry: CollectorRegistry) -> dict[str, tuple[str, tuple[str, ...]]]:
    """name -> (type, label names) of each family in ``registry``. Label names come from the
    collectors (``_labelnames``: prometheus_client keeps them there for labelled metrics and
    for described families); a family without samples shows none of its own."""
    families: dict[str, tuple[str, tuple[str, ...]]] = {}
    for collector in list(registry._collector_to_names):  # noqa: SLF001 - the registry offers no public listing
        described = collector.describe() if hasattr(collector, "describe") else []
        labels = getattr(collector, "_labelnames", None)
        for family in collector.collect():
            own = labels if labels is not None else next(
                (getattr(d, "_labelnames", ()) for d in described if d.name == family.name), ())
            families[family.name] = (family.type, tuple(own))
    return families


def load_rules(path: Path = RULES) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def recording_rules(rules: dict[str, Any]) -> dict[str, str]:
    """record name -> expression."""
    return {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "record" in r}


def check_selectors(where: str, expr: str, series: dict[str, set[str]], records: dict[str, str]) -> list[str]:
    """What is wrong with the metrics and labels ``expr`` selects (empty: nothing)."""
    try:
        found = selectors(expr)
    except ValueError as exc:
        return [f"{where}: {exc}"]
    problems = []
    for selector in found:
        if ":" in selector.name:
            if selector.name not in records:
                problems.append(f"{where}: recording rule {selector.name} is not in rules.yaml")
                continue
            labels = by_labels(records[selector.name])
        elif selector.name in series:
            labels = series[selector.name] | TARGET_LABELS
        else:
            problems.append(f"{where}: {selector.name or '{…}'} is not a series the code exports")
            continue
        for label, _, _ in selector.matchers:
            if label != "__name__" and label not in labels:
                problems.append(f"{where}: {selector.name} has no label {label!r}")
    return problems


def check_rules(rules: dict[str, Any], series: dict[str, set[str]]) -> list[str]:
    """Problems of every expression in ``rules``: unknown metrics, labels or recording rules,
    and alerts without severity, summary, description or runbook."""
    records = recording_rules(rules)
    problems = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            problems += check_selectors(f"{group['name']}/{name}", rule["expr"], series, records)
            if "alert" in rule:
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    problems.append(f"{name}: severity must be critical, warning or info")
                missing = {"summary", "description", "runbook"} - set(rule.get("annotations", {}))
                if missing:
                    problems.append(f"{name}: no {', '.join(sorted(missing))} annotation")
    return problems


def promtool() -> str:
    """The promtool binary: skipped locally when absent, a failure in CI."""
    return required_tool("promtool", "Debian: apt-get install prometheus")


def run_promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


# --- the rules file ------------------------------------------------------------------------
