import numpy as np
import pytest

from unetkit.errors import ConfigError
from unetkit.inference.tiling import constant_weights, gaussian_weights, tile_starts, tiled_pixels_per_pixel


@pytest.mark.parametrize("size,tile,overlap", [(100, 32, 0.25), (2048, 256, 0.25), (257, 256, 0.5), (33, 32, 0.0),
                                               (1000, 17, 0.9), (64, 32, 0.5), (96, 32, 0.0), (7, 3, 0.34)])
def test_tile_starts_cover_with_overlap_and_even_spacing(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] == size - tile
    assert starts == sorted(set(starts))
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    gaps = np.diff(starts)
    assert gaps.max() <= tile * (1 - overlap) + 1e-9 or gaps.max() == 1  # at least the requested overlap
    assert gaps.max() - gaps.min() <= 1  # evenly spread
    if len(starts) > 2:  # no redundant tile: one fewer could not keep the overlap
        assert (size - tile) / (len(starts) - 2) > max(1, int(tile * (1 - overlap) + 1e-9))


def test_tile_starts_exact_fit_and_small_images():
    assert tile_starts(32, 32, 0.25) == [0]
    assert tile_starts(5, 32, 0.25) == [0]  # caller pads
    assert tile_starts(1984, 256, 0.25) == list(range(0, 1729, 192))  # grid falls on the step exactly
    assert tile_starts(96, 32, 0.0) == [0, 32, 64]


@pytest.mark.parametrize("args,match", [((10, 0, 0.1), "tile size"), ((10, 4, 1.0), "overlap"),
                                        ((10, 4, -0.1), "overlap"), ((0, 4, 0.1), "image size")])
def test_tile_starts_refuses_bad_arguments(args, match):
    with pytest.raises(ConfigError, match=match):
        tile_starts(*args)


@pytest.mark.parametrize("shape", [(32, 32), (31, 31), (16, 24)])
def test_gaussian_weights_symmetric_positive_peak_at_centre(shape):
    w = gaussian_weights(shape, 0.125)
    assert w.shape == shape and w.dtype == np.float32
    np.testing.assert_array_equal(w, w[::-1, :])
    np.testing.assert_array_equal(w, w[:, ::-1])
    if shape[0] == shape[1]:
        np.testing.assert_array_equal(w, w.T)
    assert w.max() == pytest.approx(1.0) and w.min() >= 1e-3 > 0
    assert w[shape[0] // 2, shape[1] // 2] >= w[0, shape[1] // 2] > 0
    assert np.all(np.diff(w[shape[0] // 2, : shape[1] // 2]) >= 0)  # rises towards the centre


def test_gaussian_matches_monai_formula_and_constant_weights():
    n, s = 64, 0.125
    x = np.arange(n) - (n - 1) / 2
    g = np.exp(-(x**2) / (2 * (s * n) ** 2))
    expected = np.maximum(np.outer(g, g) / np.outer(g, g).max(), 1e-3)
    np.testing.assert_allclose(gaussian_weights((n, n), s), expected, rtol=1e-6)
    assert (constant_weights((3, 5)) == 1).all() and constant_weights((3, 5)).shape == (3, 5)
    with pytest.raises(ConfigError, match="sigma_scale"):
        gaussian_weights((8, 8), 0.0)


def test_tiled_pixels_per_pixel_is_the_overlap_cost_of_tile_starts() -> None:
    assert tiled_pixels_per_pixel((128, 128), 0.25) == pytest.approx(16 / 9)
    assert tiled_pixels_per_pixel((128, 96), 0.0) == 1.0
    assert tiled_pixels_per_pixel((30,), 0.25) == pytest.approx(30 / 22)  # whole-pixel steps, as tile_starts
    starts = tile_starts(30 * 22 * 10 + 30, 30, 0.25)  # a long axis: tiles x tile / size -> the same factor
    assert len(starts) * 30 / (30 * 22 * 10 + 30) == pytest.approx(30 / 22, rel=0.01)
