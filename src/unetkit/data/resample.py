"""A model trained at reduced resolution (`DataConfig.resolution`, `TileConfig.resolution`): images
resampled to a fraction of their native side, labels alike, and probabilities back to the native grid.

Images shrink with antialiased bilinear interpolation (each output pixel averages the input pixels
it covers, as an optical zoom-out would), labels by nearest neighbour (class indices and the ignore
index stay what they are), probabilities and logits grow back bilinearly (a convex mix of
probabilities is a probability). Pure functions on numpy arrays, through torch's `interpolate`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from unetkit.errors import ConfigError


def check_resolution(value: float, where: str) -> float:
    """`value` as a float in (0, 1], or a `ConfigError` naming `where`."""
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a fraction of the native resolution in (0, 1], got {value!r}") from None
    if not 0.0 < r <= 1.0:
        raise ConfigError(f"{where}: expected a fraction of the native resolution in (0, 1] (0.5: half the side), got {r}")
    return r


def reduced_shape(shape: tuple[int, int], resolution: float) -> tuple[int, int]:
    """The (h, w) an (H, W) image has at `resolution`: rounded, at least 1 pixel."""
    return tuple(max(1, round(s * resolution)) for s in shape)  # type: ignore[return-value]


def resample_image(image: np.ndarray, resolution: float) -> np.ndarray:
    """(C, H, W) -> (C, h, w) float32 at `resolution` (antialiased bilinear); as is at 1."""
    if resolution == 1.0:
        return image
    size = reduced_shape(image.shape[-2:], resolution)
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0].numpy()


def resample_labels(labels: np.ndarray, resolution: float) -> np.ndarray:
    """(H, W) class indices -> (h, w) at `resolution` (nearest neighbour, dtype kept); as is at 1."""
    if resolution == 1.0:
        return labels
    size = reduced_shape(labels.shape[-2:], resolution)
    x = torch.from_numpy(labels.astype(np.float32))[None, None]  # class indices (< 2**16) are exact in float32
    return F.interpolate(x, size=size, mode="nearest-exact")[0, 0].numpy().astype(labels.dtype)


def resize_scores(scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(K, h, w) probabilities or logits -> (K, H, W) float32, bilinear (as is when the shape matches)."""
    if tuple(scores.shape[-2:]) == tuple(shape):
        return scores
    x = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))[None]
    return F.interpolate(x, size=tuple(shape), mode="bilinear", align_corners=False)[0].numpy()
