"""What the monitoring files say, read the way Prometheus and Grafana read them: the rules' and the
dashboards' PromQL expressions, the metric names they use, and the names a server exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
PROMETHEUS_MADE = {"up", "ALERTS"}  # series Prometheus itself writes: scrape health, alert states

# Values for Grafana's variables, so a panel's query becomes plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$job": "unetkit", "$instance": ".*", "$route": "/v1/segment"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
            "unless", "inf", "nan"}


def rules() -> Iterator[dict[str, Any]]:
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def annotation_queries(rule: dict[str, Any]) -> list[str]:
    """The PromQL an alert's annotations run through the `query` template function."""
    text = " ".join(rule.get("annotations", {}).values())
    return re.findall(r'printf "([^"]*)"[^}]*\| query', text)


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def grafana_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL with the variables filled in) for every panel target and query variable."""
    for panel in panels(dashboard):
        for t in panel.get("targets", []):
            yield f"{dashboard['uid']}: {panel['title']} [{t['refId']}]", fill_variables(t["expr"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"])
            assert inner, f"{dashboard['uid']}: variable {variable['name']}: {variable['definition']}"
            yield f"{dashboard['uid']}: variable {variable['name']}", fill_variables(inner.group(1))


def fill_variables(expr: str) -> str:
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a Grafana variable without a test value in: {expr}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names, durations,
    strings and the label lists of by/without/on/ignoring/group_* left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+\w+", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def exported_names(exposition: str) -> set[str]:
    """Every series name a /metrics text exposition can produce, from its `# TYPE` lines (so a
    labelled metric that has seen no event yet counts too): histograms give _bucket/_sum/_count."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names
