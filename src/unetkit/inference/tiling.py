"""Tile positions and blending weights for overlap-tile inference: pure functions, no state.

`tile_starts` places tiles along one axis: the first at 0, the last flush with the end, the ones in
between evenly spread so that neighbours overlap by at least `overlap` of a tile (nnU-Net's rule);
`tiled_pixels_per_pixel` is what that overlap costs.
`gaussian_weights` gives the importance map that down-weights tile borders, where a convolutional
network sees zero padding instead of context; `constant_weights` weighs every pixel the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unetkit.errors import ConfigError


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length `tile` covering `[0, size)`.

    Consecutive tiles overlap by at least `overlap * tile` pixels; the last tile ends exactly at
    `size`. When `size <= tile` there is one tile at 0 (the caller pads the image up to a tile).
    """
    if tile <= 0:
        raise ConfigError(f"tile size {tile}: expected a positive number of pixels")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap {overlap}: expected a fraction in [0, 1)")
    if size <= 0:
        raise ConfigError(f"image size {size}: expected a positive number of pixels")
    if size <= tile:
        return [0]
    max_step = tile_step(tile, overlap)
    steps = math.ceil((size - tile) / max_step - 1e-9)
    spacing = (size - tile) / steps
    return [int(round(i * spacing)) for i in range(steps + 1)]


def tile_step(tile: int, overlap: float) -> int:
    """The largest distance between neighbouring tile starts: an integer, so rounded gaps never exceed it."""
    return max(1, math.floor(tile * (1.0 - overlap) + 1e-9))


def tiled_pixels_per_pixel(tile_shape: Sequence[int], overlap: float) -> float:
    """Pixels a tiled pass processes per image pixel, on an image many tiles large: tiles overlap
    by `overlap`, so each axis is covered `tile / tile_step` times (16/9 ~ 1.78 at 0.25 overlap)."""
    return math.prod(tile / tile_step(tile, overlap) for tile in tile_shape)


def gaussian_weights(tile_shape: Sequence[int], sigma_scale: float = 0.125, min_weight: float = 1e-3) -> np.ndarray:
    """Separable Gaussian importance map of shape `tile_shape`, float32, max 1, min `min_weight`.

    Centred on the tile centre `(n - 1) / 2` so it is symmetric under flips and (for square
    tiles) rotations; sigma is `sigma_scale * n` per axis. The clamp keeps every weight positive,
    so pixels seen only by tile borders still get a well-defined (if less trusted) value; 1e-3 is
    the floor MONAI uses, which makes the two blend identically.
    """
    if sigma_scale <= 0:
        raise ConfigError(f"sigma_scale {sigma_scale}: expected a positive fraction of the tile size")
    if not 0.0 < min_weight <= 1.0:
        raise ConfigError(f"min_weight {min_weight}: expected a value in (0, 1]")
    weights = np.ones((), dtype=np.float64)
    for n in tile_shape:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        sigma = sigma_scale * n
        weights = np.multiply.outer(weights, np.exp(-(x**2) / (2.0 * sigma**2)))
    weights /= weights.max()
    return np.maximum(weights, min_weight).astype(np.float32)


def constant_weights(tile_shape: Sequence[int]) -> np.ndarray:
    """Uniform importance map: every prediction of every tile counts the same."""
    return np.ones(tuple(tile_shape), dtype=np.float32)
