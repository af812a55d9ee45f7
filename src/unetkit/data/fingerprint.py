"""A data set fingerprint: what the auto-planner and the artifact need to know about the data.

`fingerprint(spec, samples)` hashes the files and summarizes the loaded samples with
`summarize(loaded, class_names)`: image sizes, per-channel mean/std (the normalization statistics,
also `channel_stats`), intensity percentiles, class pixel frequencies and, per class, connected
objects (count per image, sizes), their extent (the longer bounding-box side of the object a pixel
belongs to, pixel-weighted: the scale of context a pixel's object spans, which fragment counts hide),
where the class sits in the frame (mean row and column of its pixels as fractions of the image: road
low and sky high in street scenes, ~0.5 for vessels or cells, which have no upright) and thinness
(fraction of pixels surviving one erosion, mean distance to the class border: ~1 for one-pixel
vessels, large for blobs). Cheap: one pass in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from unetkit.data.dataset import LoadedSample, class_frequencies, load_samples
from unetkit.data.io import file_sha256
from unetkit.data.pairing import Sample
from unetkit.data.spec import IGNORE_INDEX, DatasetSpec

PERCENTILES = (0.5, 1.0, 50.0, 99.0, 99.5)
PIXELS_PER_IMAGE = 100_000  # sampled per image for percentiles


def content_hash(samples: Sequence[Sample]) -> str:
    """sha256 over the sorted (key, image hash, mask hash[, entry], roi hash) of every sample; a file
    several samples share (a COCO or Label Studio annotation file) is hashed once."""
    digest = hashlib.sha256()
    hashes: dict[object, str] = {}
    for s in sorted(samples, key=lambda s: s.key):
        files = [*s.image_files, s.mask] + ([s.roi] if s.roi is not None else [])
        for p in files:
            if p not in hashes:
                hashes[p] = file_sha256(p)
        digest.update("\t".join([s.key, *(hashes[p] for p in files), *([s.entry] if s.entry else [])]).encode() + b"\n")
    return digest.hexdigest()


def channel_stats(images: Sequence[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over all pixels of `(C, H, W)` images (float64 accumulation)."""
    total = sum(np.float64(im.shape[1] * im.shape[2]) for im in images)
    sums = sum(im.sum(axis=(1, 2), dtype=np.float64) for im in images)
    squares = sum(np.einsum("chw,chw->c", im, im, dtype=np.float64) for im in images)
    mean = sums / total
    std = np.sqrt(np.maximum(squares / total - mean**2, 0))
    return mean.tolist(), np.maximum(std, 1e-6).tolist()


def fingerprint(
    spec: DatasetSpec, samples: Sequence[Sample], loaded: Sequence[LoadedSample] | None = None
) -> dict[str, Any]:
    """JSON-ready summary of the data set; pass `loaded` to avoid reading the files again."""
    loaded = loaded if loaded is not None else load_samples(samples, spec)
    return {"content_sha256": content_hash(samples), **summarize(loaded, spec.class_names)}


def summarize(loaded: Sequence[LoadedSample], class_names: Sequence[str]) -> dict[str, Any]:
    sizes = np.array([s.labels.shape for s in loaded])
    mean, std = channel_stats([s.image for s in loaded])
    rng = np.random.default_rng(0)
    picks = []
    for s in loaded:
        flat = s.image.reshape(s.image.shape[0], -1)
        picks.append(flat[:, rng.integers(0, flat.shape[1], min(flat.shape[1], PIXELS_PER_IMAGE))])
    percentiles = np.percentile(np.concatenate(picks, axis=1), PERCENTILES, axis=1)
    frequencies = class_frequencies(loaded, len(class_names))
    labelled = sum(int((s.labels != IGNORE_INDEX).sum()) for s in loaded)
    return {
        "n_samples": len(loaded),
        "channels": int(loaded[0].image.shape[0]),
        "size": {
            "min": sizes.min(0).tolist(),
            "median": np.median(sizes, 0).tolist(),
            "max": sizes.max(0).tolist(),
        },
        "intensity": {
            "mean": mean,
            "std": std,
            "percentiles": {str(p): percentiles[i].tolist() for i, p in enumerate(PERCENTILES)},
        },
        "labelled_fraction": labelled / max(1, int(sizes.prod(1).sum())),
        "classes": [
            {"name": name, "index": k, "pixel_fraction": float(frequencies[k]), **_objects(loaded, k)}
            for k, name in enumerate(class_names)
        ],
    }


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value below which half the total weight lies (0 for no values)."""
    if not len(values):
        return 0.0
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order], dtype=np.float64)
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _objects(loaded: Sequence[LoadedSample], k: int) -> dict[str, Any]:
    counts, sizes, extents, survived, area, depth = [], [], [], 0, 0, 0.0
    row_sum, col_sum = 0.0, 0.0
    for s in loaded:
        region = s.labels == k
        n_pixels = int(region.sum())
        if not n_pixels:
            counts.append(0)
            continue
        components, n = ndimage.label(region)
        counts.append(n)
        sizes.append(np.bincount(components.ravel())[1:])
        extents.append(np.array([max(b[0].stop - b[0].start, b[1].stop - b[1].start)
                                 for b in ndimage.find_objects(components)], np.int64))
        height, width = region.shape
        row_sum += float(region.sum(1) @ ((np.arange(height) + 0.5) / height))
        col_sum += float(region.sum(0) @ ((np.arange(width) + 0.5) / width))
        survived += int(ndimage.binary_erosion(region).sum())
        depth += float(ndimage.distance_transform_edt(region).sum())
        area += n_pixels
    sizes_all = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    size_stats = np.percentile(sizes_all, (10, 50, 90)).tolist() if len(sizes_all) else [0.0, 0.0, 0.0]
    return {
        "present_in": int(sum(c > 0 for c in counts)),
        "objects_per_image": float(np.mean(counts)) if counts else 0.0,
        "object_size_p10_p50_p90": size_stats,
        "object_extent_p50": weighted_median(np.concatenate(extents), sizes_all) if extents else 0.0,
        "mean_row_col": [row_sum / area, col_sum / area] if area else [0.5, 0.5],
        "erosion_survival": survived / area if area else 0.0,
        "mean_border_distance": depth / area if area else 0.0,
    }


def largest_class(fp: dict[str, Any] | None) -> int | None:
    """The index of the class with the most labelled pixels in a fingerprint (None: unknown)."""
    classes = (fp or {}).get("classes") or []
    if not classes or any("pixel_fraction" not in c for c in classes):
        return None
    return int(max(classes, key=lambda c: c["pixel_fraction"])["index"])
