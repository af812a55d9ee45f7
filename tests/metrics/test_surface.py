"""Normalized surface Dice: hand-computed cases, the empty-mask policy, and MONAI's
`compute_surface_dice` on random masks (when MONAI is installed)."""

import math

import numpy as np
import pytest

from unetkit.metrics.surface import normalized_surface_dice, nsd_from_distances


def square(top: int, left: int, size: int = 4, shape: tuple[int, int] = (10, 10)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_identical_masks_score_one_at_any_tolerance():
    assert normalized_surface_dice(square(2, 2), square(2, 2), 0) == 1.0


def test_a_square_one_pixel_off_scores_by_hand():
    # 4x4 squares, the truth one column to the right. Each edge has 12 pixels; on the prediction's
    # edge the 6 pixels of rows 2 and 5 in columns 3..5 lie on the truth's edge (distance 0), the
    # other 6 (column 2, and column 5 rows 3-4) are 1 pixel from it; the truth's edge mirrors that.
    pred, true = square(2, 2), square(2, 3)
    assert normalized_surface_dice(pred, true, 0) == pytest.approx(12 / 24)
    assert normalized_surface_dice(pred, true, 0.99) == pytest.approx(0.5)
    assert normalized_surface_dice(pred, true, 1) == 1.0


def test_tolerance_is_in_spacing_units():
    # one column apart, columns 2 units wide: the 4 edge pixels per square that were 1 column from the
    # other edge are now 2 away (column 2 / column 6), but the 2 in column 5 (rows 3-4) of the
    # prediction (and column 3 of the truth) are 1 row (1 unit) from the other's top/bottom edge.
    pred, true = square(2, 2), square(2, 3)
    assert normalized_surface_dice(pred, true, 1, spacing=(1, 2)) == pytest.approx(16 / 24)
    assert normalized_surface_dice(pred, true, 2, spacing=(1, 2)) == 1.0


def test_two_single_pixels_three_apart():
    pred, true = np.zeros((5, 9), bool), np.zeros((5, 9), bool)
    pred[2, 2], true[2, 5] = True, True  # each surface is one pixel, 3 from the other
    assert normalized_surface_dice(pred, true, 2.9) == 0.0
    assert normalized_surface_dice(pred, true, 3) == 1.0


def test_empty_masks_nan_when_both_zero_when_one():
    empty = np.zeros((6, 6), bool)
    assert math.isnan(normalized_surface_dice(empty, empty, 1))
    assert normalized_surface_dice(square(1, 1, 3, (6, 6)), empty, 1) == 0.0
    assert normalized_surface_dice(empty, square(1, 1, 3, (6, 6)), 100) == 0.0


def test_valid_restricts_both_masks():
    pred, true = square(2, 2), square(2, 3)
    valid = np.zeros((10, 10), bool)
    valid[:, :3] = True  # columns 0..2: the prediction keeps a 4x1 strip, the truth (columns 3..6) nothing
    assert normalized_surface_dice(pred, true, 5, valid=valid) == 0.0
    valid[:, :4] = True  # columns 0..3: a 4x2 strip against a 4x1 strip, its right column on the truth
    assert normalized_surface_dice(pred, true, 0, valid=valid) == pytest.approx((4 + 4) / (8 + 4))


def test_negative_or_infinite_tolerance_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        nsd_from_distances(np.zeros(1), np.zeros(1), -1)
    with pytest.raises(ValueError, match="tolerance"):
        nsd_from_distances(np.zeros(1), np.zeros(1), math.inf)


def test_matches_monai_compute_surface_dice_on_random_masks():
    monai_metrics = pytest.importorskip("monai.metrics")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for trial in range(12):
        shape = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
        blobs = [rng.random(shape) < 0.3 for _ in range(2)]
        from scipy import ndimage

        pred, true = (ndimage.binary_opening(b, iterations=1) for b in blobs)
        if trial == 0:
            pred = np.zeros(shape, bool)  # one empty
        tolerance = float(rng.choice([0.0, 1.0, 1.5, 2.0, 3.0]))
        spacing = (1.0, float(rng.choice([1.0, 0.5, 2.0])))
        ours = normalized_surface_dice(pred, true, tolerance, spacing=spacing)
        one_hot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))  # noqa: E731
        theirs = monai_metrics.compute_surface_dice(one_hot(pred), one_hot(true), [tolerance], spacing=spacing)[0, 0]
        if math.isnan(ours):
            assert torch.isnan(theirs)
        else:
            assert ours == pytest.approx(float(theirs), abs=1e-6), (trial, tolerance, spacing)
