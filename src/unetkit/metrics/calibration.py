"""Calibration: expected calibration error (streaming reliability bins) and temperature fitting.

Top-label calibration (Guo et al. 2017): a pixel's confidence is its largest class probability,
it is correct when that class is the true one. Confidences fall into `n_bins` equal-width bins
(lower, upper], confidence 0 in the first bin. Each bin keeps three sums, so images stream in with
O(n_bins) memory: the pixel count, the sum of confidences and the number of correct pixels.

ECE = sum_b (n_b / N) |accuracy_b - confidence_b|; MCE = max over non-empty bins.

`fit_temperature(logits, labels)` minimizes the mean negative log-likelihood of
softmax(logits / T) over valid pixels with L-BFGS (scipy, analytic gradient, T = exp(t) > 0).
With `vector=True` it then fits per-class vector scaling, softmax(w * logits + b) (Guo et al.),
starting from w = 1 / T, b = 0. Binary single-channel logits z are treated as the two-class
logits [0, z] (softmax of which is the sigmoid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_softmax, softmax

from unetkit.metrics.confusion import as_numpy, masked_pair, valid_mask


def calibration_bins(
    confidence: Any, correct: Any, n_bins: int = 15, valid: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, confidence sum, correct count) per bin, each (n_bins,) float64."""
    c, ok = masked_pair(confidence, correct, valid, ("confidence", "correctness"))
    idx = np.clip(np.ceil(c * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=c, minlength=n_bins)
    correct_sum = np.bincount(idx, weights=ok.astype(np.float64), minlength=n_bins)
    return count, conf_sum, correct_sum


def expected_calibration_error(count: np.ndarray, conf_sum: np.ndarray, correct_sum: np.ndarray) -> float:
    """ECE from bin sums; NaN when no pixel was counted."""
    total = count.sum()
    if total == 0:
        return math.nan
    return float(np.abs(correct_sum - conf_sum).sum() / total)


def pooled_ece(probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray], ignore_index: int,
               n_bins: int = 15) -> float:
    """Top-label ECE pooled over the valid pixels of several images' `(K, H, W)` probabilities."""
    sums = np.zeros((3, n_bins))
    for p, t in zip(probabilities, truths, strict=True):
        sums += np.asarray(calibration_bins(p.max(0), p.argmax(0) == t, valid=t != ignore_index, n_bins=n_bins))
    return expected_calibration_error(*sums)


def max_calibration_error(count: np.ndarray, conf_sum: np.ndarray, correct_sum: np.ndarray) -> float:
    """MCE: the largest |accuracy - confidence| over non-empty bins; NaN when all are empty."""
    has = count > 0
    if not has.any():
        return math.nan
    return float(np.max(np.abs(correct_sum[has] - conf_sum[has]) / count[has]))


def reliability_diagram(count: np.ndarray, conf_sum: np.ndarray, correct_sum: np.ndarray) -> dict[str, Any]:
    """Per-bin lower/upper edges, pixel count, mean confidence and accuracy (NaN for empty bins)."""
    n = len(count)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(count > 0, conf_sum / count, np.nan)
        acc = np.where(count > 0, correct_sum / count, np.nan)
    return {
        "lower": (np.arange(n) / n).tolist(),
        "upper": (np.arange(1, n + 1) / n).tolist(),
        "count": count.astype(np.int64).tolist(),
        "confidence": conf.tolist(),
        "accuracy": acc.tolist(),
    }


class CalibrationAccumulator:
    """Sums the reliability bins of top-label confidence over images."""

    def __init__(self, n_bins: int = 15) -> None:
        self.n_bins = n_bins
        self.count = np.zeros(n_bins)
        self.conf_sum = np.zeros(n_bins)
        self.correct_sum = np.zeros(n_bins)

    def update(self, probabilities: Any, labels: Any, valid: Any = None) -> None:
        """`probabilities (K, *spatial)`, `labels (*spatial)`, `valid` boolean mask or None."""
        probs = as_numpy(probabilities)
        lab = as_numpy(labels)
        confidence = probs.max(0)
        correct = probs.argmax(0) == lab
        binned = calibration_bins(confidence, correct, self.n_bins, valid)
        for total, add in zip((self.count, self.conf_sum, self.correct_sum), binned, strict=True):
            total += add

    def result(self) -> dict[str, Any]:
        sums = (self.count, self.conf_sum, self.correct_sum)
        return {
            "ece": expected_calibration_error(*sums),
            "mce": max_calibration_error(*sums),
            "reliability": reliability_diagram(*sums),
        }


