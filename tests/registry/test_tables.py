"""The registry's tables: a fine-tuned or distilled version names the artifact it was trained from."""

from __future__ import annotations

import io

from rich.console import Console

from unetkit.registry.records import VersionRecord
from unetkit.registry.tables import version_tables


def render(record: VersionRecord) -> str:
    out = io.StringIO()
    console = Console(file=out, width=300)
    for table in version_tables(record, []):
        console.print(table)
    return out.getvalue()


def record(lineage: dict, **meta) -> VersionRecord:
    return VersionRecord("vessels", 2, "b" * 64, 10, "candidate", "2026-12-02T10:00:00+00:00", "me", "", "", "x",
                         {"lineage": lineage, **meta})


def test_show_names_the_parent_artifact_or_encoder() -> None:
    parent = "a" * 64
    text = render(record({"parent_sha256": parent, "start": {"path": "old/model.unetkit", "head": "kept"}}))
    assert "fine-tuned from" in text and parent in text and "head kept" in text
    enc = render(record({"pretrained_sha256": "c" * 64, "start": {"path": "enc.safetensors"}}))
    assert "pretrained encoder sha256 " + "c" * 64 in enc
    assert "fine-tuned from" not in render(record({"steps": 10}))


def test_show_names_the_teacher_a_version_was_distilled_from() -> None:
    teacher = {"artifact": "big/model.unetkit", "model": "unet w24 d4 batch x5", "sha256": "d" * 64}
    text = render(record({"teacher_sha256": "d" * 64}, metrics={"distillation": {"teacher": teacher}}))
    assert "distilled from" in text and "d" * 64 in text and "unet w24 d4 batch x5" in text
    assert "distilled from" not in render(record({"steps": 10}))
