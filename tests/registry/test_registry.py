"""The Registry on SQLite and on a real PostgreSQL server: versions, content addressing, the gate,
promotion, rollback, the audit trail, resolution by stage, and verified loading."""

from __future__ import annotations

import shutil

import pytest

from unetkit.errors import ArtifactError, RegistryError
from unetkit.registry.registry import PromotionRefused, Registry
from unetkit.registry.roles import identity


def authenticated(registry: Registry) -> str:
    with registry.db.read() as conn:
        return identity(conn)


def test_add_assigns_versions_and_keeps_the_artifact_metadata(registry, artifacts):
    first = registry.add(artifacts["base"], note="first run", by="ana")
    assert first.created and first.record.ref == "tiny:1" and first.record.stage == "candidate"
    r = first.record
    me = authenticated(registry)  # the recorded actor: the database login or OS account, not what --by claims
    assert (r.created_by, r.note, r.git_commit) == (me, "first run", "0123456789abcdef0123456789abcdef01234567")
    assert r.size_bytes == artifacts["base"].stat().st_size and len(r.sha256) == 64
    assert r.meta["classes"] == ["background", "cell", "vessel"]
    assert r.meta["architecture"]["depth"] == 2 and r.meta["calibration"]["temperature"] == 1.0
    assert r.metrics["mean_iou"] == 0.70 and r.source == str(artifacts["base"].resolve())
    second = registry.add(artifacts["better"], git_commit="feedbeef")
    assert second.record.version == 2 and second.record.git_commit == "feedbeef"
    assert registry.add(artifacts["other"]).record.ref == "other:1"  # numbering is per model name
    assert [v.ref for v in registry.list()] == ["other:1", "tiny:1", "tiny:2"]
    assert [v.ref for v in registry.list("tiny", stage="candidate")] == ["tiny:1", "tiny:2"]
    assert registry.get("tiny").ref == "tiny:2" and registry.get("tiny:latest").ref == "tiny:2"
    assert registry.names() == ["other", "tiny"]
    assert [(e.action, e.to_stage, e.actor, e.details) for e in registry.history("tiny", 1)] == [
        ("register", "candidate", me, {"claimed_by": "ana"})]


def test_the_same_artifact_added_twice_is_one_version_and_one_blob(registry, artifacts, tmp_path):
    copy = tmp_path / "copy.unetkit"
    shutil.copyfile(artifacts["base"], copy)
    first = registry.add(artifacts["base"])
    again = registry.add(copy)
    assert not again.created and again.record == first.record
    assert len(registry.list()) == 1 and len(registry.store.stored()) == 1
    renamed = registry.add(copy, name="renamed")  # another name may hold the same content: one blob still
    assert renamed.created and renamed.record.ref == "renamed:1" and len(registry.store.stored()) == 1


def test_promotion_is_gated_on_production_metrics(registry, artifacts):
    for key in ("base", "worse", "close", "better"):
        registry.add(artifacts[key])
    first = registry.promote("tiny:1", "production", by="ana")
    assert first.gate.against is None and first.record.stage == "production" and first.superseded is None
    with pytest.raises(PromotionRefused, match=r"mean_iou is 0\.02 worse \(0\.68 vs production 0\.7.*"
                                               r"--force --reason TEXT") as refused:
        registry.promote("tiny:2", "production")
    worst = refused.value.gate.failures
    assert [c.name for c in worst] == ["hd95/cell", "mean_iou"] and worst[0].worse_by == pytest.approx(2.0)
    assert registry.get("tiny:2").stage == "candidate" and registry.get("tiny:production").ref == "tiny:1"
    close = registry.promote("tiny:3", "staging")  # 0.003 worse: within the default tolerance 0.005
    assert close.gate.passed and close.gate.against == "tiny:1" and registry.get("tiny:3").stage == "staging"
    with pytest.raises(PromotionRefused, match="mean_iou is 0.003 worse"):
        registry.promote("tiny:3", "production", tolerance=0.001)
    better = registry.promote("tiny:4", "production", by="ben", reason="better on the new scanner")
    assert better.superseded.ref == "tiny:1" and better.superseded.stage == "archived" and not better.forced
    checked = {c.name for c in better.gate.checks}
    assert {"mean_iou", "hd95/cell", "calibration/ece_after"} <= checked
    assert not checked & {"step", "calibration/ece_before", "calibration/temperature"}
    event = registry.history("tiny", 4)[-1]
    assert (event.action, event.from_stage, event.to_stage, event.actor, event.reason, event.forced) == (
        "promote", "candidate", "production", authenticated(registry), "better on the new scanner", False)
    assert event.details["claimed_by"] == "ben"
    assert event.details["gate"]["against"] == "tiny:1" and event.details["gate"]["passed"]


