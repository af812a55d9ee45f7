"""Normalized surface Dice (NSD) of two binary masks: the share of both surfaces that lies within a
tolerance of the other surface (Nikolov et al. 2021, "Clinically applicable segmentation of head
and neck anatomy for radiotherapy"; the Medical Segmentation Decathlon's second metric).

    NSD = (|{p in dP : d(p, dG) <= tau}| + |{g in dG : d(g, dP) <= tau}|) / (|dP| + |dG|)

Surfaces and distances are those of `boundary.surface_distances` (inner 4-/6-connected edges,
Euclidean distance between edge pixel centres, scaled by `spacing`), as MONAI's
`compute_surface_dice` (use_subvoxels=False) takes them, so the two agree exactly. `tolerance` is
in the units of `spacing` (pixels without it). Unlike Dice, a boundary a pixel or two off the
truth costs nothing within the tolerance: it scores what a reader would accept as correct.

Empty masks: both empty -> NaN (no evidence, left out of means); exactly one empty -> 0.
"""

from __future__ import annotations

import math

import numpy as np

from unetkit.metrics.boundary import Spacing, surface_distances


def nsd_from_distances(d_pred: np.ndarray, d_true: np.ndarray, tolerance: float) -> float:
    """NSD from the two directed edge distances of `boundary.surface_distances`."""
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"NSD tolerance must be a finite number >= 0, got {tolerance}")
    total = d_pred.size + d_true.size
    if total == 0:
        return math.nan
    within = np.count_nonzero(d_pred <= tolerance) + np.count_nonzero(d_true <= tolerance)
    return within / total


def normalized_surface_dice(
    pred: np.ndarray,
    true: np.ndarray,
    tolerance: float,
    spacing: Spacing = None,
    valid: np.ndarray | None = None,
) -> float:
    """NSD of two binary masks at `tolerance` (pixels, or `spacing` units); `valid` restricts both."""
    return nsd_from_distances(*surface_distances(pred, true, spacing, valid), tolerance)
