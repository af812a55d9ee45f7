"""From class probabilities to a clean label map: threshold, morphology, component filters.

`apply_postprocess(probabilities (K,H,W), params)` is what every prediction path calls with the
artifact's stored `postprocess` dict (`labels_from_probabilities`); `{}` is plain arg-max. The
params are a `PostprocessConfig` (see its doc for the per-class layout and the order of ops).

Pixels a class loses (opening, small or non-largest components) go to the most probable OTHER
class; pixels a class gains (closing, hole filling) are taken only from the background class 0,
so cleaning one class never overwrites another foreground class.

Which ops to apply is chosen on validation data by `unetkit.tuning.postprocess.tune_postprocess`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries, watershed

from unetkit.config import PostprocessConfig, from_dict
from unetkit.errors import ConfigError

EIGHT = np.ones((3, 3), bool)
FOUR = ndimage.generate_binary_structure(2, 1)


def as_config(params: dict[str, Any] | PostprocessConfig) -> PostprocessConfig:
    if isinstance(params, PostprocessConfig):
        return params
    return from_dict(PostprocessConfig, dict(params or {}), "postprocess")


def apply_postprocess(probabilities: np.ndarray, params: dict[str, Any] | PostprocessConfig, *,
                      upto: int | None = None) -> np.ndarray:
    """(K, H, W) probabilities -> (H, W) uint8 labels with the configured clean-up; `upto`: clean
    only the classes before it (the tuning search's shared prefix, `clean_class` does the rest)."""
    cfg = as_config(params)
    probs = np.asarray(probabilities)
    k = probs.shape[0]
    if cfg.threshold is not None:
        if k != 2:
            raise ConfigError(f"postprocess.threshold: only for binary models (2 classes), this one has {k}")
        labels = (probs[1] >= cfg.threshold).astype(np.uint8)
    else:
        labels = probs.argmax(axis=0).astype(np.uint8)
    for c in range(1, k if upto is None else min(upto, k)):
        labels = clean_class(labels, c, probs, cfg)
    return labels


OPS = ("watershed", "opening", "closing", "fill_holes", "min_size", "keep_largest")  # per-class ops, in order


def acts_on(cfg: PostprocessConfig, c: int) -> bool:
    """Whether `cfg` has any op for class `c` (else `clean_class` returns the labels unchanged)."""
    return any(_at(getattr(cfg, op), c, 0) for op in OPS)


def same_below(a: PostprocessConfig, b: PostprocessConfig, c: int) -> bool:
    """Whether `a` and `b` clean the classes before `c` alike (same threshold, same per-class settings)."""
    return a.threshold == b.threshold and all(
        (_at(getattr(a, f), j, 0) or 0) == (_at(getattr(b, f), j, 0) or 0)
        for f in (*OPS, "watershed_band", "watershed_min_seed") for j in range(1, c))


def clean_class(labels: np.ndarray, c: int, probs: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Apply the configured ops for class `c` (in the documented order); returns a new label map."""
    if not acts_on(cfg, c):
        return labels
    opening, closing = _at(cfg.opening, c, 0), _at(cfg.closing, c, 0)
    fill, min_size, largest = _at(cfg.fill_holes, c, False), _at(cfg.min_size, c, 0), _at(cfg.keep_largest, c, False)
    seed = _at(cfg.watershed, c, 0.0)
    mask = labels == c
    if seed:
        mask = split_objects(probs[c], labels != c, seed, _at(cfg.watershed_band, c, 0),
                             _at(cfg.watershed_min_seed, c, 0))
    if opening:
        mask = opening_mask(mask, opening)
    if closing:
        mask = closing_mask(mask, closing)
    if fill:
        mask = ndimage.binary_fill_holes(mask)
    if min_size:
        mask = remove_small(mask, min_size)
    if largest:
        mask = keep_largest(mask)
    return relabel(labels, c, mask, probs)


def relabel(labels: np.ndarray, c: int, mask: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Make `mask` the new region of class c: gains only from background, losses to the next best class."""
    out = labels.copy()
    gained = mask & (labels == 0)
    lost = (labels == c) & ~mask
    out[gained] = c
    if lost.any():
        others = probs[:, lost].copy()
        others[c] = -np.inf
        out[lost] = others.argmax(axis=0)
    return out


def split_objects(p: np.ndarray, background: np.ndarray, seed: float, band: int, min_seed: int = 0) -> np.ndarray:
    """The class mask re-drawn by watershed: objects that touch, or that spurious inner lines cut,
    come out as one region each, separated by two-pixel lines.

    Seeds are the 4-connected components of `p >= seed` of at least `min_seed` pixels (a smaller one is
    a speck of confidence inside an object, not an object: its basin would split that object; R13 in
    `unetkit.planning.rules` has the figures); every pixel joins the basin of one seed,
    flooding the elevation 1 - p (so basins meet on the ridges of the background probability). The
    class becomes every pixel except the lines where two basins meet and the predicted `background`
    within `band` px of such a line (so real boundaries keep their predicted width, while
    background fragments inside one object, far from any line, join the object). No seed: unchanged.
    """
    markers, n = ndimage.label(remove_small(p >= seed, min_seed, FOUR) if min_seed else p >= seed)
    if n == 0:
        return ~background
    basins = watershed(1.0 - p, markers)
    lines = find_boundaries(basins, mode="thick")
    if band:
        lines |= background & ndimage.binary_dilation(lines, EIGHT, iterations=int(band))
    return ~lines


def disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
    return xx * xx + yy * yy <= r * r


def opening_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Erosion then dilation; the image border counts as inside so objects touching it survive."""
    fp = disk(radius)
    eroded = ndimage.binary_erosion(mask, fp, border_value=1)
    return ndimage.binary_dilation(eroded, fp, border_value=0) & mask


def closing_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilation then erosion, padded so that the border does not eat into the result."""
    fp = disk(radius)
    padded = np.pad(mask, radius, mode="edge")
    closed = ndimage.binary_erosion(ndimage.binary_dilation(padded, fp), fp, border_value=1)
    return closed[radius:-radius, radius:-radius] | mask


def remove_small(mask: np.ndarray, min_size: int, structure: np.ndarray = EIGHT) -> np.ndarray:
    """Drop components (8-connected unless `structure` says otherwise) with fewer than `min_size` pixels."""
    lab, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[lab]


def keep_largest(mask: np.ndarray) -> np.ndarray:
    """Only the largest 8-connected component (ties: the first in scan order)."""
    lab, n = ndimage.label(mask, structure=EIGHT)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def _at(values: Sequence[Any], c: int, default: Any) -> Any:
    return values[c] if c < len(values) else default
