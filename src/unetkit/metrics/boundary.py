"""Boundary and surface-distance metrics of two binary masks (2-D or 3-D numpy arrays).

Boundary IoU (Cheng et al. 2021, "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation"): the boundary region of a mask is the set of its pixels within chessboard distance
`width` of the background, the image border counting as background (the official code erodes the
zero-padded mask `width` times with a 3x3 square). Boundary IoU = |Pb & Gb| / |Pb | Gb|.
The width is given in pixels or as a fraction of the image diagonal (official default 0.02).

Surface distances follow MONAI's `compute_hausdorff_distance` / `compute_average_surface_distance`:
the surface of a mask is its inner edge (mask minus its 4-/6-connected erosion, image border
counting as background); distances are Euclidean between edge pixel centres, scaled by `spacing`.
* HD95 = max(P95 of pred->truth distances, P95 of truth->pred distances), linear interpolation
  (MONAI `percentile=95, directed=False`). medpy's `hd95` instead takes P95 of the pooled
  distances of both directions; the two differ slightly.
* ASSD = mean of the pooled distances of both directions (MONAI `symmetric=True`; MONAI's default
  `symmetric=False` is the directed pred->truth mean).

Empty-mask policy: both masks empty -> NaN (no evidence, left out of means, like the absent-class
policy of `scores`); exactly one empty -> inf (a missed or hallucinated structure: a failure that
must not vanish from averages). For Boundary IoU: both empty -> NaN, one empty -> 0.
This matches MONAI for ASSD and the full HD, but MONAI 1.6's HD *percentile* returns NaN when one
mask is empty (torch.quantile interpolates inf - inf; MONAI issue #9095), which its reduction then
silently drops; we return inf there too.

`valid` (optional boolean mask, e.g. ignore_index/ROI folded in) restricts both masks to the
evaluated region before edges/boundaries are taken.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Spacing = float | Sequence[float] | None


def binary_mask(mask: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """`mask` as bool, restricted to `valid` pixels when given."""
    m = np.asarray(mask).astype(bool)
    if valid is not None:
        if np.shape(valid) != m.shape:
            raise ValueError(f"valid mask shape {np.shape(valid)} does not match mask shape {m.shape}")
        m = m & np.asarray(valid, bool)
    return m


def _check_pair(pred: np.ndarray, true: np.ndarray) -> None:
    if np.shape(pred) != np.shape(true):
        raise ValueError(f"prediction shape {np.shape(pred)} does not match truth shape {np.shape(true)}")


# ---------------------------------------------------------------- Boundary IoU


def boundary_width(shape: Sequence[int], width: int | None = None, fraction: float = 0.02) -> int:
    """Boundary width in pixels: `width` if given, else round(fraction * image diagonal), at least 1."""
    if width is not None:
        if width < 1:
            raise ValueError(f"boundary width must be >= 1 pixel, got {width}")
        return int(width)
    return max(1, int(round(fraction * math.sqrt(sum(s * s for s in shape)))))


def boundary_region(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of `mask` within chessboard distance `width` of the background or the image border."""
    m = np.asarray(mask, bool)
    if not m.any():
        return m.copy()
    padded = np.pad(m, 1)
    depth = ndimage.distance_transform_cdt(padded, metric="chessboard")
    inner = tuple(slice(1, -1) for _ in range(m.ndim))
    return m & (depth[inner] <= width)


def boundary_iou_counts(
    pred: np.ndarray, true: np.ndarray, width: int, valid: np.ndarray | None = None
) -> tuple[int, int]:
    """(intersection, union) pixel counts of the two boundary regions; sum them over images for a
    pooled (micro) Boundary IoU."""
    _check_pair(pred, true)
    p = boundary_region(binary_mask(pred, valid), width)
    g = boundary_region(binary_mask(true, valid), width)
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p | g))


def boundary_iou(
    pred: np.ndarray,
    true: np.ndarray,
    width: int | None = None,
    fraction: float = 0.02,
    valid: np.ndarray | None = None,
) -> float:
    """Boundary IoU of two binary masks; NaN when both are empty, 0 when one is."""
    inter, union = boundary_iou_counts(pred, true, boundary_width(np.shape(true), width, fraction), valid)
    return inter / union if union else math.nan


# ---------------------------------------------------------------- surface distances


def mask_edges(mask: np.ndarray) -> np.ndarray:
    """Inner edge: mask pixels with a 4- (6-) connected neighbour outside the mask or the image."""
    m = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure, border_value=0)


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus a 1-pixel margin (where available):
    edges and edge-to-edge distances are unchanged, the distance transform gets much cheaper."""
    coords = np.nonzero(a | b)
    box = tuple(slice(max(int(c.min()) - 1, 0), int(c.max()) + 2) for c in coords)
    return a[box], b[box]


def surface_distances(
    pred: np.ndarray, true: np.ndarray, spacing: Spacing = None, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(distances from each pred edge pixel to the truth edge, truth edge -> pred edge), float64.

    Both empty -> two empty arrays. One empty -> the other's edge pixels get inf.
    """
    _check_pair(pred, true)
    p, g = binary_mask(pred, valid), binary_mask(true, valid)
    if not p.any() and not g.any():
        return np.zeros(0), np.zeros(0)
    p, g = _crop_to_union(p, g)
    ep, eg = mask_edges(p), mask_edges(g)
    if not ep.any() or not eg.any():
        return np.full(np.count_nonzero(ep), np.inf), np.full(np.count_nonzero(eg), np.inf)
    sampling = None if spacing is None else np.broadcast_to(np.asarray(spacing, float), (p.ndim,))
    to_true = ndimage.distance_transform_edt(~eg, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~ep, sampling=sampling)
    return to_true[ep].astype(np.float64), to_pred[eg].astype(np.float64)


def hausdorff_from_distances(
    d_pred: np.ndarray, d_true: np.ndarray, percentile: float | None = 95.0
) -> float:
    """max over the two directions of the `percentile` (None: the maximum) of the distances."""
    if d_pred.size == 0 and d_true.size == 0:
        return math.nan
    if np.isinf(d_pred).any() or np.isinf(d_true).any() or d_pred.size == 0 or d_true.size == 0:
        return math.inf
    if percentile is None:
        return float(max(d_pred.max(), d_true.max()))
    return float(max(np.percentile(d_pred, percentile), np.percentile(d_true, percentile)))


def assd_from_distances(d_pred: np.ndarray, d_true: np.ndarray) -> float:
    """Average symmetric surface distance: mean of the pooled distances of both directions."""
    if d_pred.size == 0 and d_true.size == 0:
        return math.nan
    if d_pred.size == 0 or d_true.size == 0:
        return math.inf
    return float(np.concatenate([d_pred, d_true]).mean())


def hausdorff_distance(
    pred: np.ndarray,
    true: np.ndarray,
    percentile: float | None = 95.0,
    spacing: Spacing = None,
    valid: np.ndarray | None = None,
) -> float:
    """Symmetric Hausdorff distance (95th percentile by default) between the mask surfaces."""
    return hausdorff_from_distances(*surface_distances(pred, true, spacing, valid), percentile)


def average_surface_distance(
    pred: np.ndarray, true: np.ndarray, spacing: Spacing = None, valid: np.ndarray | None = None
) -> float:
    """Average symmetric surface distance (ASSD) between the mask surfaces."""
    return assd_from_distances(*surface_distances(pred, true, spacing, valid))
