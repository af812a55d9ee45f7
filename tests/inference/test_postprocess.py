"""Postprocessing ops on hand-made masks, and the watershed split on cells and membranes."""

import numpy as np
import pytest
from scipy import ndimage
from tests.postprocess_fixtures import cells_and_membranes, probs_from_labels

from unetkit.errors import ConfigError
from unetkit.inference.postprocess import (
    apply_postprocess,
    closing_mask,
    keep_largest,
    opening_mask,
    remove_small,
)


def test_empty_params_is_argmax(rng):
    p = rng.random((3, 8, 9)).astype(np.float32)
    np.testing.assert_array_equal(apply_postprocess(p, {}), p.argmax(0))
    assert apply_postprocess(p, {}).dtype == np.uint8


def test_threshold_binary_only():
    p = np.zeros((2, 1, 3), np.float32)
    p[1] = [[0.2, 0.35, 0.6]]
    p[0] = 1 - p[1]
    assert apply_postprocess(p, {"threshold": 0.3}).tolist() == [[0, 1, 1]]
    assert apply_postprocess(p, {}).tolist() == [[0, 0, 1]]
    with pytest.raises(ConfigError, match="only for binary"):
        apply_postprocess(np.ones((3, 2, 2)), {"threshold": 0.5})
    with pytest.raises(ConfigError, match="threshold"):
        apply_postprocess(p, {"threshold": 1.5})
    with pytest.raises(ConfigError, match="unknown key 'radius'"):
        apply_postprocess(p, {"radius": 2})


def test_remove_small_components_per_class():
    labels = np.zeros((10, 10), np.uint8)
    labels[0:3, 0:3] = 1  # 9 px
    labels[8, 8] = 1  # 1 px
    labels[5:7, 0:2] = 2  # 4 px
    labels[9, 0] = 2  # 1 px, class 2
    out = apply_postprocess(probs_from_labels(labels, 3), {"min_size": [0, 5, 0]})
    expected = labels.copy()
    expected[8, 8] = 0
    np.testing.assert_array_equal(out, expected)  # class 2's single pixel is left alone
    diag = np.eye(4, dtype=bool)  # 8-connected: one component of 4
    assert remove_small(diag, 4).sum() == 4 and remove_small(diag, 5).sum() == 0


def test_removed_pixels_go_to_next_best_class():
    labels = np.zeros((5, 5), np.uint8)
    labels[2, 2] = 1
    p = probs_from_labels(labels, 3)
    p[:, 2, 2] = [0.1, 0.6, 0.3]  # second best is class 2, not background
    out = apply_postprocess(p, {"min_size": [0, 2, 0]})
    assert out[2, 2] == 2


def test_fill_holes_takes_background_only():
    labels = np.zeros((7, 7), np.uint8)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # background hole: filled
    labels[2, 2] = 2  # another class inside: kept
    out = apply_postprocess(probs_from_labels(labels, 3), {"fill_holes": [False, True, False]})
    assert out[3, 3] == 1 and out[2, 2] == 2
    assert (out[0] == 0).all()


def test_opening_removes_thin_spur_and_keeps_border_objects():
    mask = np.zeros((9, 12), bool)
    mask[2:7, 2:7] = True
    mask[4, 7:11] = True  # 1-pixel-wide spur
    mask[0:3, 10:12] = False
    mask[6:9, 9:12] = True  # touches the image border
    opened = opening_mask(mask, 1)
    assert not opened[4, 8:11].any()
    assert opened[3:6, 3:6].all()
    assert opened[7:9, 10:12].all()  # the border does not erode it
    assert not (opened & ~mask).any()


def test_closing_bridges_gap_and_respects_border():
    mask = np.zeros((7, 9), bool)
    mask[1:6, 0:4] = True
    mask[1:6, 5:9] = True  # one-pixel gap at column 4
    closed = closing_mask(mask, 1)
    assert closed[2:5, 4].all()  # bridged (the cross-shaped disk(1) leaves the outer corners)
    assert not closed[1, 4] and not closed[5, 4]
    assert closed[1:6, 0].all() and closed[1:6, 8].all()  # border columns stay
    assert not closed[0].any() and not closed[6].any()


