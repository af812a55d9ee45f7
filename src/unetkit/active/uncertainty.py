"""Per-pixel uncertainty of a segmentation and one score per image (pure numpy/scipy).

Input: class probabilities `(K, H, W)` (softmax of the calibrated logits, so a temperature stored
in the artifact is honoured), or the probabilities of the 8 TTA views as a `(V, K, H, W)` array
or any iterable of `(K, H, W)` maps. Every per-pixel measure lies in [0, 1], 1 = most uncertain:

- **entropy**: `-sum_k p_k log p_k / log K` (0 for a one-hot pixel, 1 for the uniform one).
- **margin**: `1 - (p_(1) - p_(2))`, the two largest probabilities (0: certain, 1: a tie).
- **tta** (disagreement between the views): `sum_k Var_v(p_vk) / (1 - 1/K)`, the variance across
  views summed over classes. `sum_k Var_v = mean_v |p_v|^2 - |mean_v p_v|^2 <= 1 - 1/K`, so the
  ratio is 1 when the views are one-hot and spread evenly over the classes (for K = 2: half the
  views say 0, half say 1), and 0 when every view gives the same probabilities.
- **tta_flip**: 1 where the views do not all pick the same arg-max class, else 0; its image mean
  is the fraction of pixels whose predicted class changes under some flip/rotation.

`aggregate` turns a map into one number that does not grow with the image: the mean, the mean of
the `top_fraction` most uncertain pixels (an image with one small ambiguous structure on a large
easy background still scores high), or the mean over "foreground-ish" pixels, whose probability
of not being `background` is at least `foreground_min_prob` (0 when there are none).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.special import entr

from unetkit.config import RankConfig
from unetkit.errors import InputError
from unetkit.inference.predict import sharpen


def check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 3 or p.shape[0] < 2:
        raise InputError(f"probabilities have shape {p.shape}: expected (K, H, W) with K >= 2 classes")
    return p


def entropy_map(probabilities: np.ndarray) -> np.ndarray:
    """Normalized Shannon entropy per pixel, `(H, W)` in [0, 1]."""
    p = check_probabilities(probabilities)
    return (entr(p).sum(axis=0) / np.log(p.shape[0])).clip(0.0, 1.0).astype(np.float32)


def margin_map(probabilities: np.ndarray) -> np.ndarray:
    """`1 - (largest - second largest probability)` per pixel, `(H, W)` in [0, 1]."""
    p = check_probabilities(probabilities)
    top2 = np.partition(p, p.shape[0] - 2, axis=0)[-2:]
    return (1.0 - (top2[1] - top2[0])).clip(0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ViewStats:
    """What the TTA views say together: their mean probabilities and their disagreement maps."""

    mean: np.ndarray  # (K, H, W): the TTA prediction
    variance: np.ndarray  # (H, W) in [0, 1]: the normalized `tta` map
    flips: np.ndarray  # (H, W) bool: the views do not agree on the arg-max
    views: int


def view_stats(views: Iterable[np.ndarray]) -> ViewStats:
    """Mean and disagreement of probability maps `(K, H, W)` of the same image (e.g. the 8 TTA
    views). Streams: memory is a few maps, however many views."""
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    first: np.ndarray | None = None
    flips: np.ndarray | None = None
    n = 0
    for view in views:
        p = check_probabilities(view)
        winner = p.argmax(axis=0)
        if total is None:
            total, squares = p.astype(np.float64), np.square(p, dtype=np.float64).sum(axis=0)
            first, flips = winner, np.zeros(winner.shape, dtype=bool)
        else:
            if p.shape != total.shape:
                raise InputError(f"view {n} has shape {p.shape}; the first view had {total.shape}")
            total += p
            squares += np.square(p, dtype=np.float64).sum(axis=0)
            flips |= winner != first
        n += 1
    if total is None or squares is None or flips is None:
        raise InputError("view_stats: no probability maps were given")
    mean = total / n
    k = mean.shape[0]
    variance = (squares / n - np.square(mean).sum(axis=0)) / (1.0 - 1.0 / k)
    return ViewStats(mean.astype(np.float32), variance.clip(0.0, 1.0).astype(np.float32), flips, n)


def foreground_region(probabilities: np.ndarray, background: int = 0, min_prob: float = 0.1) -> np.ndarray:
    """Pixels that may belong to some class other than `background`: `1 - p_background >= min_prob`."""
    p = check_probabilities(probabilities)
    if not 0 <= background < p.shape[0]:
        raise InputError(f"background class {background} does not exist; the model has {p.shape[0]} classes")
    return (1.0 - p[background]) >= min_prob


def aggregate(values: np.ndarray, how: str = "mean", *, top_fraction: float = 0.05, region: np.ndarray | None = None) -> float:
    """One number for a per-pixel map: "mean", "top" (mean of the `top_fraction` largest values,
    at least one pixel) or "foreground" (mean over `region`; 0 for an empty region)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if how == "mean":
        return float(v.mean())
    if how == "top":
        n = max(1, int(np.ceil(top_fraction * v.size)))
        return float(np.partition(v, v.size - n)[-n:].mean())
    if how == "foreground":
        if region is None:
            raise ValueError("aggregate 'foreground' needs the region")
        inside = v[np.asarray(region, dtype=bool).ravel()]
        return float(inside.mean()) if inside.size else 0.0
    raise ValueError(f"unknown aggregate '{how}'; expected mean, top or foreground")


