import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label
from skimage.metrics import adapted_rand_error as sk_are
from skimage.morphology import skeletonize

from unetkit.metrics import topology as T


def hline(row, c0, c1, shape=(12, 14)):
    m = np.zeros(shape, bool)
    m[row, c0:c1] = True
    return m


def test_cldice_hand_computed_on_one_pixel_lines():
    truth = hline(5, 2, 12)  # 10 pixels
    pred = hline(5, 2, 7) | hline(8, 2, 7)  # half of the vessel + a parallel false one, 5 + 5 pixels
    # one-pixel straight lines are their own skeletons
    assert np.array_equal(skeletonize(truth), truth) and np.array_equal(skeletonize(pred), pred)
    # Tprec = |S(P) & G| / |S(P)| = 5/10, Tsens = |S(G) & P| / |S(G)| = 5/10 -> clDice = 0.5
    assert T.cldice(pred, truth) == pytest.approx(0.5)
    # thickening the prediction around the true line does not hurt clDice (Dice would drop)
    thick = ndimage.binary_dilation(truth)
    assert T.cldice(thick, truth) == pytest.approx(1.0)


def test_cldice_policy_and_valid():
    empty = np.zeros((12, 14), bool)
    line = hline(5, 2, 12)
    assert math.isnan(T.cldice(empty, empty))
    assert T.cldice(line, empty) == 0.0 and T.cldice(empty, line) == 0.0
    # ignoring the part of the truth the prediction misses gives a perfect score
    valid = np.ones((12, 14), bool)
    valid[:, 7:] = False
    assert T.cldice(hline(5, 2, 7), line, valid=valid) == pytest.approx(1.0)


def two_cells():
    t = np.zeros((8, 8), bool)
    t[0:3, 0:3] = True
    t[0:3, 4:7] = True  # two 3x3 cells (9 pixels each), separated by a membrane column
    return t


def test_adapted_rand_error_hand_computed_merge_and_split():
    t = two_cells()
    merged = t.copy()
    merged[0:3, 3] = True  # the prediction bridges the membrane: one segment of 21 pixels
    # scored on true pixels only (n = 18): contingency p = [9, 9]; sum p^2 - n = 144;
    # true sizes [9, 9] -> 144; predicted sizes restricted to true pixels [18] -> 324 - 18 = 306.
    # skimage: precision = 144 / 144 = 1, recall = 144 / 306 = 8/17; F = 16/25 -> error 9/25
    err, prec, rec = T.adapted_rand_error(merged, t)
    assert (err, prec, rec) == pytest.approx((9 / 25, 1.0, 8 / 17))
    # the split: one 3x7 true cell (n = 21) cut by a predicted membrane column into 9 | 3 (predicted
    # background, a segment of its own) | 9. p = [9, 3, 9]: sum p^2 - n = 171 - 21 = 150; true sizes
    # [21] -> 441 - 21 = 420; predicted sizes [9, 3, 9] -> 150. precision = 150/420 = 5/14,
    # recall = 150/150 = 1; F = 10/19 -> error 9/19
    block = np.zeros((8, 8), bool)
    block[0:3, 0:7] = True
    split = block.copy()
    split[:, 3] = False
    assert T.adapted_rand_error(split, block) == pytest.approx((9 / 19, 5 / 14, 1.0))
    assert T.adapted_rand_error(t, t)[0] == pytest.approx(0.0)


def test_adapted_rand_error_matches_skimage_on_components(rng):
    for _ in range(4):
        t = ndimage.gaussian_filter(rng.normal(size=(40, 40)), 1.5) > 0.05
        p = ndimage.gaussian_filter(rng.normal(size=(40, 40)), 1.5) > 0.05
        ref = sk_are(sk_label(t, connectivity=1), sk_label(p, connectivity=1))
        assert T.adapted_rand_error(p, t) == pytest.approx(tuple(float(v) for v in ref))
        # valid mask: identical to skimage on masks with the ignored pixels removed from both
        valid = np.ones_like(t)
        valid[:10] = False
        ref = sk_are(sk_label(t & valid, connectivity=1), sk_label(p & valid, connectivity=1))
        assert T.adapted_rand_error(p, t, valid=valid) == pytest.approx(tuple(float(v) for v in ref))


def test_adapted_rand_error_edge_cases():
    t = two_cells()
    empty = np.zeros_like(t)
    assert all(math.isnan(v) for v in T.adapted_rand_error(t, empty))  # no true object: undefined
    assert all(math.isnan(v) for v in T.adapted_rand_error(t, t, valid=empty))  # ignore everywhere
    # empty prediction: one background segment merging both cells (skimage convention)
    assert T.adapted_rand_error(empty, t) == pytest.approx((9 / 25, 1.0, 8 / 17))


def test_false_positive_islands_and_missed_objects():
    truth = np.zeros((10, 10), bool)
    truth[1:4, 1:4] = True  # object A
    truth[7:9, 7:9] = True  # object B, missed by the prediction
    pred = np.zeros((10, 10), bool)
    pred[2:5, 2:5] = True  # overlaps A
    pred[0, 8] = True  # island of area 1
    pred[6:8, 0:2] = True  # island of area 4
    assert T.false_positive_islands(pred, truth) == (2, 5)
    assert T.unmatched_components(truth, pred) == (1, 4)
    # an island inside the ignored region is not counted
    valid = np.ones((10, 10), bool)
    valid[6:8, 0:2] = False
    assert T.false_positive_islands(pred, truth, valid=valid) == (1, 1)
    # connectivity: two diagonal pixels are one island with 8-connectivity, two with 4
    diag = np.zeros((10, 10), bool)
    diag[8, 0] = diag[9, 1] = True
    assert T.false_positive_islands(diag, truth) == (1, 2)
    assert T.false_positive_islands(diag, truth, connectivity=1) == (2, 2)
    assert T.false_positive_islands(np.zeros_like(pred), truth) == (0, 0)
