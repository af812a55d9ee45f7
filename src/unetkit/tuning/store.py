"""Where a tuned artifact is written (in place, or into a copy of the source) and how: the tuned
fields and their record in the metrics, rewritten atomically."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from unetkit.artifact import Artifact, update_artifact


def target_path(artifact: Artifact, out: str | Path | None) -> Path:
    """Where the tuned artifact goes: `out` (a copy of the source), else the source itself."""
    assert artifact.path is not None
    if out is None or Path(out).resolve() == Path(artifact.path).resolve():
        return Path(artifact.path)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact.path, out)
    return Path(out)


def store_tuning(artifact: Artifact, out: str | Path | None, records: dict[str, dict[str, Any]],
                 **fields: Any) -> Path:
    """Write `fields` (ArtifactMeta fields) and `records` (metrics entries by name) into the
    artifact at `target_path`; returns that path."""
    target = target_path(artifact, out)
    update_artifact(target, **fields, metrics=dict(artifact.meta.metrics) | records)
    return target
