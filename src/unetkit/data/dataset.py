"""Samples in memory and the random patch sampler that feeds training.

`load_samples` reads images as `(C, H, W)` float32 (raw units) and label maps with the ROI folded
in (outside → 255). `PatchSampler.next_batch()` returns `(images (N, C, h, w) float32, labels
(N, h, w) int64)` tensors. A fraction `rare_oversample` of patches is centred on a pixel of a rare
class (frequency below `rare_threshold`; when no class is rare: of a non-background class, picked
uniformly) and `foreground_oversample` on a non-background pixel; the rest are uniform. Images
smaller than the patch are padded (reflect for images, 255 for labels). With `targets` (a teacher's
class probabilities `(K, H, W)` per sample, `unetkit.training.distill`), each patch's images carry
the same crop of them as K channels after the image's own (zeros in padding). With a `window`
larger than the patch (`unetkit.data.transforms.context_window`), each patch comes with the window
around it -- the patch its exact centre, drawn as without one -- for the augmenter to rotate or zoom
out of (reflected past the image's edges, labels 255 there). All randomness comes from
one numpy Generator whose state `state_dict()` exposes as plain JSON values, for exact resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unetkit.data.io import DEFAULT_MAX_PIXELS, read_image_stack, read_mask
from unetkit.data.pairing import Sample, read_raw_mask
from unetkit.data.progress import track
from unetkit.data.spec import IGNORE_INDEX, DatasetSpec, decode_mask, roi_inside
from unetkit.errors import DataError

MAX_POSITIONS = 20_000  # per image and class: enough candidate centres, bounded memory


@dataclass(frozen=True, eq=False)
class LoadedSample:
    key: str
    image: np.ndarray  # (C, H, W) float32, raw units
    labels: np.ndarray  # (H, W) uint8 class indices, 255 = ignore (outside the ROI included)


def load_sample(sample: Sample, spec: DatasetSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedSample:
    image = read_image_stack(sample.image_files, max_pixels)
    labels = decode_mask(read_raw_mask(sample, spec, max_pixels), spec, sample.mask)
    if labels.shape != image.shape[1:]:
        raise DataError(
            f"{sample.mask}: size {labels.shape[1]}x{labels.shape[0]} does not match image {sample.image} "
            f"({image.shape[2]}x{image.shape[1]}); check the pairing pattern"
        )
    if sample.roi is not None:
        roi = read_mask(sample.roi, max_pixels)
        if roi.shape[:2] != labels.shape:
            raise DataError(f"{sample.roi}: ROI size does not match image {sample.image}")
        labels = np.where(roi_inside(roi), labels, np.uint8(IGNORE_INDEX))
    return LoadedSample(sample.key, image, labels)


def load_samples(
    samples: Sequence[Sample], spec: DatasetSpec, progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[LoadedSample]:
    """Read all samples into memory (a progress bar on stderr for many files)."""
    return [load_sample(s, spec, max_pixels) for s in track(samples, "loading images", progress)]


def class_frequencies(samples: Sequence[LoadedSample], num_classes: int) -> np.ndarray:
    """Fraction of labelled (non-ignored) pixels per class."""
    counts = np.zeros(num_classes, np.int64)
    for s in samples:
        counts += np.bincount(s.labels.ravel(), minlength=IGNORE_INDEX + 1)[:num_classes]
    return counts / max(1, counts.sum())


class PatchSampler:
    def __init__(
        self,
        samples: Sequence[LoadedSample],
        patch_size: tuple[int, int],
        batch_size: int,
        rare_oversample: float = 0.33,
        rng: np.random.Generator | int = 0,
        *,
        num_classes: int | None = None,
        rare_threshold: float = 0.05,
        foreground_oversample: float = 0.0,
        targets: Sequence[np.ndarray] | None = None,
        window: tuple[int, int] | None = None,
    ) -> None:
        if not samples:
            raise DataError("no samples to draw patches from")
        if not 0 <= rare_oversample + foreground_oversample <= 1:
            raise DataError(
                f"rare_oversample + foreground_oversample = {rare_oversample + foreground_oversample}; "
                "expected a fraction between 0 and 1"
            )
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        # each patch is cut out with this surrounding window (patch + a whole margin per side; the
        # augmenter's `context_window`), reflected past the image's edges, labels ignored there
        self.window = self.patch_size if window is None else (int(window[0]), int(window[1]))
        if any(v < p or (v - p) % 2 for v, p in zip(self.window, self.patch_size, strict=True)):
            raise DataError(f"window {self.window}: expected the patch {self.patch_size} plus an equal margin per side")
        self.batch_size = int(batch_size)
        self.rare_oversample = float(rare_oversample)
        self.foreground_oversample = float(foreground_oversample)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.images = [_pad(s.image, self.patch_size, "reflect") for s in samples]
        self.labels = [_pad(s.labels, self.patch_size, IGNORE_INDEX) for s in samples]
        self.targets = None
        if targets is not None:
            if len(targets) != len(samples) or any(
                t.shape[1:] != s.labels.shape for t, s in zip(targets, samples, strict=True)
            ):
                raise DataError("targets: expected one (K, H, W) array per sample, of the sample's size")
            self.targets = [_pad(t, self.patch_size, 0) for t in targets]
        if num_classes is None:
            num_classes = 1 + max(int(lab[lab != IGNORE_INDEX].max(initial=0)) for lab in self.labels)
        self.frequencies = class_frequencies(samples, num_classes)
        present = [k for k in range(num_classes) if self.frequencies[k] > 0]
        self.rare_classes = [k for k in present if self.frequencies[k] < rare_threshold]
        self.foreground_classes = [k for k in present if k != 0]
        self._positions = {
            k: _positions(self.labels, k) for k in set(self.rare_classes + self.foreground_classes)
        }
        areas = np.array([lab.size for lab in self.labels], np.float64)
        self._image_p = areas / areas.sum()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (N, C, *window), labels (N, *window)): each drawn patch with its window around it."""
        h, w = self.window
        images, labels = [], []
        for _ in range(self.batch_size):
            index, top, left = self._draw()
            top, left = top - (h - self.patch_size[0]) // 2, left - (w - self.patch_size[1]) // 2
            image = _crop(self.images[index], top, left, h, w, "reflect")
            if self.targets is not None:
                soft = _crop(self.targets[index], top, left, h, w, 0)
                image = np.concatenate([image, soft.astype(np.float32)])
            images.append(image)
            labels.append(_crop(self.labels[index], top, left, h, w, IGNORE_INDEX))
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels).astype(np.int64))

    def __iter__(self):
        while True:
            yield self.next_batch()

    def _draw(self) -> tuple[int, int, int]:
        u = self.rng.random()
        classes = None
        if u < self.rare_oversample:
            classes = self.rare_classes or self.foreground_classes
        elif u < self.rare_oversample + self.foreground_oversample:
            classes = self.foreground_classes
        h, w = self.patch_size
        if classes:
            image_ids, flat = self._positions[classes[self.rng.integers(len(classes))]]
            j = self.rng.integers(len(flat))
            index = int(image_ids[j])
            height, width = self.labels[index].shape
            row, col = divmod(int(flat[j]), width)
            top = int(np.clip(row - h // 2 + self.rng.integers(-(h // 4), h // 4 + 1), 0, height - h))
            left = int(np.clip(col - w // 2 + self.rng.integers(-(w // 4), w // 4 + 1), 0, width - w))
            return index, top, left
        index = int(self.rng.choice(len(self.labels), p=self._image_p))
        height, width = self.labels[index].shape
        return index, int(self.rng.integers(height - h + 1)), int(self.rng.integers(width - w + 1))

    def state_dict(self) -> dict[str, Any]:
        """The RNG state as plain JSON values (never pickled)."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def _pad(array: np.ndarray, patch: tuple[int, int], mode: str | int) -> np.ndarray:
    height, width = array.shape[-2:]
    dh, dw = max(0, patch[0] - height), max(0, patch[1] - width)
    return _pad_by(array, ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), mode)


def _crop(array: np.ndarray, top: int, left: int, h: int, w: int, mode: str | int) -> np.ndarray:
    """array[..., top:top+h, left:left+w], padded (`_pad_by`'s `mode`) where it reaches past the edges."""
    height, width = array.shape[-2:]
    inside = array[..., max(0, top) : top + h, max(0, left) : left + w]
    spatial = ((max(0, -top), max(0, top + h - height)), (max(0, -left), max(0, left + w - width)))
    return _pad_by(inside, spatial, mode)


def _pad_by(array: np.ndarray, spatial: tuple[tuple[int, int], tuple[int, int]], mode: str | int) -> np.ndarray:
    if not any(spatial[0] + spatial[1]):
        return array
    height, width = array.shape[-2:]
    pad = ((0, 0),) * (array.ndim - 2) + spatial
    if mode == "reflect":
        # numpy reflects repeatedly when the pad exceeds the size; a 1-pixel axis cannot reflect
        return np.pad(array, pad, mode="reflect" if min(height, width) > 1 else "edge")
    return np.pad(array, pad, mode="constant", constant_values=mode)


def _positions(labels: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(image index, flat pixel index) of pixels of class `k`, at most MAX_POSITIONS per image."""
    ids, flats = [], []
    for i, lab in enumerate(labels):
        flat = np.flatnonzero(lab.ravel() == k)
        if len(flat) > MAX_POSITIONS:
            flat = flat[:: int(np.ceil(len(flat) / MAX_POSITIONS))]
        ids.append(np.full(len(flat), i, np.int32))
        flats.append(flat.astype(np.int64))
    return np.concatenate(ids), np.concatenate(flats)
