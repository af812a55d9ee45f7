"""What drift detection measures on one image and on the model's answer to it (pure functions).

Two kinds of feature, both plain numpy arrays:

- **scalar** features: a few values per image. Brightness (mean luminance), contrast (its
  standard deviation), sharpness (variance of the Laplacian of the luminance), per-class pixel
  fractions and per-foreground-class connected-component counts are measured on each cell of a
  `grid` x `grid` partition of the image (16 values per image by default); height, width and
  aspect (width / height) once per image. Cells rather than whole images because PSI on a
  handful of per-image values is mostly sampling noise: with 20 images on each side and 10 bins,
  the expected PSI of two samples of the SAME distribution is about (bins - 1) x (1/20 + 1/20)
  = 0.9, far above any useful threshold (see docs/monitoring.md).
- **histogram** features: one distribution per image over fixed bin edges. Per-channel
  intensity (edges from the baseline's range), confidence (the winning probability, on [1/K, 1])
  and normalized entropy (entropy / ln K, on [0, 1]).

Bins: `edges` are increasing; `bin_index` puts value x in bin `searchsorted(edges, x, "right")`,
so there are `len(edges) + 1` bins and the first and last catch everything below / above the
range: a shifted image lands in them rather than vanishing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

GRID = 4  # cells per side for the local (scalar) statistics
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 weights for RGB
MAX_HISTOGRAM_PIXELS = 262_144  # pixels per channel binned per image (an even stride over the image)
PROBABILITY_BINS = 20  # confidence and entropy histograms


# ---------------------------------------------------------------- bins


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: 0 below edges[0], i for edges[i-1] <= x < edges[i], len(edges) above."""
    return np.searchsorted(edges, np.asarray(values).ravel(), side="right")


