"""From class probabilities to a clean label map: threshold, morphology, component filters.

`apply_postprocess(probabilities (K,H,W), params)` is what every prediction path calls with the
artifact's stored `postprocess` dict (`labels_from_probabilities`); `{}` is plain arg-max. The
params are a `PostprocessConfig` (see its doc for the per-class layout and the order of ops).

Pixels a class loses (opening, small or non-largest components) go to the most probable OTHER
class; pixels a class gains (closing, hole filling) are taken only from the background class 0,
so cleaning one class never overwrites another foreground class.

`tune_postprocess` chooses the ops greedily on validation data: each candidate is kept only when
it strictly improves the chosen metric, so the tuned result is never worse than arg-max on the
data it was tuned on. Metrics: pooled foreground Dice or IoU, or "rand" (1 - the adapted Rand
error of each foreground class's connected components, mean over images: an object score for cells
separated by membranes). Tuning for "rand" adds the watershed split and guards the pixels: a trial
that lowers the pooled Dice by more than `RAND_DICE_GUARD` is not admissible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries, watershed

from unetkit.config import PostprocessConfig, from_dict, to_dict
from unetkit.errors import ConfigError
from unetkit.metrics.confusion import confusion_matrix
from unetkit.metrics.scores import nan_mean, per_class_dice, per_class_iou

EIGHT = np.ones((3, 3), bool)
METRICS = ("dice", "iou", "rand")
RAND_DICE_GUARD = 0.005  # "rand" tuning may give up at most this much pooled Dice
DEFAULT_BAND = 3  # watershed_band when a tuning trial switches the split on


def as_config(params: dict[str, Any] | PostprocessConfig) -> PostprocessConfig:
    if isinstance(params, PostprocessConfig):
        return params
    return from_dict(PostprocessConfig, dict(params or {}), "postprocess")


def apply_postprocess(probabilities: np.ndarray, params: dict[str, Any] | PostprocessConfig) -> np.ndarray:
    """(K, H, W) probabilities -> (H, W) uint8 labels with the configured clean-up."""
    cfg = as_config(params)
    probs = np.asarray(probabilities)
    k = probs.shape[0]
    if cfg.threshold is not None:
        if k != 2:
            raise ConfigError(f"postprocess.threshold: only for binary models (2 classes), this one has {k}")
        labels = (probs[1] >= cfg.threshold).astype(np.uint8)
    else:
        labels = probs.argmax(axis=0).astype(np.uint8)
    for c in range(1, k):
        labels = clean_class(labels, c, probs, cfg)
    return labels


def clean_class(labels: np.ndarray, c: int, probs: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Apply the configured ops for class `c` (in the documented order); returns a new label map."""
    opening, closing = _at(cfg.opening, c, 0), _at(cfg.closing, c, 0)
    fill, min_size, largest = _at(cfg.fill_holes, c, False), _at(cfg.min_size, c, 0), _at(cfg.keep_largest, c, False)
    seed = _at(cfg.watershed, c, 0.0)
    if not (seed or opening or closing or fill or min_size or largest):
        return labels
    mask = labels == c
    if seed:
        mask = split_objects(probs[c], labels != c, seed, _at(cfg.watershed_band, c, 0))
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


