"""What a prediction becomes: label maps from probabilities, and what a person looks at, colour
masks and overlays of a mask on its image (pure numpy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def argmax_labels(probabilities: np.ndarray, dtype: Any = np.uint8) -> np.ndarray:
    """`probabilities.argmax(axis=0).astype(dtype)` (the first class wins ties) from a few
    elementwise passes per class: numpy's arg-max over the leading axis gathers each pixel's K
    values and searches them one pixel at a time, ~20x slower for two classes."""
    labels = np.zeros(probabilities.shape[1:], dtype)
    best = probabilities[0]
    for c in range(1, len(probabilities)):
        better = np.greater(probabilities[c], best)
        labels *= ~better
        labels += better * labels.dtype.type(c)
        if c + 1 < len(probabilities):
            best = np.maximum(best, probabilities[c])
    return labels


def colorize(labels: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(H,W) class indices -> (H,W,3) uint8; indices without a colour (e.g. ignore) are white."""
    lut = np.full((256, 3), 255, dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)[:256]
    return lut[np.clip(labels, 0, 255).astype(np.uint8)]


def display_image(image: np.ndarray) -> np.ndarray:
    """(C,H,W) raw-intensity image -> (H,W,3) uint8 for viewing (1st–99th percentile stretch)."""
    rgb = image[:3] if image.shape[0] >= 3 else np.repeat(image[:1], 3, axis=0)
    lo, hi = np.percentile(rgb, [1, 99])
    scaled = (rgb - lo) / max(float(hi - lo), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def overlay(image: np.ndarray, labels: np.ndarray, colors: Sequence[tuple[int, int, int]],
            alpha: float = 0.45, background: int = 0) -> np.ndarray:
    """Blend class colours over the image; the background class stays transparent."""
    base = display_image(image).astype(np.float32)
    colour = colorize(labels, colors).astype(np.float32)
    mask = (labels != background)[..., None]
    out = np.where(mask, (1 - alpha) * base + alpha * colour, base)
    return out.round().astype(np.uint8)
