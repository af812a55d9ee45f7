"""Printable descriptions of a data set, for `unetkit init-dataset` and logs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from unetkit.data.formats import PAINTED_LAYOUTS
from unetkit.data.pairing import Sample
from unetkit.data.spec import DatasetSpec


def dataset_summary(spec: DatasetSpec, samples: Sequence[Sample], examples: int = 3) -> str:
    """The detected layout and classes, the number of complete pairs and a few example pairs."""
    root = Path(spec.root)
    complete = [s for s in samples if s.complete]
    lines = [spec.describe(), f"  {len(complete)} complete samples of {len(samples)} keys"]
    for s in complete[:examples]:
        files = [_rel(p, root) for p in [*s.image_files, s.mask] + ([s.roi] if s.roi is not None else [])]
        if s.entry:  # the mask is painted from an annotation file: which record in it
            files[len(s.image_files)] += f" ({PAINTED_LAYOUTS.get(spec.layout, 'entry')} {s.entry})"
        lines.append(f"  e.g. key {s.key}: " + " + ".join(files))
    incomplete = len(samples) - len(complete)
    if incomplete:
        lines.append(f"  {incomplete} keys miss a file: run `unetkit validate` for the list")
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def format_fingerprint(fp: dict) -> str:
    """Sizes, channel statistics and per-class frequencies/objects of a `fingerprint()` dict."""
    size = fp["size"]
    intensity = fp["intensity"]
    lines = [
        f"  {fp['n_samples']} images, {fp['channels']} channel(s), size (HxW) min {_hw(size['min'])} "
        f"median {_hw(size['median'])} max {_hw(size['max'])}",
        "  channel mean " + ", ".join(f"{m:.1f}" for m in intensity["mean"])
        + " / std " + ", ".join(f"{s:.1f}" for s in intensity["std"]),
        f"  labelled pixels {fp['labelled_fraction']:.1%} (the rest is ignored or outside the ROI)",
        f"  {'class':<18}{'pixels':>9}{'images':>8}{'objects/img':>13}{'median size':>13}",
    ]
    for c in fp["classes"]:
        lines.append(
            f"  {c['index']}: {c['name'][:15]:<15}{c['pixel_fraction']:>9.2%}{c['present_in']:>8}"
            f"{c['objects_per_image']:>13.1f}{c['object_size_p10_p50_p90'][1]:>13.0f}"
        )
    return "\n".join(lines)


def _hw(hw: Sequence[float]) -> str:
    return f"{int(hw[0])}x{int(hw[1])}"
