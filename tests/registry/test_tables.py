"""The registry's tables: a fine-tuned version names the artifact it was trained from."""

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


def record(lineage: dict) -> VersionRecord:
    return VersionRecord("vessels", 2, "b" * 64, 10, "candidate", "2026-12-02T10:00:00+00:00", "me", "", "", "x",
                         {"lineage": lineage})


def test_show_names_the_parent_artifact_or_encoder() -> None:
    parent = "a" * 64
    text = render(record({"parent_sha256": parent, "start": {"path": "old/model.unetkit", "head": "kept"}}))
    assert "fine-tuned from" in text and parent in text and "head kept" in text
    enc = render(record({"pretrained_sha256": "c" * 64, "start": {"path": "enc.safetensors"}}))
    assert "pretrained encoder sha256 " + "c" * 64 in enc
    assert "fine-tuned from" not in render(record({"steps": 10}))
