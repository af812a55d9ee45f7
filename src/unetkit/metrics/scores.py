"""Overlap scores from a confusion matrix (rows = truth, columns = prediction).

Every function takes `cm` of shape (K, K) or a stack (..., K, K) (e.g. per-image matrices) and
works on the per-class counts tp, fp, fn, tn of `counts(cm)`.

Absent-class policy
-------------------
A class that is absent from both the truth and the prediction in the evaluated region (no pixel
of it in the truth, none predicted: tp + fp + fn == 0) gets NaN for every per-class score: there
is no evidence either way. NaN scores are excluded from means (`nan_mean`), and a mean over no
classes is NaN. Otherwise a zero denominator gives 0: a class absent from the truth but predicted
somewhere has IoU = Dice = 0 (and recall 0); a class present in the truth but never predicted has
precision 0 (and IoU = Dice = recall = 0). `summarize` writes NaN as JSON null.

Micro vs macro: scores of the summed matrix are micro (pixel-pooled over images); `nan_mean` of
the scores of per-image matrices over the image axis gives macro (per-image average) scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (tp, fp, fn, tn), each of shape (..., K), int64."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim < 2 or cm.shape[-1] != cm.shape[-2]:
        raise ValueError(f"confusion matrix must be (..., K, K), got shape {cm.shape}")
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fn = cm.sum(-1) - tp
    fp = cm.sum(-2) - tp
    tn = cm.sum((-2, -1))[..., None] - tp - fp - fn
    return tp, fp, fn, tn


def _score(num: np.ndarray, den: np.ndarray, absent: np.ndarray) -> np.ndarray:
    """num / den; 0 where den == 0; NaN where the class is absent from truth and prediction."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    out[absent] = np.nan
    return out


def _absent(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    return (tp + fp + fn) == 0


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU (Jaccard) per class: tp / (tp + fp + fn)."""
    tp, fp, fn, _ = counts(cm)
    return _score(tp, tp + fp + fn, _absent(tp, fp, fn))


def per_class_dice(cm: np.ndarray) -> np.ndarray:
    """Dice (F1) per class: 2 tp / (2 tp + fp + fn)."""
    tp, fp, fn, _ = counts(cm)
    return _score(2 * tp, 2 * tp + fp + fn, _absent(tp, fp, fn))


def precision(cm: np.ndarray) -> np.ndarray:
    """Precision per class: tp / (tp + fp)."""
    tp, fp, fn, _ = counts(cm)
    return _score(tp, tp + fp, _absent(tp, fp, fn))


def recall(cm: np.ndarray) -> np.ndarray:
    """Recall (sensitivity) per class: tp / (tp + fn)."""
    tp, fp, fn, _ = counts(cm)
    return _score(tp, tp + fn, _absent(tp, fp, fn))


def pixel_accuracy(cm: np.ndarray) -> np.ndarray | float:
    """Fraction of counted pixels predicted correctly; NaN when no pixel is counted."""
    cm = np.asarray(cm, dtype=np.int64)
    total = cm.sum((-2, -1)).astype(np.float64)
    correct = np.trace(cm, axis1=-2, axis2=-1).astype(np.float64)
    acc = np.divide(correct, total, out=np.full_like(total, np.nan), where=total > 0)
    return float(acc) if acc.ndim == 0 else acc


def nan_mean(x: np.ndarray, axis: int | None = None) -> Any:
    """Mean ignoring NaN; NaN (without a warning) where every value is NaN."""
    x = np.asarray(x, dtype=np.float64)
    n = np.sum(~np.isnan(x), axis=axis)
    s = np.nansum(x, axis=axis)
    out = np.divide(s, n, out=np.full(np.shape(s), np.nan), where=n > 0)
    return float(out) if out.ndim == 0 else out


def mean_iou(cm: np.ndarray, include_background: bool = True) -> Any:
    """Mean of `per_class_iou` over classes (NaN classes excluded); class 0 is the background."""
    iou = per_class_iou(cm)
    return nan_mean(iou if include_background else iou[..., 1:], axis=-1)


def json_value(x: Any) -> Any:
    """Plain JSON value: numpy scalars/arrays to Python, NaN and +-inf to None, recursively."""
    if isinstance(x, dict):
        return {str(k): json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_value(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_value(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def summarize(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """JSON-ready summary of one (K, K) matrix: per-class rows and means (NaN -> null).

    `mean_*` average over all classes, `mean_*_foreground` over classes 1.. (K >= 2).
    """
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[-1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if cm.shape != (k, k) or len(names) != k:
        raise ValueError(
            f"summarize: need a (K, K) matrix and K class names, got {cm.shape} and {len(names)}"
        )
    scores = {
        "iou": per_class_iou(cm),
        "dice": per_class_dice(cm),
        "precision": precision(cm),
        "recall": recall(cm),
    }
    rows = [
        {
            "class": names[c],
            **{m: v[c] for m, v in scores.items()},
            "true_pixels": cm[c].sum(),
            "predicted_pixels": cm[:, c].sum(),
        }
        for c in range(k)
    ]
    out: dict[str, Any] = {"pixels": cm.sum(), "pixel_accuracy": pixel_accuracy(cm)}
    for m, v in scores.items():
        out[f"mean_{m}"] = nan_mean(v)
    if k >= 2:
        out["mean_iou_foreground"] = nan_mean(scores["iou"][1:])
        out["mean_dice_foreground"] = nan_mean(scores["dice"][1:])
    out["per_class"] = rows
    return json_value(out)
