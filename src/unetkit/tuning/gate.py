"""Adopt a tuned setting only when its gain holds across images: cross-fitting + a paired bootstrap.

A threshold, a postprocessing op or a temperature chosen on a few validation images can help those
images by chance and hurt new ones (DRIVE `--full-train` kept threshold 0.7 because it helped the one
validation image; on the test set it cost 0.008 F1). The gate asks two things of a gain:

1. It is measured out of sample. `cross_fitted` cuts the images into up to `CROSS_FOLDS` folds
   (leave-one-out up to that many images), chooses the setting on the other folds and applies it
   to the held-out fold, so every image's score comes from a setting chosen without it.
2. It holds across images. `bootstrap_gain` resamples the images with replacement (`RESAMPLES`
   times, seeded) and recomputes the pooled score of the default and of the cross-fitted
   setting on the same resample (paired). The setting is adopted only when the `LOWER_QUANTILE`
   (5th percentile) of the gain is above zero, and only with at least `MIN_IMAGES` images:
   with fewer, the defaults stay whatever the gain.

Scores are pooled sums over images ("parts": one row per image, e.g. a flattened confusion
matrix, or [negative log-likelihood sum, pixels]) and a `statistic` of the pooled row, so the
bootstrap scores a resample exactly as the tuning scores the whole set (pooled Dice, not a mean
of per-image Dice). `GateResult.to_dict()` is what the artifact records: adopted, gain, lower
bound, n and why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_IMAGES = 3  # fewer validation images than this: tuned settings are never adopted
RESAMPLES = 1000  # bootstrap resamples of the images
LOWER_QUANTILE = 0.05  # the one-sided 95 % lower confidence bound of the gain must be above zero
CROSS_FOLDS = 5  # out-of-fold tuning: at most this many folds (leave-one-out below)

Statistic = Callable[[np.ndarray], float]  # pooled parts (d,) -> score, higher is better


@dataclass(frozen=True)
class GateResult:
    adopted: bool
    gain: float  # the pooled gain on all images (out of fold), default -> setting
    lower: float  # the bootstrap lower bound of the gain (nan when not bootstrapped)
    n: int  # images
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"adopted": self.adopted, "gain": self.gain, "lower_bound": self.lower, "images": self.n,
                "min_images": MIN_IMAGES, "resamples": RESAMPLES, "quantile": LOWER_QUANTILE, "reason": self.reason}


def fold_indices(n: int, folds: int = CROSS_FOLDS) -> list[np.ndarray]:
    """Image indices in min(n, folds) interleaved folds (deterministic: i % k)."""
    k = max(1, min(n, folds))
    return [np.arange(i, n, k) for i in range(k)]


def refits(n: int) -> int:
    """The out-of-fold re-runs the gate makes on `n` images: one per fold (`fold_indices`), none under
    `MIN_IMAGES` (it refuses without re-running)."""
    return len(fold_indices(n)) if n >= MIN_IMAGES else 0


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, n) how often each image is drawn in each bootstrap resample (seeded)."""
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n), np.float64)
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return counts


def bootstrap_gain(default_parts: np.ndarray, tuned_parts: np.ndarray, statistic: Statistic, *,
                   resamples: int = RESAMPLES, seed: int = 0,
                   quantile: float = LOWER_QUANTILE) -> tuple[float, float]:
    """(gain on all images, `quantile` of the gain over paired bootstrap resamples of the images).

    `default_parts` / `tuned_parts`: (n, d) per-image parts, pooled by summing rows."""
    a = np.asarray(default_parts, np.float64).reshape(len(default_parts), -1)
    b = np.asarray(tuned_parts, np.float64).reshape(len(tuned_parts), -1)
    gain = statistic(b.sum(0)) - statistic(a.sum(0))
    w = resample_counts(len(a), resamples, seed)
    pooled_a, pooled_b = w @ a, w @ b
    gains = np.array([statistic(pb) - statistic(pa) for pa, pb in zip(pooled_a, pooled_b, strict=True)])
    return float(gain), float(np.quantile(gains, quantile))


def decide(default_parts: np.ndarray, tuned_parts: np.ndarray, statistic: Statistic, *, what: str,
           seed: int = 0, min_images: int | None = None, gain_name: str = "out-of-fold gain") -> GateResult:
    """Whether to adopt `what` (e.g. "postprocessing") given its out-of-fold per-image parts
    (`gain_name` says what kind of gain they give, for the reason)."""
    n = len(default_parts)
    refused = too_few(n, what, min_images)
    if refused is not None:
        return refused
    gain, lower = bootstrap_gain(default_parts, tuned_parts, statistic, seed=seed)
    pct = round(100 * LOWER_QUANTILE)
    if lower > 0:
        return GateResult(True, gain, lower, n, f"adopted: {gain_name} {gain:+.4g} over {n} images, "
                          f"{pct}th-percentile bootstrap bound {lower:+.4g} > 0")
    return GateResult(False, gain, lower, n, f"{what} kept at the default: {gain_name} {gain:+.4g} over {n} "
                      f"images, {pct}th-percentile bootstrap bound {lower:+.4g} is not above 0")


def too_few(n: int, what: str, min_images: int | None = None) -> GateResult | None:
    """The refusal when `n` images are too few to judge any gain (None when they are enough)."""
    need = MIN_IMAGES if min_images is None else min_images
    if n >= need:
        return None
    return GateResult(False, float("nan"), float("nan"), n,
                      f"{n} validation image(s), fewer than the {need} needed to tell a gain that holds "
                      f"on new images from chance: {what} kept at the default")


def not_needed(n: int, what: str) -> GateResult:
    """The result when the tuned setting is the default already (nothing to adopt)."""
    return GateResult(False, 0.0, float("nan"), n, f"{what}: the search kept the default on these images")
