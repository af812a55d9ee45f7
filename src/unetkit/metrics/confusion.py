"""Confusion matrices: the counts every overlap metric is computed from.

`confusion_matrix(pred, target, K)[t, p]` is the number of pixels of true class t predicted as p
(rows = truth, columns = prediction). Pixels whose target is `ignore_index`, or outside the
optional `roi` mask, are not counted. Per class c: tp = cm[c, c], fn = row sum - tp,
fp = column sum - tp, tn = total - tp - fp - fn (see `unetkit.metrics.scores`).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(x: Any) -> np.ndarray:
    """A numpy view of a numpy array or a (possibly GPU, grad-requiring) torch tensor."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        return x.detach().cpu().numpy()
    return np.asarray(x)


def masked_pair(a: Any, b: Any, valid: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Two per-pixel arrays (float64 values, bool flags) of one shape, restricted to `valid`, flattened."""
    x = as_numpy(a).astype(np.float64, copy=False)
    y = as_numpy(b).astype(bool, copy=False)
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} shape {x.shape} does not match {names[1]} shape {y.shape}")
    if valid is not None:
        v = as_numpy(valid).astype(bool, copy=False)
        x, y = x[v], y[v]
    return x.ravel(), y.ravel()


def valid_mask(target: np.ndarray, ignore_index: int | None, roi: Any = None) -> np.ndarray:
    """Boolean mask of the pixels that count: target != ignore_index and inside `roi`."""
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    if roi is not None:
        r = as_numpy(roi)
        if r.shape != target.shape:
            raise ValueError(f"roi shape {r.shape} does not match target shape {target.shape}")
        valid &= r.astype(bool)
    return valid


def confusion_matrix(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255, roi: Any = None
) -> np.ndarray:
    """(K, K) int64 confusion matrix of label maps `pred` and `target` (same shape, any dims)."""
    p = as_numpy(pred)
    t = as_numpy(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} does not match target shape {t.shape}")
    valid = valid_mask(t, ignore_index, roi)
    p = p[valid].astype(np.int64, copy=False)
    t = t[valid].astype(np.int64, copy=False)
    for name, v in (("target", t), ("prediction", p)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            bad = v.min() if v.min() < 0 else v.max()
            raise ValueError(
                f"{name} holds class {int(bad)}, outside [0, {num_classes}) and not ignore_index"
            )
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


class ConfusionAccumulator:
    """Sums confusion matrices over images; keeps each image's matrix for per-image (macro) metrics.

    One `update` call is one image (or one volume).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, keep_per_image: bool = True) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.keep_per_image = keep_per_image
        self.total = np.zeros((num_classes, num_classes), np.int64)
        self._per_image: list[np.ndarray] = []

    def reset(self) -> None:
        self.total = np.zeros((self.num_classes, self.num_classes), np.int64)
        self._per_image = []

    def update(self, pred: Any, target: Any, roi: Any = None) -> np.ndarray:
        """Add one image; returns its confusion matrix."""
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index, roi)
        self.total += cm
        if self.keep_per_image:
            self._per_image.append(cm)
        return cm

    def compute(self) -> np.ndarray:
        """The summed (micro) confusion matrix, (K, K) int64."""
        return self.total.copy()

    @property
    def per_image(self) -> np.ndarray:
        """Stacked per-image matrices, (n_images, K, K) int64."""
        if not self._per_image:
            return np.zeros((0, self.num_classes, self.num_classes), np.int64)
        return np.stack(self._per_image)