# ---------------------------------------------------------------- temperature / vector scaling


@dataclass(frozen=True)
class CalibrationFit:
    """Fitted logit scaling. `scale`/`bias` are set for vector scaling (then they are what applies)."""

    temperature: float
    nll_before: float
    nll_after: float
    scale: tuple[float, ...] | None = None
    bias: tuple[float, ...] | None = None


def _flatten(logits: Any, labels: Any, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(M, K) float64 logits and (M,) int labels of the valid pixels; class axis 1."""
    z = as_numpy(logits).astype(np.float64)
    y = as_numpy(labels)
    if z.ndim < 2 or y.shape != (z.shape[0], *z.shape[2:]):
        raise ValueError(
            f"logits must be (N, K, *spatial) with labels (N, *spatial); got {z.shape} and {y.shape}"
        )
    z = np.moveaxis(z, 1, -1).reshape(-1, z.shape[1])
    y = y.reshape(-1)
    keep = valid_mask(y, ignore_index)
    z, y = z[keep], y[keep].astype(np.int64)
    if z.shape[1] == 1:
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must be in [0, {z.shape[1]}) or ignore_index, got {int(y.max())}")
    return z, y


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean NLL of softmax over axis 1 of (M, K) logits, (M,) labels."""
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: Any,
    labels: Any,
    *,
    vector: bool = False,
    ignore_index: int | None = 255,
    max_samples: int = 2_000_000,
    seed: int = 0,
) -> CalibrationFit:
    """Fit T (and, with `vector`, per-class w, b) by L-BFGS on the NLL of the valid pixels.

    More than `max_samples` valid pixels are subsampled at random (seeded) to bound time/memory.
    """
    z, y = _flatten(logits, labels, ignore_index)
    if y.size == 0:
        raise ValueError("fit_temperature: no valid pixel (every label is ignore_index)")
    if y.size > max_samples:
        pick = np.random.default_rng(seed).choice(y.size, max_samples, replace=False)
        z, y = z[pick], y[pick]
    m, k = z.shape
    onehot = np.zeros((m, k))
    onehot[np.arange(m), y] = 1.0
    z_true = z[np.arange(m), y]
    before = negative_log_likelihood(z, y)

    def nll_log_t(params: np.ndarray) -> tuple[float, np.ndarray]:
        s = math.exp(-params[0])  # 1 / T
        logp = log_softmax(s * z, axis=1)
        value = -logp[np.arange(m), y].mean()
        d_s = ((np.exp(logp) * z).sum(1) - z_true).mean()
        return float(value), np.array([-s * d_s])

    res = minimize(nll_log_t, np.zeros(1), jac=True, method="L-BFGS-B")
    temperature = float(math.exp(res.x[0]))
    after = negative_log_likelihood(z / temperature, y)
    if not vector:
        return CalibrationFit(temperature, before, after)

    def nll_vector(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:k], params[k:]
        zz = z * w + b
        logp = log_softmax(zz, axis=1)
        value = -logp[np.arange(m), y].mean()
        g = (np.exp(logp) - onehot) / m
        return float(value), np.concatenate([(g * z).sum(0), g.sum(0)])

    start = np.concatenate([np.full(k, 1.0 / temperature), np.zeros(k)])
    res = minimize(nll_vector, start, jac=True, method="L-BFGS-B")
    w, b = res.x[:k], res.x[k:]
    return CalibrationFit(
        temperature,
        before,
        negative_log_likelihood(z * w + b, y),
        scale=tuple(float(v) for v in w),
        bias=tuple(float(v) for v in b),
    )


def apply_calibration(logits: Any, fit: CalibrationFit) -> np.ndarray:
    """Calibrated logits (class axis 1): w * z + b with vector scaling, else z / T."""
    z = as_numpy(logits).astype(np.float32)
    if fit.scale is None or fit.bias is None:
        return z / np.float32(fit.temperature)
    if z.shape[1] == 1 and len(fit.scale) == 2:  # binary: vector scaling acts on [0, z]
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    shape = (1, -1) + (1,) * (z.ndim - 2)
    return z * np.asarray(fit.scale, np.float32).reshape(shape) + np.asarray(fit.bias, np.float32).reshape(
        shape
    )


def calibrated_probabilities(logits: Any, fit: CalibrationFit) -> np.ndarray:
    """Softmax over axis 1 of `apply_calibration(logits, fit)` (sigmoid for one binary channel)."""
    z = apply_calibration(logits, fit)
    return expit(z) if z.shape[1] == 1 else softmax(z, axis=1)