def test_per_metric_tolerance_and_metric_subset(registry, artifacts):
    registry.add(artifacts["base"])
    registry.add(artifacts["worse"])
    registry.promote("tiny:1", "production")
    with pytest.raises(PromotionRefused, match="mean_iou"):
        registry.promote("tiny:2", "production", tolerances={"hd95/cell": 3.0})
    with pytest.raises(RegistryError, match="metric 'dice' is not among production's metrics"):
        registry.promote("tiny:2", "production", only=["dice"])
    passed = registry.promote("tiny:2", "production", tolerance=0.05, tolerances={"hd95/cell": 2.5})
    assert passed.gate.passed and passed.record.stage == "production"


def test_forced_promotion_needs_and_records_a_reason(registry, artifacts):
    registry.add(artifacts["base"])
    registry.add(artifacts["worse"])
    registry.promote("tiny:1", "production")
    with pytest.raises(RegistryError, match="--force needs --reason TEXT"):
        registry.promote("tiny:2", "production", force=True)
    forced = registry.promote("tiny:2", "production", force=True, reason="hotfix: v1 crashes on 16-bit input")
    assert forced.forced and not forced.gate.passed and forced.record.stage == "production"
    event = registry.history("tiny", 2)[-1]
    assert event.forced and event.reason == "hotfix: v1 crashes on 16-bit input"
    assert any(not c["ok"] and c["metric"] == "mean_iou" for c in event.details["gate"]["checks"])


def test_stage_rules(registry, artifacts):
    registry.add(artifacts["base"])
    registry.add(artifacts["close"])
    registry.promote("tiny:1", "production")
    with pytest.raises(RegistryError, match="tiny:1 is already in production"):
        registry.promote("tiny:1", "production")
    with pytest.raises(RegistryError, match="tiny:1 is in production; promote another version"):
        registry.promote("tiny:1", "staging")
    with pytest.raises(RegistryError, match="stage 'prod': expected one of"):
        registry.promote("tiny:2", "prod")
    registry.promote("tiny:2", "staging")
    assert registry.resolve("staging").ref == "tiny:2"
    registry.promote("tiny:2", "production")  # staging -> production leaves staging empty
    with pytest.raises(RegistryError, match="tiny has no version in staging"):
        registry.resolve("staging", "tiny")


def test_rollback_restores_the_previous_production_version(registry, artifacts):
    for key in ("base", "close", "better"):
        registry.add(artifacts[key])
    with pytest.raises(RegistryError, match="tiny has no version in production; nothing to roll back"):
        registry.rollback("tiny")
    for version in (1, 2, 3):
        registry.promote(f"tiny:{version}", "production")
    back = registry.rollback("tiny", reason="false positives on site B", by="oncall")
    assert back.restored.ref == "tiny:2" and back.restored.stage == "production" and back.archived.stage == "archived"
    assert registry.rollback("tiny").restored.ref == "tiny:1"  # again: the one before that, not forth to tiny:3
    with pytest.raises(RegistryError, match="tiny:1 is the first production version"):
        registry.rollback("tiny")
    events = [(e.version, e.action, e.from_stage, e.to_stage, e.reason) for e in registry.history("tiny")][-4:]
    assert events[:2] == [(3, "rollback", "production", "archived", "false positives on site B"),
                          (2, "rollback", "archived", "production", "false positives on site B")]
    registry.promote("tiny:3", "production", force=True, reason="retry")  # forward again, then back to tiny:1
    assert registry.rollback("tiny").restored.ref == "tiny:1"


