"""Overlap-tile inference over any predictor callable.

A predictor maps a batch `(N, C, h, w)` float32 in raw intensity units to `(N, K, h, w)` float32
logits (or probabilities when `TileConfig.activation == "none"`); see `backends.py`.

The engine walks the image one *row of tiles* at a time (`iter_probability_rows`): it reads the
rows the tile row covers, predicts its tiles in batches, adds `weights * probabilities` into a
row-sized accumulator and hands out the rows that no later tile touches. `predict_tiled` collects
those rows into a `(K, H, W)` array; `streaming.py` writes them to disk. Both paths run this same
code, so their results are identical, and memory is one stripe (tile height x image width), not
the image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from unetkit.config import TileConfig
from unetkit.data.resample import check_resolution, resample_image, resize_scores
from unetkit.errors import ConfigError, InputError
from unetkit.inference.backends import make_predictor
from unetkit.inference.tiling import constant_weights, gaussian_weights, tile_starts

Predictor = Callable[[np.ndarray], np.ndarray]
RowReader = Callable[[int, int], np.ndarray]  # (y0, y1) -> (C, y1 - y0, W) float32

DEFAULT_MAX_PIXELS = 256_000_000  # in-memory limit; larger images go through streaming.py
_NUMPY_PAD = {"reflect": "reflect", "constant": "constant", "replicate": "edge"}


def predict_tiled(
    predictor: Predictor, image: np.ndarray, config: TileConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Class probabilities `(K, H, W)` float32 for `image` `(C, H, W)` in raw units.

    Images smaller than a tile are padded (`config.padding`) and cropped back; an image that fits
    one tile is predicted whole, without blending. At `config.resolution` r < 1 the image is
    resampled to r of its side first and the probabilities resized back (`unetkit.data.resample`).
    With `config.resolutions` (multi-scale inference) it is predicted at each, the probabilities
    averaged and recalibrated (`sharpen`, `config.resolutions_temperature`).
    """
    image = check_image(image, predictor, max_pixels=max_pixels)
    if config.resolutions:
        maps = (predict_tiled(predictor, image, replace(config, resolution=check_resolution(r, "TileConfig.resolutions"),
                                                        resolutions=()), max_pixels=max_pixels)
                for r in config.resolutions)
        return sharpen(mean_of_maps(maps), config.resolutions_temperature, "TileConfig.resolutions_temperature")
    resolution = check_resolution(config.resolution, "TileConfig.resolution")
    if resolution != 1.0:  # a model trained at reduced resolution: predict the resampled image, resize back
        reduced = predict_tiled(predictor, resample_image(image, resolution), replace(config, resolution=1.0),
                                max_pixels=max_pixels)
        return resize_scores(reduced, image.shape[1:])
    tile = resolve_tile_size(config, predictor)
    _, height, width = image.shape
    out: np.ndarray | None = None
    for y0, block in iter_probability_rows(predictor, lambda a, b: image[:, a:b], image.shape, config, tile):
        if out is None:
            out = np.empty((block.shape[0], height, width), dtype=np.float32)
        out[:, y0 : y0 + block.shape[1]] = block
    assert out is not None
    return out


def mean_of_maps(maps: Iterable[np.ndarray]) -> np.ndarray:
    """The mean of probability maps taken one at a time (a generator holds one besides the sum),
    summed into the first, which it overwrites; the order multi-scale inference sums in."""
    total: np.ndarray | None = None
    count = 0
    for p in maps:
        total = p if total is None else np.add(total, p, out=total)
        count += 1
    if total is None:
        raise ValueError("mean_of_maps: no maps")
    return np.divide(total, count, out=total)


def sharpen(probabilities: np.ndarray, temperature: float, field: str = "temperature") -> np.ndarray:
    """softmax(log(p) / T) over the class axis 0, in place (T = 1: `probabilities` as they are): a
    mean of calibrated predictions recalibrated (T < 1 sharpens it). `field` names T in an error."""
    if temperature == 1.0:
        return probabilities
    if not temperature > 0:
        raise ConfigError(f"{field} {temperature}: expected a positive number")
    p = np.log(np.maximum(probabilities, np.float32(1e-12)), out=probabilities)
    p /= np.float32(temperature)
    p -= p.max(axis=0, keepdims=True)
    np.exp(p, out=p)
    p /= p.sum(axis=0, keepdims=True)
    return p


