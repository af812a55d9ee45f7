"""deploy/prometheus: the rules pass `promtool check rules`, their unit tests pass `promtool test
rules` (each alert fires on a synthetic series and stays quiet otherwise), every alert carries what
an on-call engineer needs, and the example scrape configuration is valid."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy.monitoring import (
    ROOT,
    RULES,
    alerts,
    annotation_queries,
    metric_names,
    recorded_names,
    rules,
)

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"


def promtool(tools: dict[str, str], *args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([tools["promtool"], *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_promtool_checks_the_rule_files(prometheus_tools):
    files = sorted(RULES.glob("*.yml"))
    assert [f.name for f in files] == ["quality.yml", "serving.yml", "slo.yml"]
    result = promtool(prometheus_tools, "check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files)
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
    assert found == len(list(rules())) > 20


def test_promtool_rejects_a_broken_rule(prometheus_tools, tmp_path):
    """The check is not a formality: a PromQL error or a bad template fails it."""
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"alert": "Broken", "expr": "sum by (job) (rate(unetkit_http_requests_total[5m])"}]}]}))
    result = promtool(prometheus_tools, "check", "rules", bad)
    assert result.returncode != 0 and "unclosed left parenthesis" in result.stdout + result.stderr


def test_promtool_unit_tests_pass(prometheus_tools):
    result = promtool(prometheus_tools, "test", "rules", *UNIT_TESTS, cwd=PROMETHEUS_DIR / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS)


def test_promtool_unit_tests_can_fail(prometheus_tools, tmp_path):
    """A unit test that expects a wrong alert fails: the passing ones above mean something."""
    test = yaml.safe_load((PROMETHEUS_DIR / "tests" / "serving_test.yml").read_text())
    test["rule_files"] = [str(RULES / "serving.yml")]
    case = test["tests"][0]
    case["alert_rule_test"] = [{"eval_time": "4m", "alertname": "UnetkitInstanceDown",
                                "exp_alerts": [{"exp_labels": {"severity": "warning", "job": "unetkit", "instance": "a"}}]}]
    test["tests"] = [case]
    (tmp_path / "wrong.yml").write_text(yaml.safe_dump(test))
    result = promtool(prometheus_tools, "test", "rules", tmp_path / "wrong.yml")
    assert result.returncode != 0 and "UnetkitInstanceDown" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet():
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never shown firing in deploy/prometheus/tests"
    assert names - quiet == set(), "alerts never shown quiet in deploy/prometheus/tests"
    assert firing | quiet <= names


def test_every_alert_has_severity_summary_description_and_a_runbook_section():
    runbook = RUNBOOK.read_text()
    sections = re.findall(r"^## (\w+)$", runbook, re.MULTILINE)
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))
    assert sorted(sections) == sorted(names), "docs/runbook.md needs exactly one section per alert"
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"] == f"docs/runbook.md#{name.lower()}", name
        assert len(annotations["description"]) > 80, name
        section = runbook.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**What it means.**", "**First checks.**", "**Mitigation.**"):
            assert part in section, f"docs/runbook.md, {name}: no {part}"
        assert f"[{name}](#{name.lower()})" in runbook  # in the index table


def test_rules_use_only_exported_metrics(exported_metric_names):
    known = exported_metric_names | recorded_names() | {"up"}
    for rule in rules():
        for expr in [rule["expr"], *annotation_queries(rule)]:
            unknown = metric_names(expr) - known
            assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)} not exported by the server"


def test_slo_numbers_agree_everywhere():
    """99.9% / 99% within 2 s: the rules, the dashboards' source and the docs say the same."""
    slo = (RULES / "slo.yml").read_text()
    assert set(re.findall(r'le="([^"]+)"', slo)) == {"2.0"}
    assert set(re.findall(r"\(14\.4 \* ([\d.]+)\)", slo)) == set(re.findall(r"\(6 \* ([\d.]+)\)", slo)) == {"0.001", "0.01"}
    build = (ROOT / "deploy" / "grafana" / "build.py").read_text()
    assert 'LATENCY_BUCKET = "2.0"' in build and "AVAILABILITY_BUDGET = 0.001" in build and "LATENCY_BUDGET = 0.01" in build
    docs = (ROOT / "docs" / "monitoring-alerts.md").read_text()
    assert "99.9%" in docs and "99%" in docs and "2 s" in docs


def test_example_prometheus_config_is_valid_and_matches_the_deployment(prometheus_tools, tmp_path):
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["job_name"] == "unetkit"  # the rules select up{job="unetkit"}
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["metadata"]
    keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"] == pod["labels"]["app.kubernetes.io/name"]
    assert keep["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == pod["annotations"]["prometheus.io/scrape"]
    assert job["metrics_path"] == pod["annotations"]["prometheus.io/path"]
    # the server answers /metrics only to a token with the metrics scope
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env.get("UNETKIT_SERVE_PUBLIC_METRICS", "false") == "false" and env["UNETKIT_SERVE_TOKEN_FILE"]
    (tmp_path / "token").write_text("a-metrics-token\n")
    job["authorization"]["credentials_file"] = str(tmp_path / "token")
    # Debian's promtool is built without Kubernetes discovery: check everything else with a static
    # target in its place (an upstream promtool checks the file as it is).
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
    config["rule_files"] = [str(RULES / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = promtool(prometheus_tools, "check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