def test_resolve_and_references(registry, artifacts):
    registry.add(artifacts["base"])
    registry.add(artifacts["other"])
    with pytest.raises(RegistryError, match="no model has a version in production"):
        registry.resolve("production")
    registry.promote("tiny:1", "production")
    assert registry.resolve("production").ref == "tiny:1"
    registry.promote("other:1", "production")
    with pytest.raises(RegistryError, match="several models have a version in production: other, tiny; choose one"):
        registry.resolve("production")
    assert registry.resolve("production", "other").ref == "other:1"
    with pytest.raises(RegistryError, match=r"tiny:9: no such version of tiny \(versions 1..1"):
        registry.get("tiny:9")
    with pytest.raises(RegistryError, match="no model named 'nope'"):
        registry.get("nope:1")
    with pytest.raises(RegistryError, match="after ':' expected a version number"):
        registry.get("tiny:prod")
    with pytest.raises(RegistryError, match="model name 'a b'"):
        registry.add(artifacts["base"], name="a b")


def test_add_straight_to_a_stage_is_gated_too(registry, artifacts):
    first = registry.add(artifacts["base"], stage="production")
    assert first.record.stage == "production" and first.promotion.gate.against is None
    with pytest.raises(PromotionRefused, match="promotion of tiny:2 to production refused"):
        registry.add(artifacts["worse"], stage="production")
    assert [v.ref for v in registry.list()] == ["tiny:1"]  # refused: nothing registered, no blob kept
    assert len(registry.store.stored()) == 1 and not list(registry.store.tmp.iterdir())


def test_diff_reports_metric_deltas_and_changed_choices(registry, artifacts):
    registry.add(artifacts["base"])
    registry.add(artifacts["better"])
    diff = registry.diff("tiny:1", "tiny:2")
    rows = {row["metric"]: row for row in diff["metrics"]}
    assert rows["mean_iou"]["delta"] == pytest.approx(0.02) and rows["mean_iou"]["b_is"] == "better"
    assert rows["hd95/cell"]["delta"] == pytest.approx(-0.5) and rows["hd95/cell"]["b_is"] == "better"
    assert rows["step"]["b_is"] is None
    assert diff["plan"] == [{"key": "budget_seconds", "a": None, "b": 600},
                            {"key": "model.base_width", "a": None, "b": 16}]
    assert diff["classes"]["same"] and diff["architecture"] == []
    assert {row["key"] for row in diff["artifact"]} >= {"sha256", "git_commit"}


def test_load_verifies_the_blob_and_refuses_a_tampered_one(registry, artifacts):
    record = registry.add(artifacts["base"]).record
    assert registry.load("tiny:1").meta.weights_sha256 == record.meta["weights_sha256"]
    blob = registry.store.path(record.sha256)
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF  # one weight byte
    blob.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"tiny:1: blob .* has sha256 .* not the registered .* modified or corrupted"):
        registry.load("tiny:1")
    registry.add(artifacts["base"])  # adding the original again puts the good blob back
    assert registry.load("tiny:1").meta.name == "tiny"
    blob.unlink()
    with pytest.raises(RegistryError, match="is missing from the store"):
        registry.fetch(record)


def test_a_corrupt_artifact_is_refused_at_the_door(registry, artifacts, tmp_path):
    bad = tmp_path / "bad.unetkit"
    data = bytearray(artifacts["base"].read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights sha256 does not match"):
        registry.add(bad)
    with pytest.raises(ArtifactError, match="model artifact not found"):
        registry.add(tmp_path / "missing.unetkit")
    assert registry.list() == [] and registry.store.stored() == {} and not list(registry.store.tmp.iterdir())


def test_the_store_location_is_recorded(location, artifacts, tmp_path):
    with Registry.open(location.url, location.store) as reg:
        reg.add(artifacts["base"])
        root = reg.store.root
    with Registry.open(location.url) as reg:  # no --store needed any more: the registry knows
        assert reg.store.root == root and reg.load("tiny:1").meta.name == "tiny"
    with pytest.raises(RegistryError, match=f"keeps its artifacts in {root}, not"):
        Registry.open(location.url, tmp_path / "elsewhere")
    if location.kind == "sqlite":
        assert root == (tmp_path / "reg" / "blobs").resolve()


def test_a_server_database_needs_a_store(postgres):
    with pytest.raises(RegistryError, match="a database-server registry needs --store DIR"):
        Registry.open(postgres.new_database())