def predict_image(artifact_or_predictor: Any, image: np.ndarray, config: TileConfig | None = None) -> np.ndarray:
    """`predict_tiled` for an artifact (predictor chosen by `make_predictor`; without `config`, at the
    resolution it was trained at, TTA off) or a predictor. (Not `files.tile_config_for`: files imports
    this module.)"""
    predictor = artifact_or_predictor
    if hasattr(artifact_or_predictor, "pipeline_module"):
        predictor = make_predictor(artifact_or_predictor)
        if config is None:
            config = TileConfig(resolution=float(getattr(artifact_or_predictor.meta, "resolution", 1.0)))
    return predict_tiled(predictor, image, config or TileConfig())


def check_image(image: Any, predictor: Any = None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The image as float32 `(C, H, W)`, or an `InputError` saying what is wrong with it."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image: expected a numpy array (C, H, W), got {type(image).__name__}")
    if image.ndim != 3:
        raise InputError(f"image has shape {image.shape}: expected 3 dimensions (C, H, W); add a channel axis for gray images")
    if image.size == 0:
        raise InputError(f"image has shape {image.shape}: it is empty (zero-size)")
    check_channels(image.shape[0], predictor)
    if image.shape[1] * image.shape[2] > max_pixels:
        raise InputError(
            f"image of {image.shape[1]}x{image.shape[2]} pixels exceeds the limit of {max_pixels} pixels; "
            "use unetkit.inference.streaming.predict_stream for large images or raise max_pixels"
        )
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise InputError(f"image contains {int(np.size(image) - np.isfinite(image).sum())} NaN/inf values; expected finite intensities")
    elif image.dtype.kind not in "biu":
        raise InputError(f"image has dtype {image.dtype}: expected a numeric (integer or float) array")
    return np.ascontiguousarray(image, dtype=np.float32)


def check_channels(channels: int, predictor: Any) -> None:
    expected = getattr(predictor, "in_channels", None)
    if expected is not None and channels != expected:
        raise InputError(f"image has {channels} channel(s) but the model takes {expected}; expected (C={expected}, H, W)")


def resolve_tile_size(config: TileConfig, predictor: Any = None) -> tuple[int, int]:
    """`config.tile_size`, else the predictor's `tile_size` (the artifact's patch size)."""
    size = tuple(config.tile_size) or tuple(getattr(predictor, "tile_size", None) or ())
    if not size:
        raise ConfigError("TileConfig.tile_size is empty and the predictor has no tile_size; set tile_size=(h, w)")
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"TileConfig.tile_size {size}: expected two positive sizes (h, w)")
    if config.batch_size <= 0:
        raise ConfigError(f"TileConfig.batch_size {config.batch_size}: expected a positive number of tiles")
    return int(size[0]), int(size[1])


def require_native(config: TileConfig) -> None:
    """Tile rows (this module's `iter_probability_rows`, distributed stripes) run at the native
    resolution only; `reduced.probability_rows` wraps them for a reduced-resolution model. Multi-scale
    inference (`resolutions`) needs the whole image: `predict_tiled` only."""
    if config.resolutions:
        raise ConfigError(f"multi-scale inference (resolutions {', '.join(f'{r:g}' for r in config.resolutions)}) "
                          "needs the whole image in memory (predict_tiled); tile rows, streamed and distributed "
                          "stripes predict at one resolution")
    if config.resolution != 1.0:
        raise ConfigError(f"the model was trained at resolution {config.resolution} of the native side: prediction in "
                          "distributed stripes runs at the native resolution only; predict such a model's images in "
                          "memory (predict_tiled, max_pixels) or streamed on one machine (predict_stream)")


def row_blocks(height: int, config: TileConfig, tile: tuple[int, int]) -> list[int]:
    """Where the blocks of finished rows that `iter_probability_rows` yields begin, and the height
    at the end: block i is rows `[b[i], b[i + 1])`, finished by tile row i."""
    return [*tile_starts(max(height, tile[0]), tile[0], config.overlap), height]


