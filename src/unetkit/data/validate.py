"""Check a data set before training and report every bad file, not just the first.

`validate(spec, samples)` reads every image, mask and ROI once and returns a `ValidationReport` of
`Problem(path, message)`s: missing partner, unreadable/corrupt file, size mismatch, unexpected
mask values, channel-count mismatch, non-finite pixels, duplicates, an empty data set, classes
never present. `validate_split(spec, train, val)` finds validation images identical to training
images. `report.usable(skip_bad)` is what training calls: the samples to train on, or a `DataError`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from unetkit.data.io import DEFAULT_MAX_PIXELS, file_sha256, read_image_stack, read_mask
from unetkit.data.pairing import Sample, read_raw_mask
from unetkit.data.progress import track
from unetkit.data.spec import DatasetSpec, decode_mask, roi_inside
from unetkit.errors import DataError

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    path: str  # relative to the data root when inside it
    message: str
    severity: Severity = "error"
    key: str = ""  # the sample it concerns; empty for data-set-wide problems

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class ValidationReport:
    root: str
    samples: tuple[Sample, ...]
    problems: tuple[Problem, ...]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def bad_keys(self) -> set[str]:
        return {p.key for p in self.errors if p.key}

    @property
    def good_samples(self) -> list[Sample]:
        bad = self.bad_keys
        return [s for s in self.samples if s.key not in bad]

    def summary(self) -> str:
        """Printable: one headline, then one line per problem (errors first)."""
        n, bad = len(self.samples), len(self.bad_keys)
        head = (
            f"{self.root}: {n} samples, {n - bad} good, {bad} bad; "
            f"{len(self.errors)} errors, {len(self.warnings)} warnings"
        )
        lines = [f"  error   {p}" for p in self.errors] + [f"  warning {p}" for p in self.warnings]
        return "\n".join([head, *lines])

    def raise_if_bad(self) -> None:
        errors = self.errors
        if not errors:
            return
        shown = "; ".join(str(p) for p in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise DataError(
            f"{self.root}: {len(errors)} data problem(s): {shown}{more}; fix them, or set data.skip_bad "
            f"to train on the {len(self.good_samples)} good samples"
        )

    def usable(self, skip_bad: bool = False) -> list[Sample]:
        """The samples training may use: all when clean; the good ones with `skip_bad`; else raise."""
        if self.ok:
            return list(self.samples)
        data_set_wide = [p for p in self.errors if not p.key]
        if not skip_bad or data_set_wide or not self.good_samples:
            self.raise_if_bad()
        return self.good_samples


def validate(
    spec: DatasetSpec,
    samples: Sequence[Sample],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> ValidationReport:
    root = Path(spec.root)
    problems: list[Problem] = []
    if not samples:
        where = spec.manifest or f"{spec.images} with masks {spec.masks}"
        problems.append(Problem(spec.root, f"empty data set: no image/mask files match {where}"))
    if len(spec.classes) < 2:
        problems.append(
            Problem(spec.root, f"only one class ({spec.classes[0].name}); segmentation needs two")
        )
    channels: dict[str, int] = {}
    hashes: dict[str, Sample] = {}
    present: Counter[int] = Counter()
    for sample in track(samples, "validating", progress):
        found = _check_sample(spec, sample, root, max_pixels)
        problems += found.problems
        if found.channels:
            channels[sample.key] = found.channels
            digest = file_sha256(sample.image)
            if digest in hashes:
                first = _rel(hashes[digest].image, root)
                problems.append(
                    Problem(_rel(sample.image, root), f"same content as {first}", "warning", sample.key)
                )
            hashes.setdefault(digest, sample)
        present.update(found.classes)
    if channels:
        usual = Counter(channels.values()).most_common(1)[0][0]
        for s in samples:
            if channels.get(s.key, usual) != usual:
                message = f"has {channels[s.key]} channel(s); the other images have {usual}"
                problems.append(Problem(_rel(s.image, root), message, key=s.key))
    if present:
        for i, c in enumerate(spec.classes):
            if not present[i]:
                message = f"class {c.name!r} (value {c.value}) never occurs in any mask"
                problems.append(Problem(spec.root, message, "warning"))
    return ValidationReport(spec.root, tuple(samples), tuple(problems))


def validate_split(spec: DatasetSpec, train: Sequence[Sample], val: Sequence[Sample]) -> ValidationReport:
    """Validation images byte-identical to training images (they would inflate validation scores)."""
    root = Path(spec.root)
    seen = {file_sha256(s.image): s for s in train if s.image.is_file()}
    problems = []
    for s in val:
        twin = seen.get(file_sha256(s.image)) if s.image.is_file() else None
        if twin is not None:
            message = (
                f"validation image is identical to training image {_rel(twin.image, root)} (key {twin.key})"
            )
            problems.append(Problem(_rel(s.image, root), message, key=s.key))
    return ValidationReport(spec.root, (*train, *val), tuple(problems))


@dataclass(frozen=True)
class _Checked:
    problems: list[Problem]
    channels: int = 0  # 0: the image could not be read
    classes: tuple[int, ...] = ()


def _check_sample(spec: DatasetSpec, s: Sample, root: Path, max_pixels: int) -> _Checked:
    image_rel, mask_rel = _rel(s.image, root), _rel(s.mask, root)
    roi_rel = _rel(s.roi, root) if s.roi is not None else ""
    problems = []

    def add(path: str, message: str, severity: Severity = "error") -> None:
        problems.append(Problem(path, message, severity, s.key))

    for path in s.image_files:
        if not path.is_file():
            add(
                _rel(path, root),
                f"missing image for mask {mask_rel}; check the images pattern {spec.images or _listed(spec)}",
            )
    if not s.mask.is_file():
        add(
            mask_rel,
            f"missing mask for image {image_rel}; check the masks pattern {spec.masks or _listed(spec)}",
        )
    if s.roi is not None and not s.roi.is_file():
        add(
            roi_rel,
            f"missing ROI mask for image {image_rel}; check the roi pattern {spec.roi or 'in the manifest'}",
        )
    if problems:
        return _Checked(problems)
    image = _read(read_image_stack, s.image_files, image_rel, max_pixels, add)
    raw = _read(lambda path, m: read_raw_mask(s, spec, m), s.mask, mask_rel, max_pixels, add)
    roi = _read(read_mask, s.roi, roi_rel, max_pixels, add) if s.roi is not None else None
    if image is None:
        return _Checked(problems)
    if not np.isfinite(image).all():
        add(image_rel, "contains NaN or infinite pixel values")
    height, width = image.shape[1:]
    classes: tuple[int, ...] = ()
    for array, rel, what in ((raw, mask_rel, "size"), (roi, roi_rel, "ROI size")):
        if array is not None and array.shape[:2] != (height, width):
            h, w = array.shape[:2]
            add(
                rel,
                f"{what} {w}x{h} does not match image {image_rel} ({width}x{height}); check the pairing pattern",
            )
    if raw is not None and raw.shape[:2] == (height, width):
        try:
            labels = decode_mask(raw, spec, mask_rel)
        except DataError as e:
            add(mask_rel, str(e).removeprefix(f"{mask_rel}: "))
        else:
            if roi is not None and roi.shape[:2] == (height, width):
                inside = roi_inside(roi)
                if not inside.any():
                    add(roi_rel, "ROI mask is empty: no pixel of this image would be used", "warning")
                labels = labels[inside]
            classes = tuple(int(v) for v in np.unique(labels) if v < len(spec.classes))
    return _Checked(problems, image.shape[0], classes)


def _read(reader, path, rel: str, max_pixels: int, add) -> np.ndarray | None:
    try:
        return reader(path, max_pixels)
    except DataError as e:
        add(rel, str(e).removeprefix(f"{path[0] if isinstance(path, tuple) else path}: "))
        return None


def _listed(spec: DatasetSpec) -> str:
    return f"of the {spec.layout} layout" if spec.layout else "in the manifest"


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
