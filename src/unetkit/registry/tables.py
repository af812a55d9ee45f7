"""Rich tables for `unetkit registry list | show | diff | promote` (what the JSON output says, for people)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from unetkit.registry.gate import GateResult, flatten_metrics
from unetkit.registry.records import Event, VersionRecord


def key_metric(record: VersionRecord) -> str:
    """The metric training selected on (else mean IoU), as `name=value`."""
    metrics = flatten_metrics(record.metrics)
    for name in (record.metrics.get("selection_metric"), "mean_iou", "mean_dice"):
        if isinstance(name, str) and name in metrics:
            return f"{name}={metrics[name]:.4f}"
    return ""


def versions_table(records: list[VersionRecord]) -> Table:
    """One row per version; the git and note columns only when some version has one."""
    table = Table(title="registered versions", title_justify="left")
    for column in ("version", "stage", "created (UTC)", "sha256"):
        table.add_column(column, no_wrap=True)
    table.add_column("key metric", overflow="fold", min_width=16)
    optional = [(c, get) for c, get in (("git", lambda r: r.git_commit[:12]), ("note", lambda r: r.note))
                if any(get(r) for r in records)]
    for column, _ in optional:
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(r.ref, r.stage, _when(r.created_at)[:16], r.sha256[:12], key_metric(r),
                      *(get(r) for _, get in optional))
    return table


def version_tables(record: VersionRecord, events: list[Event]) -> list[Table]:
    meta = record.meta
    about = Table(title=record.ref, title_justify="left", show_header=False)
    about.add_column("field", style="bold")
    about.add_column("value", overflow="fold")
    arch = meta.get("architecture", {})
    fingerprint = meta.get("fingerprint", {})
    for field, value in (
        ("stage", record.stage), ("sha256", record.sha256), ("size", f"{record.size_bytes:,} bytes"),
        ("created", f"{record.created_at} by {record.created_by or '?'}"), ("note", record.note),
        ("git commit", record.git_commit), ("added from", record.source),
        ("fine-tuned from", _parent(meta.get("lineage", {}))),
        ("distilled from", _teacher(meta)),
        ("classes", ", ".join(meta.get("classes", []))),
        ("architecture", ", ".join(f"{k}={arch[k]}" for k in ("arch", "depth", "base_width", "in_channels") if k in arch)),
        ("patch size", "x".join(str(v) for v in meta.get("patch_size", []))),
        ("calibration", f"temperature {meta.get('calibration', {}).get('temperature', 1.0):.4g}"),
        ("data", f"{fingerprint.get('n_samples', '?')} samples, content {str(fingerprint.get('content_sha256', ''))[:12]}"
                 if fingerprint else ""),
        ("trained with", ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())),
    ):
        if value:
            about.add_row(field, str(value))
    metrics = Table(title="validation metrics", title_justify="left")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for name, value in flatten_metrics(record.metrics).items():
        metrics.add_row(name, f"{value:.4f}")
    return [about, metrics, events_table(events)]


def _parent(lineage: dict[str, Any]) -> str:
    """The artifact (sha256, a registered version's too) or encoder weights a version was trained from."""
    start = lineage.get("start", {})
    if lineage.get("parent_sha256"):
        return f"artifact sha256 {lineage['parent_sha256']} ({start.get('path', '?')}; head {start.get('head', '?')})"
    if lineage.get("pretrained_sha256"):
        return f"pretrained encoder sha256 {lineage['pretrained_sha256']} ({start.get('path', '?')})"
    return ""


def _teacher(meta: dict[str, Any]) -> str:
    """The teacher artifact a version was distilled from (`unetkit train --distill-from`)."""
    sha = meta.get("lineage", {}).get("teacher_sha256")
    teacher = meta.get("metrics", {}).get("distillation", {}).get("teacher", {})
    return f"artifact sha256 {sha} ({teacher.get('artifact', '?')}; {teacher.get('model', '?')})" if sha else ""


def events_table(events: list[Event]) -> Table:
    table = Table(title="stage history", title_justify="left")
    for column in ("time (UTC)", "version"):
        table.add_column(column, no_wrap=True)
    for column in ("change", "by", "reason"):
        table.add_column(column, overflow="fold")
    for e in events:
        change = f"{e.action}: {e.from_stage or 'new'} -> {e.to_stage}" + (" (forced)" if e.forced else "")
        table.add_row(_when(e.at), f"{e.name}:{e.version}", change, e.actor, e.reason)
    return table


def gate_table(gate: GateResult) -> Table:
    table = Table(title=f"promotion gate vs {gate.against}", title_justify="left")
    for column in ("metric", "better", "candidate", "production", "worse by", "tolerance", ""):
        table.add_column(column, justify="right" if column not in ("metric", "better", "") else "left")
    for c in gate.checks:
        table.add_row(c.name, c.direction, _number(c.candidate), _number(c.production),
                      _number(c.worse_by), f"{c.tolerance:g}", "ok" if c.ok else "WORSE")
    return table


def diff_tables(diff: dict[str, Any]) -> list[Table | str]:
    a, b = diff["a"], diff["b"]
    metrics = Table(title=f"metrics: {a} -> {b}", title_justify="left")
    for column in ("metric", a, b, "delta", f"{b} is"):
        metrics.add_column(column, justify="left" if column == "metric" else "right")
    for row in diff["metrics"]:
        delta = "" if row["delta"] is None else f"{row['delta']:+.4f}"
        metrics.add_row(row["metric"], _number(row["a"]), _number(row["b"]), delta, row["b_is"] or "")
    tables: list[Table | str] = [metrics]
    if not diff["classes"]["same"]:
        tables.append(_changes_table("classes", [{"key": "classes", "a": diff["classes"]["a"], "b": diff["classes"]["b"]}], a, b))
    for section in ("artifact", "plan", "fingerprint", "calibration", "architecture", "postprocess"):
        tables.append(_changes_table(section, diff[section], a, b))
    return tables


def _changes_table(section: str, rows: list[dict[str, Any]], a: str, b: str) -> Table | str:
    if not rows:
        return f"{section}: same"
    table = Table(title=f"{section}: {len(rows)} changed", title_justify="left")
    for column in ("key", a, b):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(str(row["key"]), _short(row["a"]), _short(row["b"]))
    return table


def _when(iso: str) -> str:
    return iso.replace("T", " ").replace("+00:00", "")


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return "missing" if value == float("inf") else f"{value:.4f}"


def _short(value: Any, limit: int = 80) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