def iter_probability_rows(
    predictor: Predictor, read_rows: RowReader, shape: tuple[int, ...], config: TileConfig, tile: tuple[int, int],
    rows: tuple[int, int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(y0, probabilities (K, rows, W))` for consecutive finished rows of the image.

    `read_rows(y0, y1)` returns image rows `[y0, y1)` as `(C, y1 - y0, W)` float32; `shape` is
    the image's `(C, H, W)`. Rows come out top to bottom, each exactly once. Each block is a view
    of one buffer that the next block overwrites (copy it to keep it): per-row buffers of a wide
    image are larger than malloc recycles (32 MiB), so fresh ones would cost page faults each row.

    `rows` `(r0, r1)`, two of `row_blocks`' boundaries, yields only the rows of that stripe: the
    tile rows that reach into it from above are predicted too (their sums start from zero there as
    in the whole run), so a stripe's numbers are bit for bit the whole run's (distributed stripes).

    With `config.tta` each block is the views' mean recalibrated (`sharpen`, `config.tta_temperature`).
    """
    require_native(config)
    if config.tta and not config.tta_temperature > 0:  # refused before a tile is predicted or a row written
        raise ConfigError(f"TileConfig.tta_temperature {config.tta_temperature}: expected a positive number")
    channels, height, width = shape
    th, tw = tile
    padded_w = max(width, tw)
    ys = tile_starts(max(height, th), th, config.overlap)
    xs = tile_starts(padded_w, tw, config.overlap)
    first, stop = 0, len(ys)
    if rows is not None:
        bounds = row_blocks(height, config, tile)
        if rows[0] not in bounds[:-1] or rows[1] not in bounds or rows[1] <= rows[0]:
            raise ConfigError(f"rows {rows}: expected two boundaries of the image's row blocks {bounds}")
        stop = bounds.index(rows[1])
        first = next(j for j, y in enumerate(ys) if y + th > rows[0])  # the first tile row reaching the stripe
    if config.blend == "gaussian":
        weights = gaussian_weights((th, tw), config.sigma_scale)
    else:
        weights = constant_weights((th, tw))
    batch = np.empty((min(config.batch_size, len(xs)), channels, th, tw), dtype=np.float32)
    acc: np.ndarray | None = None
    wsum = np.zeros((th, padded_w), dtype=np.float32)
    finished: np.ndarray | None = None
    for i in range(first, stop):
        y = ys[i]
        stripe = _read_stripe(read_rows, y, tile, height, width, config.padding)
        for b0 in range(0, len(xs), len(batch)):
            starts = xs[b0 : b0 + len(batch)]
            for j, x in enumerate(starts):
                batch[j] = stripe[:, :, x : x + tw]
            probs = tile_probabilities(predictor, batch[: len(starts)], config)
            if acc is None:
                acc = np.zeros((probs.shape[1], th, padded_w), dtype=np.float32)
            for j, x in enumerate(starts):
                p = np.multiply(probs[j], weights, out=probs[j])
                acc[:, :, x : x + tw] += p
                wsum[:, x : x + tw] += weights
        assert acc is not None
        done = ys[i + 1] - y if i + 1 < len(ys) else th
        n = min(done, height - y)
        if finished is None:
            finished = np.empty((len(acc), min(th, height), width), dtype=np.float32)
        if rows is None or y >= rows[0]:
            block = np.divide(acc[:, :n, :width], wsum[:n, :width], out=finished[:, :n])
            yield y, sharpen(block, config.tta_temperature, "TileConfig.tta_temperature") if config.tta else block
        for a in (*acc, wsum):
            _shift_rows_up(a, done)


def _shift_rows_up(a: np.ndarray, n: int) -> None:
    """Move rows `n:` of the 2D array `a` to the top and zero the rest, in place, in pieces of at
    most `n` rows so that no piece overlaps its source (numpy would copy through a temporary)."""
    h = a.shape[0]
    for top in range(0, h - n, n):
        bottom = min(top + n, h - n)
        a[top:bottom] = a[top + n : bottom + n]
    a[max(0, h - n) :] = 0.0


def _read_stripe(read_rows: RowReader, y: int, tile: tuple[int, int], height: int, width: int, padding: str) -> np.ndarray:
    th, tw = tile
    stripe = np.asarray(read_rows(y, min(y + th, height)), dtype=np.float32)
    pad_h, pad_w = th - stripe.shape[1], max(0, tw - width)
    if pad_h or pad_w:
        mode = _NUMPY_PAD[padding]
        stripe = np.pad(stripe, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)  # type: ignore[call-overload]
    return stripe


# ---------------------------------------------------------------- one batch of tiles


def tile_probabilities(predictor: Predictor, batch: np.ndarray, config: TileConfig) -> np.ndarray:
    """Probabilities `(N, K, h, w)` for a batch of tiles; with `config.tta` the mean over the views
    (`tta_views`: the 8 flips/rotations of the square, or as-is + mirrored for upright models), each
    prediction mapped back before averaging."""
    if not config.tta:
        return _activated(predictor, batch, config)
    total: np.ndarray | None = None
    views = tta_views(config)
    for k, flip in views:
        probs = _activated(predictor, dihedral(batch, k, flip), config)
        probs = dihedral_inverse(probs, k, flip)
        total = probs.copy() if total is None else np.add(total, probs, out=total)
    assert total is not None
    return np.multiply(total, 1.0 / len(views), out=total)


DIHEDRAL_VIEWS = tuple((k, flip) for k in range(4) for flip in (False, True))  # (quarter turns, mirror)
MIRROR_VIEWS = ((0, False), (0, True))  # as is, left-right mirrored: what an upright model was trained on
FLIP_VIEWS = (*MIRROR_VIEWS, (2, False), (2, True))  # + upside-down mirrored (a half turn), upside-down
# `TileConfig.tta_views` -> its views; each set holds the one before (a model trained on a set runs its subsets)
VIEW_SETS: dict[str, tuple[tuple[int, bool], ...]] = {"mirror": MIRROR_VIEWS, "flips": FLIP_VIEWS,
                                                      "dihedral": DIHEDRAL_VIEWS}


def tta_views(config: TileConfig) -> tuple[tuple[int, bool], ...]:
    """The (quarter turns, mirror) views TTA averages for `config.tta_views`."""
    return VIEW_SETS[config.tta_views]


class DihedralView:
    """A predictor that sees its tiles rotated by `k` quarter turns (then mirrored if `flip`) and
    maps its output back: one TTA view as a predictor of its own. Passes `in_channels` and
    `tile_size` through."""

    def __init__(self, predictor: Predictor, k: int, flip: bool) -> None:
        self.predictor, self.k, self.flip = predictor, k, flip
        self.in_channels = getattr(predictor, "in_channels", None)
        self.tile_size = getattr(predictor, "tile_size", None)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        out = self.predictor(dihedral(batch, self.k, self.flip))
        return dihedral_inverse(np.asarray(out), self.k, self.flip)


def iter_view_probabilities(
    predictor: Predictor, image: np.ndarray, config: TileConfig, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[np.ndarray]:
    """The probabilities `(K, H, W)` of each TTA view in turn (`tta_views(config)` order),
    each mapped back to the image's orientation. Their mean is `predict_tiled` with `tta=True`
    (blending is linear), but the spread between them is what measures TTA disagreement."""
    plain = replace(config, tta=False)
    for k, flip in tta_views(config):
        yield predict_tiled(DihedralView(predictor, k, flip), image, plain, max_pixels=max_pixels)


def dihedral(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate the last two axes by k quarter turns, then mirror the last axis if `flip`."""
    y = np.rot90(x, k, axes=(-2, -1))
    return np.ascontiguousarray(y[..., ::-1] if flip else y)


def dihedral_inverse(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    y = x[..., ::-1] if flip else x
    return np.ascontiguousarray(np.rot90(y, -k, axes=(-2, -1)))


def _activated(predictor: Predictor, batch: np.ndarray, config: TileConfig) -> np.ndarray:
    out = predictor(batch)
    if not isinstance(out, np.ndarray) or out.ndim != 4 or out.shape[0] != batch.shape[0] or out.shape[2:] != batch.shape[2:]:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"predictor returned {got} for a batch {batch.shape}: expected (N, K, {batch.shape[2]}, {batch.shape[3]})")
    out = np.asarray(out, dtype=np.float32)
    if not out.flags.writeable or not out.flags.c_contiguous:
        out = np.array(out, dtype=np.float32)
    return softmax_(out) if config.activation == "softmax" else out


def softmax_(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1, in place."""
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits
