"""Topology-aware metrics of binary masks: clDice, adapted Rand error, unmatched components.

* clDice (Shit et al. 2021) with hard skeletons (`skimage.morphology.skeletonize`):
  Tprec = |S(P) & G| / |S(P)|, Tsens = |S(G) & P| / |S(G)|, clDice = 2 Tprec Tsens / (Tprec + Tsens).
  For thin structures (vessels, neurites): it rewards connectivity rather than thickness.
* Adapted Rand error (ISBI 2012 / CREMI; `skimage.metrics.adapted_rand_error`) between the
  connected components of one class in truth and prediction, e.g. cell interiors separated by
  membranes in EM images. Truth pixels outside the class are not scored (skimage ignores truth
  label 0); predicted background inside a true object is one more (wrong) segment.
* Unmatched components: connected components of one mask that touch no pixel of the other.
  `false_positive_islands` = predicted components with no overlap with the truth; swapping the
  arguments gives missed objects.

Policy as elsewhere: a score with no evidence is NaN (clDice: both masks empty; adapted Rand
error: no true object). clDice is 0 when exactly one mask is empty. An empty prediction is, by
skimage's convention, one segment merging all true objects (recall drops, precision stays 1).
`valid` (optional boolean mask with ignore_index/ROI folded in) restricts both masks to the
evaluated region.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.metrics import adapted_rand_error as _skimage_adapted_rand_error
from skimage.morphology import skeletonize

from unetkit.metrics.boundary import binary_mask


def label_components(mask: np.ndarray, connectivity: int = 1) -> tuple[np.ndarray, int]:
    """Connected components (1..n, background 0); connectivity 1 = faces only, mask.ndim = full."""
    m = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(m.ndim, connectivity)
    labels, n = ndimage.label(m, structure)
    return labels, int(n)


def cldice(pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Centerline Dice of two binary masks; NaN if both are empty, 0 if one is."""
    p, g = binary_mask(pred, valid), binary_mask(true, valid)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} does not match truth shape {g.shape}")
    if not p.any() and not g.any():
        return math.nan
    if not p.any() or not g.any():
        return 0.0
    sp, sg = skeletonize(p), skeletonize(g)
    tprec = np.count_nonzero(sp & g) / max(np.count_nonzero(sp), 1)
    tsens = np.count_nonzero(sg & p) / max(np.count_nonzero(sg), 1)
    return 0.0 if tprec + tsens == 0 else 2.0 * tprec * tsens / (tprec + tsens)


def adapted_rand_error(
    pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None, connectivity: int = 1
) -> tuple[float, float, float]:
    """(error, precision, recall) of the adapted Rand index between connected components.

    Connectivity 1 (4-neighbours in 2-D) by default, so a one-pixel membrane separates two cells
    even where it runs diagonally. NaN triple when the truth has no object in the valid region.
    """
    p, g = binary_mask(pred, valid), binary_mask(true, valid)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} does not match truth shape {g.shape}")
    if not g.any():
        return math.nan, math.nan, math.nan
    true_labels, _ = label_components(g, connectivity)
    pred_labels, _ = label_components(p, connectivity)  # ignored pixels: truth 0, not scored
    error, precision, recall = _skimage_adapted_rand_error(true_labels, pred_labels)
    return float(error), float(precision), float(recall)


def unmatched_components(
    source: np.ndarray, other: np.ndarray, valid: np.ndarray | None = None, connectivity: int = 2
) -> tuple[int, int]:
    """(count, area) of connected components of `source` with no pixel in `other`.

    Components are taken on `source` restricted to `valid`; area counts valid pixels. Default
    connectivity 2 (8-neighbours in 2-D): a thin diagonal vessel stays one component.
    """
    s, o = binary_mask(source, valid), binary_mask(other, valid)
    if s.shape != o.shape:
        raise ValueError(f"mask shapes differ: {s.shape} and {o.shape}")
    labels, n = label_components(s, min(connectivity, s.ndim))
    if n == 0:
        return 0, 0
    touched = np.bincount(labels[o], minlength=n + 1)[1:] > 0
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return int(np.count_nonzero(~touched)), int(area[~touched].sum())


def false_positive_islands(
    pred: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None, connectivity: int = 2
) -> tuple[int, int]:
    """(count, area) of predicted components that overlap no true pixel."""
    return unmatched_components(pred, true, valid, connectivity)
