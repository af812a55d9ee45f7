"""Row-by-row prediction of a model trained at reduced resolution (`TileConfig.resolution` < 1).

`predict_tiled` resamples a whole image, predicts it and resizes the probabilities back; a streamed
(gigapixel) image is never whole in memory, so `probability_rows` does the same band by band:

native rows -> the reduced rows they make (`data.resample.axis_weights` down the rows, torch's
`interpolate` across the full width: together what `resample_image` computes for the whole image)
-> `iter_probability_rows` at the reduced size -> the native rows those probabilities make
(bilinear, as `resize_scores`), each emitted once the reduced rows it reads are finished.

The numbers are the in-memory path's up to float rounding (the same weights, summed in another
order), and memory grows with the width and the tile, not with the height, as at native resolution.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from unetkit.config import TileConfig
from unetkit.data.resample import (
    axis_weights,
    bilinear,
    check_resolution,
    last_input,
    reduced_shape,
    resample_axis0,
)
from unetkit.inference.predict import Predictor, RowReader, iter_probability_rows


def probability_rows(
    predictor: Predictor, read_rows: RowReader, shape: tuple[int, ...], config: TileConfig, tile: tuple[int, int],
) -> Iterator[tuple[int, np.ndarray]]:
    """`iter_probability_rows` for any `config.resolution`: `(y0, probabilities (K, rows, W))` for
    consecutive finished native rows of the `(C, H, W)` image that `read_rows` reads (native rows);
    `tile` is in the reduced pixels the model sees. As with `iter_probability_rows`, a block may be a
    view the next one overwrites: use or copy it before asking for the next."""
    resolution = check_resolution(config.resolution, "TileConfig.resolution")
    if resolution == 1.0:
        yield from iter_probability_rows(predictor, read_rows, shape, config, tile)
        return
    channels, height, width = shape
    h, w = reduced_shape((height, width), resolution)
    down, down_weights = axis_weights(height, h)
    down_last = last_input(down, down_weights)

    def read_reduced(a: int, b: int) -> np.ndarray:
        top = int(down[a])
        band = resample_axis0(read_rows(top, int(down_last[a:b].max()) + 1), top, down[a:b], down_weights[a:b])
        return bilinear(band, (b - a, w), antialias=True)  # across the width only

    blocks = iter_probability_rows(predictor, read_reduced, (channels, h, w), replace(config, resolution=1.0), tile)
    up, up_weights = axis_weights(h, height)
    up_last = last_input(up, up_weights)
    held: np.ndarray | None = None  # reduced probability rows [start, start + held rows), widened to W
    start = y = 0
    for y0, block in blocks:
        wide = bilinear(block, (block.shape[1], width), antialias=False)  # a copy: the block's buffer is reused
        held = wide if held is None else np.concatenate([held, wide], axis=1)
        stop = int(np.searchsorted(up_last, y0 + block.shape[1], side="left"))  # rows whose inputs are done
        if stop > y:
            yield y, resample_axis0(held, start, up[y:stop], up_weights[y:stop])
            y = stop
        if y < height:
            held, start = held[:, int(up[y]) - start :], int(up[y])
    assert y == height, (y, height)

