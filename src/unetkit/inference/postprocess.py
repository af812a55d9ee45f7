"""From class probabilities to a clean label map: threshold, morphology, component filters.

`apply_postprocess(probabilities (K,H,W), params)` is what every prediction path calls with the
artifact's stored `postprocess` dict (`labels_from_probabilities`); `{}` is plain arg-max. The
params are a `PostprocessConfig` (see its doc for the per-class layout and the order of ops).

Pixels a class loses (opening, small or non-largest components) go to the most probable OTHER
class; pixels a class gains (closing, hole filling) are taken only from the background class 0,
so cleaning one class never overwrites another foreground class.

`tune_postprocess` chooses the ops greedily on validation data: each candidate is kept only when
it strictly improves the chosen metric, so the tuned result is never worse than arg-max on the
data it was tuned on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from unetkit.config import PostprocessConfig, from_dict, to_dict
from unetkit.errors import ConfigError
from unetkit.metrics.confusion import confusion_matrix
from unetkit.metrics.scores import nan_mean, per_class_dice, per_class_iou

EIGHT = np.ones((3, 3), bool)
METRICS = ("dice", "iou")


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
    if not (opening or closing or fill or min_size or largest):
        return labels
    mask = labels == c
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
    """Pooled (micro) foreground mean Dice or IoU over images (all classes when K == 1)."""
    if metric not in METRICS:
        raise ConfigError(f"metric '{metric}': expected one of {list(METRICS)}")
    cm = sum(confusion_matrix(p, t, num_classes, ignore_index) for p, t in zip(predictions, truths, strict=True))
    scores = (per_class_dice if metric == "dice" else per_class_iou)(np.asarray(cm))
    value = nan_mean(scores[1:] if num_classes > 1 else scores)
    return float(value) if np.isfinite(value) else 0.0


def candidate_steps(num_classes: int, size_grid: Sequence[int] = (5, 10, 20, 50, 100, 200, 500, 1000)) -> list[tuple[str, int, list[Any]]]:
    """(field, class, candidate values) in the order the greedy search tries them."""
    steps: list[tuple[str, int, list[Any]]] = []
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
    return dataclasses.replace(cfg, **{name: tuple(values)})


def tune_postprocess(
    probabilities: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    *,
    metric: str = "dice",
    ignore_index: int = 255,
    steps: Sequence[tuple[str, int, list[Any]]] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy search over `candidate_steps`; returns (params for the artifact, trial log).

    Each step evaluates its candidate values on top of everything kept so far and keeps the best
    one only if it is strictly better than the current score. The log has one row per step:
    field, class, best value, score before, score after, kept.
    """
    k = probabilities[0].shape[0]
    cfg = PostprocessConfig()

    def score(c: PostprocessConfig) -> float:
        return score_labels([apply_postprocess(p, c) for p in probabilities], truths, k, metric, ignore_index)

    current = score(cfg)
    log: list[dict[str, Any]] = []
    for name, c, values in steps if steps is not None else candidate_steps(k):
        trials = [(score(trial), v, trial) for v in values for trial in [with_value(cfg, name, c, v, k)]]
        best_score, best_value, best_cfg = max(trials, key=lambda t: t[0])
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
