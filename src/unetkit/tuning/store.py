"""Where a tuned artifact is written: in place, or into a copy of the source."""

from __future__ import annotations

import shutil
from pathlib import Path

from unetkit.artifact import Artifact


def target_path(artifact: Artifact, out: str | Path | None) -> Path:
    """Where the tuned artifact goes: `out` (a copy of the source), else the source itself."""
    assert artifact.path is not None
    if out is None or Path(out).resolve() == Path(artifact.path).resolve():
        return Path(artifact.path)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(artifact.path, out)
    return Path(out)
