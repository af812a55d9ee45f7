"""A model trained at reduced resolution (`DataConfig.resolution`, `TileConfig.resolution`): images
resampled to a fraction of their native side, labels alike, and probabilities back to the native grid.

Images shrink with antialiased bilinear interpolation (each output pixel averages the input pixels
it covers, as an optical zoom-out would), labels by nearest neighbour (class indices and the ignore
index stay what they are), probabilities and logits grow back bilinearly (a convex mix of
probabilities is a probability). Pure functions on numpy arrays, through torch's `interpolate`;
`axis_weights` spells out the weights `interpolate` uses along one axis, for resampling a band of
rows at a time (`resample_axis0`), as row-by-row prediction of a large image does.
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
    return bilinear(image, reduced_shape(image.shape[-2:], resolution), antialias=True)


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
    return bilinear(scores, shape, antialias=False)


def bilinear(array: np.ndarray, size: tuple[int, int], *, antialias: bool) -> np.ndarray:
    """(C, H, W) -> (C, *size) float32 by torch's bilinear `interpolate` (align_corners False). A
    side that keeps its length is copied as is (weight 1 on itself), so a band of rows can be
    resampled across its width alone (`inference.reduced`)."""
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)[0].numpy()


def axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D bilinear resampling of one axis as torch's `interpolate` computes it (align_corners
    False; antialiased when it shrinks, as `resample_image`; plain when it grows, as `resize_scores`):
    for output index i, `first[i]` and `weights[i]` (zero-padded taps) such that
    out[i] = sum_t weights[i, t] * in[first[i] + t]. What lets row-by-row prediction resample a band
    of rows exactly as the whole image would be (`inference.reduced`)."""
    scale = in_size / out_size
    support, inverse = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    center = scale * (np.arange(out_size) + 0.5)
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's truncation, as torch's kernel
    stop = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    taps = np.arange(int((stop - first).max()))
    index = first[:, None] + taps[None, :]
    weights = np.clip(1.0 - np.abs((index - center[:, None] + 0.5) * inverse), 0.0, None)
    weights[index >= stop[:, None]] = 0.0
    return first, weights / weights.sum(1, keepdims=True)


def last_input(first: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The last input index each output of `axis_weights` reads with a non-zero weight."""
    taps = weights.shape[1] - np.argmax((weights != 0)[:, ::-1], axis=1) - 1
    return first + taps


def resample_axis0(rows: np.ndarray, offset: int, first: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Outputs of `axis_weights` (`first`, `weights`: a run of output indices) along axis 1 of
    `rows` (C, n, W), whose row 0 is input index `offset`: (C, len(first), W) float32."""
    out = np.zeros((rows.shape[0], len(first), rows.shape[2]), np.float32)
    last = rows.shape[1] - 1
    for t in range(weights.shape[1]):
        w = weights[:, t].astype(np.float32)
        if not w.any():
            continue
        out += rows[:, np.clip(first + t - offset, 0, last)] * w[None, :, None]
    return out