def test_keep_largest():
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True
    mask[3:6, 3:6] = True
    out = keep_largest(mask)
    assert out.sum() == 9 and out[4, 4] and not out[0, 0]
    labels = mask.astype(np.uint8)
    assert apply_postprocess(probs_from_labels(labels, 2), {"keep_largest": [False, True]}).sum() == 9


# ---------------------------------------------------------------- watershed split (cells and membranes)


def test_watershed_split_thins_boundaries_to_lines_and_drops_inner_fragments(rng):
    from unetkit.metrics.topology import adapted_rand_error, label_components

    probs, truth = cells_and_membranes(rng)
    plain = apply_postprocess(probs, {})
    split = apply_postprocess(probs, {"watershed": [0, 0.95], "watershed_band": [0, 1]})
    n_true = label_components(truth == 1)[1]
    assert abs(label_components(split == 1)[1] - n_true) <= 2  # one region per cell
    e_plain, _, rec_plain = adapted_rand_error(plain == 1, truth == 1)
    e_split, _, rec_split = adapted_rand_error(split == 1, truth == 1)
    assert rec_split > rec_plain + 0.1 and e_split < 0.6 * e_plain
    # the dividing lines follow the real membranes: 99 % of line pixels are within 3 px of one...
    lines = split == 0
    assert lines.any() and np.mean(ndimage.distance_transform_edt(truth == 1)[lines] <= 3) > 0.99
    # ...and are thinner than the predicted membranes, which a wider band keeps
    assert lines.sum() < 0.8 * (plain == 0).sum()
    wide = apply_postprocess(probs, {"watershed": [0, 0.95], "watershed_band": [0, 8]})
    assert (wide == 0).sum() > lines.sum()
    # no seed anywhere: unchanged
    np.testing.assert_array_equal(apply_postprocess(probs, {"watershed": [0, 0.9999999]}), plain)


def test_watershed_drops_seeds_smaller_than_min_seed_so_a_speck_does_not_split_its_cell():
    from unetkit.metrics.topology import adapted_rand_error, label_components

    yy, xx = np.mgrid[:60, :60]
    truth = np.ones((60, 60), np.uint8)
    truth[:, 30] = 0  # two cells, one membrane between them
    p = np.where(truth == 1, 0.95, 0.05)
    r = np.hypot(yy - 30, xx - 14)
    p[(r >= 5) & (r < 6)] = 0.6  # an organelle's closed outline inside the left cell: a seed of its own
    probs = np.stack([1 - p, p]).astype(np.float32)
    speck = int((r < 5).sum())
    assert 50 < speck < 100
    split = apply_postprocess(probs, {"watershed": [0, 0.9], "watershed_band": [0, 1]})
    assert label_components(split == 1)[1] == 3  # the speck's basin cut out of its cell
    kept = apply_postprocess(probs, {"watershed": [0, 0.9], "watershed_band": [0, 1], "watershed_min_seed": [0, 100]})
    assert label_components(kept == 1)[1] == 2
    assert adapted_rand_error(kept == 1, truth == 1)[0] < adapted_rand_error(split == 1, truth == 1)[0]
    # a floor under the speck's size changes nothing; a floor over every seed leaves the labels as predicted
    np.testing.assert_array_equal(
        apply_postprocess(probs, {"watershed": [0, 0.9], "watershed_band": [0, 1], "watershed_min_seed": [0, speck]}),
        split)
    np.testing.assert_array_equal(
        apply_postprocess(probs, {"watershed": [0, 0.9], "watershed_min_seed": [0, 10_000]}), apply_postprocess(probs, {}))
    with pytest.raises(ConfigError, match="watershed_min_seed"):
        apply_postprocess(probs, {"watershed": [0, 0.9], "watershed_min_seed": [0, -1]})