def bin_fractions(values: np.ndarray, edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Fraction of `values` in each of the `len(edges) + 1` bins (sums to 1; zeros when empty)."""
    edges = np.asarray(edges, np.float64)
    values = np.asarray(values).ravel()
    counts = np.bincount(bin_index(values, edges), minlength=len(edges) + 1).astype(np.float64)
    return counts / max(values.size, 1)


# ---------------------------------------------------------------- input image


def luminance(image: np.ndarray) -> np.ndarray:
    """(H, W) float32: BT.601 luma for 3+ channels (the first three), the channel mean otherwise."""
    if image.shape[0] >= 3:
        return np.tensordot(LUMA, image[:3].astype(np.float32, copy=False), axes=1)
    return image.astype(np.float32, copy=False).mean(axis=0)


def cell_bounds(size: int, grid: int) -> np.ndarray:
    """Start offsets of `grid` near-equal, non-empty cells along an axis of `size` pixels."""
    return np.unique(np.linspace(0, size, min(grid, size) + 1).astype(np.int64)[:-1])


def cell_means(plane: np.ndarray, grid: int) -> np.ndarray:
    """Mean of `plane` (H, W) over each cell of the grid, row-major, float64."""
    rows, cols = cell_bounds(plane.shape[0], grid), cell_bounds(plane.shape[1], grid)
    sums = np.add.reduceat(np.add.reduceat(plane, rows, axis=0, dtype=np.float64), cols, axis=1)
    heights = np.diff(np.append(rows, plane.shape[0]))
    widths = np.diff(np.append(cols, plane.shape[1]))
    return (sums / np.outer(heights, widths)).ravel()


def cell_variances(plane: np.ndarray, grid: int) -> np.ndarray:
    plane = plane.astype(np.float64)
    return np.maximum(cell_means(plane * plane, grid) - cell_means(plane, grid) ** 2, 0.0)


def image_statistics(image: np.ndarray, grid: int = GRID) -> dict[str, np.ndarray]:
    """Scalar input features of a `(C, H, W)` raw-intensity image: per-cell brightness, contrast
    and sharpness; height, width and aspect once."""
    _, height, width = image.shape
    luma = luminance(image)
    laplacian = ndimage.laplace(luma, mode="reflect")
    return {
        "brightness": cell_means(luma, grid),
        "contrast": np.sqrt(cell_variances(luma, grid)),
        "sharpness": cell_variances(laplacian, grid),
        "height": np.array([float(height)]),
        "width": np.array([float(width)]),
        "aspect": np.array([round(width / height, 2)]),  # to 1 %: a resize that rounds sizes is no new aspect
    }


def intensity_histograms(image: np.ndarray, edges: Sequence[Sequence[float]]) -> dict[str, np.ndarray]:
    """Per-channel intensity distributions (`intensity.c<i>`) on the baseline's bin edges."""
    if image.shape[0] != len(edges):
        raise ValueError(f"image has {image.shape[0]} channel(s); the baseline has {len(edges)}")
    step = max(1, int(np.ceil(np.sqrt(image.shape[1] * image.shape[2] / MAX_HISTOGRAM_PIXELS))))
    view = image[:, ::step, ::step]
    return {f"intensity.c{c}": bin_fractions(view[c], edges[c]) for c in range(image.shape[0])}


def intensity_range(images: Iterable[np.ndarray], bins: int) -> list[list[float]]:
    """Equal-width bin edges per channel spanning the images' minimum to maximum (one pass)."""
    ranges = [(im.reshape(im.shape[0], -1).min(axis=1), im.reshape(im.shape[0], -1).max(axis=1)) for im in images]
    if len({len(lo) for lo, _ in ranges}) != 1:
        raise ValueError(f"images have different channel counts {sorted({len(lo) for lo, _ in ranges})}")
    low, high = np.min([lo for lo, _ in ranges], axis=0), np.max([hi for _, hi in ranges], axis=0)
    edges = []
    for lo, hi in zip(low.tolist(), high.tolist(), strict=True):
        top = np.nextafter(max(hi, lo), np.inf)  # the maximum itself stays inside the range
        edges.append(np.linspace(lo, top, bins + 1).tolist())
    return edges


# ---------------------------------------------------------------- model output


def confidence_edges(num_classes: int) -> list[float]:
    return np.linspace(1.0 / num_classes, 1.0 + 1e-6, PROBABILITY_BINS + 1).tolist()


def entropy_edges() -> list[float]:
    return np.linspace(0.0, 1.0 + 1e-6, PROBABILITY_BINS + 1).tolist()


def output_statistics(
    probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str], grid: int = GRID
) -> dict[str, np.ndarray]:
    """Output features of `(K, H, W)` probabilities and the `(H, W)` label map served from them:
    per-cell class fractions (`fraction.<class>`), per-cell connected components of every class
    but the first (`components.<class>`, 8-connected), and the confidence and normalized-entropy
    distributions."""
    k = probabilities.shape[0]
    if len(class_names) != k:
        raise ValueError(f"probabilities have {k} classes; expected {len(class_names)} ({list(class_names)})")
    rows, cols = cell_bounds(labels.shape[0], grid), cell_bounds(labels.shape[1], grid)
    row_ends, col_ends = np.append(rows[1:], labels.shape[0]), np.append(cols[1:], labels.shape[1])
    features: dict[str, np.ndarray] = {}
    for c, name in enumerate(class_names):
        features[f"fraction.{name}"] = cell_means((labels == c).astype(np.float32), grid)
    structure = np.ones((3, 3), bool)
    for c, name in enumerate(class_names[1:], start=1):
        counts = [ndimage.label(labels[r0:r1, c0:c1] == c, structure)[1]
                  for r0, r1 in zip(rows, row_ends, strict=True) for c0, c1 in zip(cols, col_ends, strict=True)]
        features[f"components.{name}"] = np.asarray(counts, np.float64)
    step = max(1, int(np.ceil(np.sqrt(labels.size / MAX_HISTOGRAM_PIXELS))))
    p = probabilities[:, ::step, ::step].astype(np.float32, copy=False)
    features["confidence"] = bin_fractions(p.max(axis=0), confidence_edges(k))
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=0) / np.log(k) if k > 1 else np.zeros(p.shape[1:])
    features["entropy"] = bin_fractions(entropy, entropy_edges())
    return features
