"""Annotation shapes to raw class masks: polygon fill and the one painting rule for overlaps.

Used by the readers of annotation files (`coco.py`, `labelstudio.py`). Coordinates are pixel
coordinates where pixel `(x, y)` covers `[x, x+1) x [y, y+1)`; a pixel belongs to a polygon when its
centre `(x + 0.5, y + 0.5)` is inside (even-odd rule), so the square `0,0 10,0 10,10 0,10` is 10x10 pixels.

`paint(layers, background)` turns `(bool mask, value)` layers into one raw mask: a pixel takes the
value of the layers covering it when they all agree, and `VOID` (ignored) where layers of different
values overlap: the truth there is ambiguous (torchvision's COCO segmentation reference does the same).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

VOID = 65535  # raw value of ambiguous pixels; annotation readers list it as an ignore value
RAW_DTYPE = np.int32


def polygon_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """`(height, width)` bool: the pixels whose centres lie inside the polygon `points` `(N, 2)` of (x, y)."""
    mask = np.zeros((height, width), bool)
    if len(points) < 3:
        return mask
    x0, y0 = points[:, 0], points[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    first = max(0, int(np.floor(y0.min() - 0.5)))
    last = min(height, int(np.ceil(y0.max())) + 1)
    if first >= last:
        return mask
    rows = np.arange(first, last)
    centre = rows[:, None] + 0.5
    crosses = ((y0 <= centre) & (centre < y1)) | ((y1 <= centre) & (centre < y0))
    with np.errstate(divide="ignore", invalid="ignore"):  # horizontal edges never cross a row centre
        t = (centre - y0) / (y1 - y0)
        xs = np.sort(np.where(crosses, x0 + t * (x1 - x0), np.inf), axis=1)
    edges = np.zeros((len(rows), width + 1), np.int32)
    index = np.arange(len(rows))
    for k in range(0, int(crosses.sum(1).max(initial=0)), 2):  # even-odd: fill between crossings k and k+1
        inside = np.isfinite(xs[:, k + 1]) if k + 1 < xs.shape[1] else np.zeros(len(rows), bool)
        start = np.clip(np.ceil(xs[inside, k] - 0.5), 0, width).astype(np.int64)
        stop = np.clip(np.ceil(xs[inside, k + 1] - 0.5), 0, width).astype(np.int64)
        np.add.at(edges, (index[inside], start), 1)
        np.add.at(edges, (index[inside], stop), -1)
    mask[first:last] = np.cumsum(edges, axis=1)[:, :width] > 0
    return mask


def paint(layers: Iterable[tuple[np.ndarray, int]], background: int, shape: tuple[int, int]) -> np.ndarray:
    """One raw mask from `(bool mask, value)` layers: agreeing layers give their value, disagreeing ones VOID."""
    out = np.full(shape, background, RAW_DTYPE)
    for mask, value in layers:
        current = out[mask]
        out[mask] = np.where((current == background) | (current == value), value, VOID)
    return out


def overlay(top: np.ndarray, under: np.ndarray, background: int) -> np.ndarray:
    """`top` where it is not background, else `under` (instances painted over crowd regions)."""
    return np.where(top != background, top, under)