@dataclass(frozen=True)
class ImageUncertainty:
    """Scores of one image (each in [0, 1]; `tta` and `tta_flip` NaN without views) and the
    per-pixel map of the measure the ranking sorts by, for heat maps."""

    scores: dict[str, float]
    probabilities: np.ndarray  # (K, H, W): the TTA mean (recalibrated) when there were views
    heat: np.ndarray  # (H, W) in [0, 1]


def score_image(probabilities_or_views: np.ndarray | Iterable[np.ndarray], config: RankConfig = RankConfig(),
                tta_temperature: float = 1.0) -> ImageUncertainty:
    """Scores of one image from its probabilities `(K, H, W)`, or from its TTA views (`(V, K, H,
    W)` or an iterable of maps; entropy, margin and the returned probabilities are then those of the
    views' mean recalibrated with `tta_temperature`, as `predict --tta` computes it (`sharpen`); the
    disagreement is the raw views')."""
    stats: ViewStats | None = None
    if isinstance(probabilities_or_views, np.ndarray) and probabilities_or_views.ndim == 3:
        probs = check_probabilities(probabilities_or_views)
    else:
        stats = view_stats(probabilities_or_views)
        probs = sharpen(stats.mean.copy(), tta_temperature, "tta_temperature")
    region = foreground_region(probs, config.background, config.foreground_min_prob) if config.aggregate == "foreground" else None

    def agg(values: np.ndarray) -> float:
        return aggregate(values, config.aggregate, top_fraction=config.top_fraction, region=region)

    maps = {"entropy": entropy_map(probs), "margin": margin_map(probs)}
    scores = {name: agg(m) for name, m in maps.items()}
    if stats is not None:
        maps["tta"] = stats.variance
        scores["tta"] = agg(stats.variance)
        scores["tta_flip"] = float(stats.flips.mean())
    else:
        scores["tta"] = scores["tta_flip"] = float("nan")
    if config.by == "combined":
        heat = np.mean([maps[name] for name in ("entropy", "margin", "tta") if name in maps], axis=0)
    else:
        heat = maps[config.by]
    return ImageUncertainty(scores, probs, heat.astype(np.float32))


def combined_scores(table: dict[str, np.ndarray]) -> np.ndarray:
    """The `combined` score of each image: the mean of its percentile ranks (0 = least, 1 = most
    uncertain, ties share their mean rank) under each measure in `table` (name -> one value per
    image; measures that are NaN everywhere are left out). Rank-based, so measures on different
    scales (the TTA variance is usually far smaller than the entropy) weigh the same."""
    from scipy.stats import rankdata

    columns = [np.asarray(v, dtype=np.float64) for v in table.values() if not np.all(np.isnan(v))]
    if not columns:
        raise ValueError("combined_scores: no measure with values")
    n = columns[0].size
    if n == 1:
        return np.ones(1)
    return np.mean([(rankdata(c) - 1) / (n - 1) for c in columns], axis=0)