def split_objects(p: np.ndarray, background: np.ndarray, seed: float, band: int) -> np.ndarray:
    """The class mask re-drawn by watershed: objects that touch, or that spurious inner lines cut,
    come out as one region each, separated by two-pixel lines.

    Seeds are the 4-connected components of `p >= seed`; every pixel joins the basin of one seed,
    flooding the elevation 1 - p (so basins meet on the ridges of the background probability). The
    class becomes every pixel except the lines where two basins meet and the predicted `background`
    within `band` px of such a line (so real boundaries keep their predicted width, while
    background fragments inside one object, far from any line, join the object). No seed: unchanged.
    """
    markers, n = ndimage.label(p >= seed)
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


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected components with fewer than `min_size` pixels."""
    lab, n = ndimage.label(mask, structure=EIGHT)
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


# ---------------------------------------------------------------- tuning


def score_labels(
    predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
    metric: str = "dice", ignore_index: int = 255,
) -> float:
    """Pooled (micro) foreground mean Dice or IoU over images (all classes when K == 1); for
    "rand", 1 - the adapted Rand error of each foreground class's 4-connected components (truth
    pixels of other classes and ignored pixels not scored), mean over images and classes."""
    if metric not in METRICS:
        raise ConfigError(f"metric '{metric}': expected one of {list(METRICS)}")
    if metric == "rand":
        return rand_score(predictions, truths, num_classes, ignore_index)
    cm = sum(confusion_matrix(p, t, num_classes, ignore_index) for p, t in zip(predictions, truths, strict=True))
    scores = (per_class_dice if metric == "dice" else per_class_iou)(np.asarray(cm))
    value = nan_mean(scores[1:] if num_classes > 1 else scores)
    return float(value) if np.isfinite(value) else 0.0


def rand_score(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
               ignore_index: int = 255) -> float:
    from unetkit.metrics.topology import adapted_rand_error

    scores = []
    for pred, truth in zip(predictions, truths, strict=True):
        valid = truth != ignore_index
        for c in range(1 if num_classes > 1 else 0, num_classes):
            error = adapted_rand_error(pred == c, truth == c, valid)[0]
            if np.isfinite(error):
                scores.append(1.0 - error)
    return float(np.mean(scores)) if scores else 0.0


def candidate_steps(num_classes: int, size_grid: Sequence[int] = (5, 10, 20, 50, 100, 200, 500, 1000),
                    metric: str = "dice") -> list[tuple[str, int, list[Any]]]:
    """(field, class, candidate values) in the order the greedy search tries them; the watershed
    split (seed probability, then band) only for the object score "rand"."""
    steps: list[tuple[str, int, list[Any]]] = []
    if metric == "rand":  # first: the split redraws the class, a threshold tuned before it misleads
        for c in range(1, num_classes):
            steps += [("watershed", c, [0.8, 0.9, 0.95, 0.97, 0.99]), ("watershed_band", c, [1, 2, 3, 5, 8])]
    if num_classes == 2:
        steps.append(("threshold", -1, [round(t, 2) for t in np.arange(0.1, 0.91, 0.05)]))
    for c in range(1, num_classes):
        steps += [
            ("opening", c, [1, 2]),
            ("closing", c, [1, 2]),
            ("fill_holes", c, [True]),
            ("min_size", c, list(size_grid)),
            ("keep_largest", c, [True]),
        ]
    return steps


def with_value(cfg: PostprocessConfig, name: str, c: int, value: Any, num_classes: int) -> PostprocessConfig:
    if name == "threshold":
        return dataclasses.replace(cfg, threshold=value)
    default = False if name in ("fill_holes", "keep_largest") else 0
    values = list(getattr(cfg, name)) or [default] * num_classes
    values[c] = value
    cfg = dataclasses.replace(cfg, **{name: tuple(values)})
    if name == "watershed" and value and not _at(cfg.watershed_band, c, 0):
        cfg = with_value(cfg, "watershed_band", c, DEFAULT_BAND, num_classes)
    return cfg


def tune_postprocess(
    probabilities: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    *,
    metric: str = "dice",
    ignore_index: int = 255,
    steps: Sequence[tuple[str, int, list[Any]]] | None = None,
    dice_guard: float | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy search over `candidate_steps`; returns (params for the artifact, trial log).

    Each step evaluates its candidate values on top of everything kept so far and keeps the best
    one only if it is strictly better than the current score. With `dice_guard` (default
    `RAND_DICE_GUARD` for "rand", none otherwise) a trial whose pooled Dice is more than that
    below arg-max's is not admissible. The log has one row per step: field, class, best value,
    score before, score after, kept.
    """
    k = probabilities[0].shape[0]
    cfg = PostprocessConfig()
    guard = (RAND_DICE_GUARD if metric == "rand" else None) if dice_guard is None else dice_guard

    def score(c: PostprocessConfig) -> tuple[float, float]:
        labels = [apply_postprocess(p, c) for p in probabilities]
        value = score_labels(labels, truths, k, metric, ignore_index)
        if guard is None or metric == "dice":
            return value, value
        return value, score_labels(labels, truths, k, "dice", ignore_index)

    current, floor = score(cfg)
    floor = floor - guard if guard is not None else -np.inf
    log: list[dict[str, Any]] = []
    for name, c, values in steps if steps is not None else candidate_steps(k, metric=metric):
        trials = [(*score(trial), v, trial) for v in values for trial in [with_value(cfg, name, c, v, k)]]
        admissible = [(s, v, t) for s, dice, v, t in trials if dice >= floor]
        if not admissible:
            log.append({"op": name, "class": c, "value": None, "before": current, "after": current, "kept": False})
            continue
        best_score, best_value, best_cfg = max(admissible, key=lambda t: t[0])
        kept = best_score > current
        log.append({"op": name, "class": c, "value": best_value, "before": current, "after": best_score, "kept": kept})
        if kept:
            cfg, current = best_cfg, best_score
    return compact(cfg), log


def compact(cfg: PostprocessConfig) -> dict[str, Any]:
    """The non-default fields only (what the artifact stores; `{}` is plain arg-max)."""
    out = {}
    for name, value in to_dict(cfg).items():
        if value is None or (isinstance(value, list) and not any(value)):
            continue
        out[name] = value
    return out
