"""`unetkit registry ...`: output in-process (typer's runner), user errors through a real process
(one line on stderr, exit status 2; 3 when the gate refuses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from unetkit.cli import app
from unetkit.registry.registry import Registry


@pytest.fixture
def filled(tmp_path, artifacts):
    """An SQLite registry with tiny:1 in production, tiny:2 (worse) and tiny:3 (better) as candidates."""
    path = tmp_path / "reg" / "registry.db"
    with Registry.open(path) as reg:
        for key in ("base", "worse", "better"):
            reg.add(artifacts[key], note=f"{key} run")
        reg.promote("tiny:1", "production")
    return str(path)


def run(*args: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetkit", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, **(env or {})})


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_add_list_show_in_tables_and_json(tmp_path, artifacts):
    registry = str(tmp_path / "r.db")
    assert invoke("registry", "add", str(artifacts["base"]), "--registry", registry, "--note", "baseline").startswith(
        "registered tiny:1 (candidate), sha256 ")
    assert "already registered: tiny:1" in invoke("registry", "add", str(artifacts["base"]), "--registry", registry)
    added = json.loads(invoke("registry", "add", str(artifacts["better"]), "--registry", registry, "--json"))
    assert added["created"] and added["ref"] == "tiny:2" and added["meta"]["metrics"]["mean_iou"] == 0.72
    table = invoke("registry", "list", "--registry", registry)
    assert "tiny:1" in table and "candidate" in table and "mean_iou=0.7000" in table and "baseline" in table
    listed = json.loads(invoke("registry", "list", "--registry", registry, "--json", "--stage", "candidate"))
    assert [v["ref"] for v in listed] == ["tiny:1", "tiny:2"]
    shown = json.loads(invoke("registry", "show", "tiny:1", "--registry", registry, "--json"))
    assert shown["blob"].endswith(f"{shown['sha256']}.unetkit") and shown["events"][0]["action"] == "register"
    text = invoke("registry", "show", "tiny", "--registry", registry)
    assert "tiny:2" in text and "validation metrics" in text and "stage history" in text


def test_promote_rollback_and_diff(filled):
    out = invoke("registry", "promote", "tiny:3", "--to", "production", "--registry", filled, "--reason", "better")
    assert "promotion gate vs tiny:1" in out and "tiny:3 is now in production; tiny:1 archived" in out
    forced = json.loads(invoke("registry", "promote", "tiny:2", "--to", "staging", "--registry", filled, "--force",
                               "--reason", "try on site B", "--json"))
    assert forced["forced"] and forced["promoted"]["stage"] == "staging" and not forced["gate"]["passed"]
    assert "tiny:1 is back in production; tiny:3 archived" in invoke("registry", "rollback", "tiny", "--registry", filled,
                                                                     "--reason", "site B regressions")
    diff = invoke("registry", "diff", "tiny:1", "tiny:3", "--registry", filled)
    assert "metrics: tiny:1 -> tiny:3" in diff and "+0.0200" in diff and "better" in diff and "plan: 2 changed" in diff
    as_json = json.loads(invoke("registry", "diff", "tiny:1", "tiny:3", "--registry", filled, "--json"))
    assert {row["metric"]: row["b_is"] for row in as_json["metrics"]}["hd95/cell"] == "better"
    tolerated = invoke("registry", "promote", "tiny:2", "--to", "production", "--registry", filled,
                       "--tolerance", "0.05", "--tolerance", "hd95/cell=2.5")
    assert "tiny:2 is now in production; tiny:1 archived" in tolerated


def test_a_promotion_the_gate_refuses_is_one_line_and_exit_3(filled):
    done = run("registry", "promote", "tiny:2", "--to", "production", "--registry", filled)
    assert done.returncode == 3 and done.stderr == (
        "error: promotion of tiny:2 to production refused: worse than tiny:1: hd95/cell is 2 worse (6 vs production 4, "
        "lower is better, tolerance 0.005); mean_iou is 0.02 worse (0.68 vs production 0.7, higher is better, tolerance "
        "0.005); to promote it anyway: unetkit registry promote tiny:2 --to production --force --reason TEXT\n"), done.stderr


def test_a_stage_outside_the_choices_fails_at_parse_time_listing_them(filled):
    done = run("registry", "promote", "tiny:2", "--to", "prod", "--registry", filled)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'prod' is not one of 'staging', 'production'" in done.stderr, done.stderr


@pytest.mark.parametrize("args, message", [
    (["promote", "tiny:2", "--to", "production", "--force"],
     "error: --force needs --reason TEXT: a forced promotion is recorded with its reason"),
    (["show", "tiny:9"], "error: tiny:9: no such version of tiny (versions 1..3; or :latest, :candidate, :staging, :production)"),
    (["promote", "tiny:2", "--to", "production", "--tolerance", "lots"],
     "error: --tolerance 'lots': expected a number (0.01) or METRIC=NUMBER (hd95=2)"),
])
def test_user_errors_are_one_line_and_exit_2(filled, args, message):
    done = run("registry", *args, "--registry", filled)
    assert done.returncode == 2 and done.stderr == message + "\n", done.stderr


def test_location_from_the_environment_or_the_default_folder(filled, tmp_path):
    listed = run("registry", "list", "--json", env={"UNETKIT_REGISTRY": filled})
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 3
    empty = run("registry", "list", "--json", cwd=tmp_path, env={"UNETKIT_REGISTRY": ""})
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    assert (tmp_path / "unetkit-registry" / "registry.db").is_file()
    bad = run("registry", "list", "--registry", "mysql://db/registry")
    assert bad.returncode == 2 and bad.stderr.startswith("error: registry mysql://db/registry: unsupported database 'mysql'")
    assert bad.stderr.count("\n") == 1


def test_issue16_case9_policy_and_grant_commands(filled):
    assert invoke("registry", "policy", "--registry", filled) == "max tolerance: *=0.05, hd95=5, assd=5\n"
    loosened = run("registry", "promote", "tiny:2", "--to", "production", "--tolerance", "1e9", "--registry", filled)
    assert loosened.returncode == 2 and "loosens the gate beyond the registry's policy" in loosened.stderr
    assert json.loads(invoke("registry", "policy", "--max-tolerance", "2", "--registry", filled, "--json")) == {
        "max_tolerance": {"*": 2.0, "hd95": 5.0, "assd": 5.0}}
    tolerated = json.loads(invoke("registry", "promote", "tiny:2", "--to", "production", "--tolerance", "1",
                                  "--tolerance", "hd95/cell=3", "--registry", filled, "--json"))
    assert tolerated["promoted"]["stage"] == "production" and not tolerated["forced"]
    grant = run("registry", "grant", "alice", "viewer", "--registry", filled)
    assert grant.returncode == 2 and "roles need a PostgreSQL registry" in grant.stderr
