"""Printable descriptions of a data set, for `unetkit init-dataset` and logs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from unetkit.data.pairing import Sample
from unetkit.data.spec import DatasetSpec


def dataset_summary(spec: DatasetSpec, samples: Sequence[Sample], examples: int = 3) -> str:
    """The detected layout and classes, the number of complete pairs and a few example pairs."""
    root = Path(spec.root)
    complete = [s for s in samples if s.complete]
    lines = [spec.describe(), f"  {len(complete)} complete samples of {len(samples)} keys"]
    for s in complete[:examples]:
        files = [s.image, s.mask] + ([s.roi] if s.roi is not None else [])
        lines.append(f"  e.g. key {s.key}: " + " + ".join(_rel(p, root) for p in files))
    incomplete = len(samples) - len(complete)
    if incomplete:
        lines.append(f"  {incomplete} keys miss a file: run `unetkit validate` for the list")
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
