"""ROC AUC and average precision of a binary task, streamed over many large images.

Scores are probabilities in [0, 1]. Instead of keeping every pixel, each image adds its scores to
two fixed-bin histograms (positives, negatives; `bins` equal-width bins, bin b = [b/B, (b+1)/B),
1.0 in the last bin), so memory is O(bins) whatever the number of pixels. Ignored pixels (label ==
ignore_index or outside the ROI) are passed as `valid == False` and not counted.

From the histograms, AUC and AP are *exactly* scikit-learn's `roc_auc_score` and
`average_precision_score` on the scores quantized to their bins: the ranking of the pixels is kept
except inside a bin, where pixels tie. Error bounds against the unquantized scores (computed from
the histograms themselves and reported alongside):

* AUC counts each (positive, negative) pair in the same bin as 1/2 whereas the exact value is 0 or
  1, so |AUC_hist - AUC| <= 0.5 * sum_b pos_b neg_b / (P N)  (`auc_error_bound`).
* AP = sum over positives of precision at that positive's rank / P. Inside bin b the precision
  at a positive lies in [(TP_{b-1} + 1) / (TP_{b-1} + 1 + FP_b), TP_b / (TP_b + FP_{b-1})]
  (TP_b, FP_b: counts at or above bin b), an interval that also holds the histogram's TP_b /
  (TP_b + FP_b); so |AP_hist - AP| <= sum_b pos_b / P * (upper_b - lower_b)  (`ap_error_bound`).

For scores with a continuous density both bounds are O(1/bins): with 10,000 bins typically below
1e-4. They grow when many pixels share nearly the same score (e.g. saturated probabilities).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from unetkit.metrics.confusion import masked_pair

TOLERANCE = 1e-4  # rounding of blended float32 probabilities: 1 + 1e-7 is counted in the last bin


def score_histograms(
    scores: Any, positive: Any, bins: int = 10_000, valid: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(positive counts, negative counts) per score bin, each (bins,) int64."""
    s, pos = masked_pair(scores, positive, valid, ("scores", "labels"))
    if s.size and (np.isnan(s).any() or s.min() < -TOLERANCE or s.max() > 1.0 + TOLERANCE):
        raise ValueError("scores must be probabilities in [0, 1] without NaN")
    idx = np.clip((s * bins).astype(np.int64), 0, bins - 1)
    return (
        np.bincount(idx[pos], minlength=bins).astype(np.int64),
        np.bincount(idx[~pos], minlength=bins).astype(np.int64),
    )


def _cumulative(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP counts when thresholding at each bin from the highest down, with a leading 0."""
    tp = np.concatenate([[0], np.cumsum(pos_hist[::-1])]).astype(np.float64)
    fp = np.concatenate([[0], np.cumsum(neg_hist[::-1])]).astype(np.float64)
    return tp, fp


def roc_curve(pos_hist: np.ndarray, neg_hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): thresholds are the bins' lower edges, from 1 down to 0."""
    tp, fp = _cumulative(pos_hist, neg_hist)
    bins = len(pos_hist)
    thresholds = np.concatenate([[1.0], (np.arange(bins)[::-1]) / bins])
    with np.errstate(invalid="ignore", divide="ignore"):
        return fp / fp[-1], tp / tp[-1], thresholds


def roc_auc(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids, ties within a bin count 1/2); NaN without both classes."""
    tp, fp = _cumulative(pos_hist, neg_hist)
    if tp[-1] == 0 or fp[-1] == 0:
        return math.nan
    # sum of trapezoids in count units, then normalized: exact rational arithmetic in float64
    area = np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1])) / 2.0
    return float(area / (tp[-1] * fp[-1]))


def auc_error_bound(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """Largest possible |histogram AUC - exact AUC| (same-bin pairs)."""
    p, n = float(pos_hist.sum()), float(neg_hist.sum())
    if p == 0 or n == 0:
        return math.nan
    return float(0.5 * np.dot(pos_hist.astype(np.float64), neg_hist.astype(np.float64)) / (p * n))


def average_precision(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """sum_b (R_b - R_{b-1}) P_b over thresholds at the bins (scikit-learn's definition, no
    interpolation); NaN without positives."""
    tp, fp = _cumulative(pos_hist, neg_hist)
    if tp[-1] == 0:
        return math.nan
    step = tp[1:] - tp[:-1]
    has = step > 0
    prec = tp[1:][has] / (tp[1:][has] + fp[1:][has])
    return float(np.sum(step[has] * prec) / tp[-1])


def ap_error_bound(pos_hist: np.ndarray, neg_hist: np.ndarray) -> float:
    """Largest possible |histogram AP - exact AP| (order unknown inside each bin)."""
    tp, fp = _cumulative(pos_hist, neg_hist)
    if tp[-1] == 0:
        return math.nan
    step = tp[1:] - tp[:-1]
    has = step > 0
    tp_prev, fp_prev = tp[:-1][has], fp[:-1][has]
    tp_now, fp_now = tp[1:][has], fp[1:][has]
    upper = tp_now / (tp_now + fp_prev)
    lower = (tp_prev + 1) / (tp_prev + 1 + fp_now)
    return float(np.sum(step[has] * (upper - lower)) / tp[-1])


class RankingAccumulator:
    """Sums the score histograms of a binary task over images."""

    def __init__(self, bins: int = 10_000) -> None:
        self.bins = bins
        self.positive = np.zeros(bins, np.int64)
        self.negative = np.zeros(bins, np.int64)

    def update(self, scores: Any, positive: Any, valid: Any = None) -> None:
        pos, neg = score_histograms(scores, positive, self.bins, valid)
        self.positive += pos
        self.negative += neg

    def result(self) -> dict[str, float]:
        """AUC, AP, their error bounds and the pixel counts (NaN when undefined)."""
        p, n = self.positive, self.negative
        return {
            "auc_roc": roc_auc(p, n),
            "auc_roc_error_bound": auc_error_bound(p, n),
            "average_precision": average_precision(p, n),
            "average_precision_error_bound": ap_error_bound(p, n),
            "positives": int(p.sum()),
            "negatives": int(n.sum()),
        }
