"""Pair each image with its mask (and region-of-interest mask) by key.

`pair_samples(spec)` lists every key found in the image or mask folder; a partner that does not
exist keeps its expected path, so `validate` can say which file is missing and where it was looked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unetkit.data.formats import read_label, read_layout
from unetkit.data.io import DEFAULT_MAX_PIXELS
from unetkit.data.layout import glob_template, template_path
from unetkit.data.manifest import read_manifest
from unetkit.data.spec import DatasetSpec


@dataclass(frozen=True)
class Sample:
    key: str
    image: Path
    mask: Path
    roi: Path | None = None
    channels: tuple[Path, ...] = ()  # further image files stacked as channels after `image` (nnU-Net)
    entry: str = ""  # the record in `mask` when it is an annotation file (a COCO image id, a Label Studio task id)

    @property
    def image_files(self) -> tuple[Path, ...]:
        return (self.image, *self.channels)

    @property
    def complete(self) -> bool:
        return (
            all(p.is_file() for p in self.image_files)
            and self.mask.is_file()
            and (self.roi is None or self.roi.is_file())
        )


def read_raw_mask(sample: Sample, spec: DatasetSpec, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The sample's raw mask values (`io.read_mask`'s), painted from its annotation file where it has one."""
    return read_label(spec.layout, sample.mask, sample.entry, sample.image, max_pixels)


def pair_samples(spec: DatasetSpec) -> list[Sample]:
    """All samples of the data set, sorted by key (numeric keys in numeric order)."""
    if spec.manifest or spec.layout:
        rows = read_layout(spec.layout, spec.root, classes=False).rows if spec.layout else read_manifest(spec.manifest)
        return sorted(
            (Sample(r.key, r.image, r.mask, r.roi, r.channels, r.entry) for r in rows), key=lambda s: _order(s.key)
        )
    root = Path(spec.root)
    images = glob_template(root, spec.images)
    masks = glob_template(root, spec.masks)
    samples = []
    for key in sorted(images.keys() | masks.keys(), key=_order):
        image = images[key][0] if key in images else template_path(root, spec.images, key)
        mask = masks[key][0] if key in masks else template_path(root, spec.masks, key)
        roi = template_path(root, spec.roi, key) if spec.roi else None
        samples.append(Sample(key, image, mask, roi))
    return samples


def ambiguous_files(spec: DatasetSpec) -> dict[str, list[Path]]:
    """Keys matching several files (only possible with `.*` templates): key -> files."""
    if spec.manifest or spec.layout:
        return {}
    root = Path(spec.root)
    found: dict[str, list[Path]] = {}
    for template in (spec.images, spec.masks, spec.roi):
        if template:
            found |= {k: v for k, v in glob_template(root, template).items() if len(v) > 1}
    return found


def _order(key: str) -> tuple:
    return (0, int(key), key) if key.isdigit() else (1, 0, key)
