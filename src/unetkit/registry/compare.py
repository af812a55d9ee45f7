"""What changed between two registered versions (pure): metrics with deltas, plan choices, data
fingerprint, classes, calibration, architecture and postprocessing."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from unetkit.registry.gate import direction, flatten_metrics
from unetkit.registry.records import VersionRecord


def diff_versions(a: VersionRecord, b: VersionRecord) -> dict[str, Any]:
    """Sections of `{key, a, b}` rows (only what differs, except metrics: every metric, with its delta)."""
    return {
        "a": a.ref, "b": b.ref,
        "artifact": changes({"sha256": a.sha256, "stage": a.stage, "git_commit": a.git_commit, "created_at": a.created_at},
                            {"sha256": b.sha256, "stage": b.stage, "git_commit": b.git_commit, "created_at": b.created_at}),
        "metrics": metric_deltas(a.metrics, b.metrics),
        "plan": plan_changes(a.meta.get("plan", {}), b.meta.get("plan", {})),
        "fingerprint": changes(a.meta.get("fingerprint", {}), b.meta.get("fingerprint", {})),
        "classes": {"a": a.meta.get("classes", []), "b": b.meta.get("classes", []),
                    "same": a.meta.get("classes") == b.meta.get("classes")},
        "calibration": changes(a.meta.get("calibration", {}), b.meta.get("calibration", {})),
        "architecture": changes(a.meta.get("architecture", {}), b.meta.get("architecture", {})),
        "postprocess": changes(a.meta.get("postprocess", {}), b.meta.get("postprocess", {})),
    }


def metric_deltas(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every numeric metric of either version: values, delta (b - a) and whether b is better."""
    fa, fb = flatten_metrics(a), flatten_metrics(b)
    rows = []
    for name in sorted(set(fa) | set(fb)):
        va, vb = fa.get(name), fb.get(name)
        delta = vb - va if va is not None and vb is not None and not (math.isnan(va) or math.isnan(vb)) else None
        way = direction(name)
        verdict = None
        if delta is not None and way is not None:
            verdict = "same" if delta == 0 else ("better" if (delta > 0) == (way == "higher") else "worse")
        rows.append({"metric": name, "a": va, "b": vb, "delta": delta, "direction": way, "b_is": verdict})
    return rows


def plan_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Planned choices (`plan.choices[].key/value`) that differ, plus the budget."""
    def choices(plan: Mapping[str, Any]) -> dict[str, Any]:
        found = {c.get("key"): c.get("value") for c in plan.get("choices", []) if isinstance(c, Mapping)}
        if "budget_seconds" in plan:
            found["budget_seconds"] = plan["budget_seconds"]
        return found

    return changes(choices(a), choices(b), flatten=False)


def changes(a: Mapping[str, Any], b: Mapping[str, Any], flatten: bool = True) -> list[dict[str, Any]]:
    """`{key, a, b}` for every (dotted, when `flatten`) key whose values differ; absent is None."""
    fa, fb = (_flatten(a), _flatten(b)) if flatten else (dict(a), dict(b))
    return [{"key": k, "a": fa.get(k), "b": fb.get(k)} for k in sorted(set(fa) | set(fb), key=str)
            if fa.get(k) != fb.get(k)]


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
