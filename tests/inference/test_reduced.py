"""Row-by-row prediction of a reduced-resolution model: the in-memory path's numbers, band by band."""

import numpy as np
import pytest

from unetkit.config import TileConfig
from unetkit.inference.predict import predict_tiled
from unetkit.inference.reduced import probability_rows


@pytest.mark.parametrize("resolution", [0.5, 0.3, 1.0])
def test_rows_streamed_at_reduced_resolution_equal_the_whole_image_resampled(predictor, rng, resolution):
    image = rng.uniform(0, 255, (2, 97, 83)).astype(np.float32)
    config = TileConfig(tile_size=(16, 16), overlap=0.25, batch_size=3, resolution=resolution)
    expected = predict_tiled(predictor, image, config)
    reads: list[tuple[int, int]] = []

    def read(a: int, b: int) -> np.ndarray:
        reads.append((a, b))
        return image[:, a:b].copy()

    ys, blocks = [], []
    for y, block in probability_rows(predictor, read, image.shape, config, (16, 16)):
        ys.append(y)
        blocks.append(block.copy())
    got = np.concatenate(blocks, axis=1)
    assert ys == sorted(ys) and ys[0] == 0 and got.shape == expected.shape  # each native row once, in order
    np.testing.assert_allclose(got, expected, atol=2e-5)
    if resolution < 1:
        assert len(blocks) > 1  # rows come out as tile rows finish, not at the end
        assert max(b - a for a, b in reads) < 16 / resolution + 8  # no read spans much more than a tile row
