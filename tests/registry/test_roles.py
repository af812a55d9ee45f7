"""Who may do what, and who did it (issue 16, case 9): registry roles as real PostgreSQL roles, the
authenticated actor, and a loosened gate counted as forced."""

from __future__ import annotations

import os
import pwd

import psycopg
import pytest

from unetkit.errors import RegistryError
from unetkit.registry.registry import Registry
from unetkit.registry.roles import grant_role, set_policy


def test_issue16_case9_a_huge_tolerance_or_a_narrowed_metric_set_counts_as_forced(registry, artifacts):
    """Before: `--tolerance 1e9` promoted a worse model, recorded forced=false (gate.py:146, registry.py:341)."""
    registry.add(artifacts["base"])
    registry.add(artifacts["worse"])
    registry.promote("tiny:1", "production")
    for options in ({"tolerance": 1e9}, {"tolerances": {"hd95/cell": 1e9, "mean_iou": 0.05}},
                    {"only": ["mean_dice"]}):
        with pytest.raises(RegistryError, match="loosens the gate beyond the registry's policy .*give --reason TEXT"):
            registry.promote("tiny:2", "production", **options)
    assert registry.get("tiny:production").ref == "tiny:1"
    promoted = registry.promote("tiny:2", "staging", tolerance=1e9, reason="needed on site B today")
    assert promoted.gate.passed and promoted.forced  # the gate passed only because it was loosened
    event = registry.history("tiny", 2)[-1]
    assert event.forced and event.reason == "needed on site B today"
    assert event.details["loosened"] == ["tolerance 1e+09 for mean_iou is above the registry's maximum 0.05",
                                         "tolerance 1e+09 for mean_dice is above the registry's maximum 0.05",
                                         "tolerance 1e+09 for iou/cell is above the registry's maximum 0.05",
                                         "tolerance 1e+09 for hd95/cell is above the registry's maximum 5",
                                         "tolerance 1e+09 for calibration/ece_after is above the registry's maximum 0.05"]


def test_a_registry_policy_sets_the_maximum_tolerance(tmp_path, artifacts):
    with Registry.open(tmp_path / "r.db") as reg:
        reg.add(artifacts["base"])
        reg.add(artifacts["worse"])
        reg.promote("tiny:1", "production")
        assert set_policy(reg.db, {"*": 0.05, "hd95/cell": 2.0})["max_tolerance"]["hd95/cell"] == 2.0
        with pytest.raises(RegistryError, match="tolerance 2.5 for hd95/cell is above the registry's maximum 2"):
            reg.promote("tiny:2", "production", tolerance=0.05, tolerances={"hd95/cell": 2.5})
        assert not reg.promote("tiny:2", "production", tolerance=0.05, tolerances={"hd95/cell": 2.0}).forced


def test_issue16_case9_on_sqlite_the_actor_is_the_os_account_not_logname(tmp_path, artifacts, monkeypatch):
    """Before: the actor was `--by` or $LOGNAME, whatever they said."""
    monkeypatch.setenv("LOGNAME", "mallory")
    monkeypatch.setenv("USER", "mallory")
    with Registry.open(tmp_path / "r.db") as reg:
        record = reg.add(artifacts["base"], by="mallory").record
        event = reg.history("tiny")[-1]
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert record.created_by == me and event.actor == me and event.details == {"claimed_by": "mallory"}


def test_issue16_case9_postgresql_roles_are_enforced_by_the_server(postgres, tmp_path, artifacts):
    """A viewer cannot promote, not even with its own SQL; a publisher adds candidates only and cannot
    forge a promotion in the audit trail; an approver promotes, recorded as its login."""
    admin = postgres.new_database()
    with Registry.open(admin, tmp_path / "store") as reg:
        reg.add(artifacts["base"], stage="production")
        reg.add(artifacts["worse"])
    database = admin.rsplit("/", 1)[1]
    users = {role: f"{role}_{database}" for role in ("viewer", "publisher", "approver")}
    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        for user in users.values():
            conn.execute(f'CREATE ROLE "{user}" LOGIN')
    with Registry.open(admin) as reg:
        for role, user in users.items():
            assert grant_role(reg.db, user, role) == f"unetkit_{role}"

    def url(role: str) -> str:
        return f"postgresql+psycopg://{users[role]}@127.0.0.1:{postgres.port}/{database}"

    def raw_sql(role: str, statement: str) -> None:
        with psycopg.connect(url(role).replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(statement)

    promote_sql = "UPDATE unetkit_versions SET stage = 'production' WHERE version = 2"
    forged_event = ("INSERT INTO unetkit_events (name, version, action, from_stage, to_stage, at, actor, reason, "
                    "forced, details) VALUES ('tiny', 2, 'promote', 'candidate', 'production', now(), 'x', '', "
                    "false, '{}')")

    with Registry.open(url("viewer"), read_only=True) as viewer:  # what serving needs
        assert viewer.load("tiny:production").meta.name == "tiny" and len(viewer.list()) == 2
    with Registry.open(url("viewer")) as viewer:
        with pytest.raises(RegistryError, match="permission denied .*needs the role unetkit_approver"):
            viewer.promote("tiny:2", "production", force=True, reason="I want to")
        with pytest.raises(RegistryError, match="permission denied .*needs the role unetkit_publisher"):
            viewer.add(artifacts["better"])
    for statement in (promote_sql, forged_event):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw_sql("viewer", statement)

    with Registry.open(url("publisher")) as publisher:
        added = publisher.add(artifacts["better"]).record
        assert added.ref == "tiny:3" and added.created_by == users["publisher"]
        with pytest.raises(RegistryError, match="needs the role unetkit_approver"):
            publisher.promote("tiny:3", "production")
        with pytest.raises(RegistryError, match="needs the role unetkit_approver"):
            publisher.add(artifacts["close"], stage="staging")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        raw_sql("publisher", promote_sql)
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        raw_sql("publisher", forged_event)

    with Registry.open(url("approver")) as approver:
        promoted = approver.promote("tiny:3", "production", by="someone-else")
        assert promoted.record.stage == "production"
        event = approver.history("tiny", 3)[-1]
        assert (event.actor, event.details["claimed_by"]) == (users["approver"], "someone-else")
        assert approver.rollback("tiny", reason="check").restored.ref == "tiny:1"
    with Registry.open(admin) as reg:
        assert [(r.ref, r.stage) for r in reg.list()] == [("tiny:1", "production"), ("tiny:2", "candidate"),
                                                          ("tiny:3", "archived")]
