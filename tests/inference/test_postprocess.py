"""Postprocessing ops on hand-made masks, and tuning that never lowers its own metric."""

import numpy as np
import pytest
from scipy import ndimage

from unetkit.config import PostprocessConfig
from unetkit.errors import ConfigError
from unetkit.inference.postprocess import (
    apply_postprocess,
    closing_mask,
    compact,
    keep_largest,
    opening_mask,
    remove_small,
    score_labels,
    tune_postprocess,
)


def probs_from_labels(labels: np.ndarray, k: int, confidence: float = 0.9) -> np.ndarray:
    p = np.full((k, *labels.shape), (1 - confidence) / (k - 1), np.float32)
    for c in range(k):
        p[c][labels == c] = confidence
    return p


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


def test_compact_drops_defaults():
    cfg = PostprocessConfig(threshold=0.4, min_size=(0, 0), fill_holes=(False, True))
    assert compact(cfg) == {"threshold": 0.4, "fill_holes": [False, True]}
    assert compact(PostprocessConfig()) == {}


def _noisy_binary(rng, n=3, size=48):
    """Blobs + speckle noise + thresholds off: the kind of output postprocessing helps."""
    truths, probs = [], []
    for _ in range(n):
        raw = ndimage.gaussian_filter(rng.random((size, size)), 3)
        truth = (raw > np.quantile(raw, 0.7)).astype(np.uint8)
        logit = np.where(truth == 1, 1.0, -1.0) * 1.5 + rng.normal(0, 1.2, truth.shape) - 0.6
        p1 = 1 / (1 + np.exp(-logit))
        probs.append(np.stack([1 - p1, p1]).astype(np.float32))
        truth[0:2, :] = 255  # an ignored strip
        truths.append(truth)
    return probs, truths


@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_tuning_never_lowers_its_metric(rng, metric):
    probs, truths = _noisy_binary(rng)
    base = score_labels([apply_postprocess(p, {}) for p in probs], truths, 2, metric)
    params, log = tune_postprocess(probs, truths, metric=metric)
    tuned = score_labels([apply_postprocess(p, params) for p in probs], truths, 2, metric)
    assert tuned >= base
    assert tuned > base + 0.01  # on this noisy data it really helps
    assert params  # something was kept
    kept = [row for row in log if row["kept"]]
    assert all(r["after"] > r["before"] for r in kept)


def test_tuning_keeps_nothing_when_nothing_helps():
    truth = np.zeros((20, 20), np.uint8)
    truth[5:15, 5:15] = 1
    probs = [probs_from_labels(truth, 2)]
    params, log = tune_postprocess(probs, [truth], metric="dice")
    assert params == {} and not any(r["kept"] for r in log)


def test_tuning_multiclass_never_lowers(rng):
    truths, probs = [], []
    for _ in range(2):
        raw = ndimage.gaussian_filter(rng.random((40, 40)), 3)
        truth = np.digitize(raw, np.quantile(raw, [0.5, 0.8])).astype(np.uint8)
        logits = np.stack([(truth == c) * 2.0 for c in range(3)]) + rng.normal(0, 1.3, (3, 40, 40))
        e = np.exp(logits - logits.max(0))
        probs.append((e / e.sum(0)).astype(np.float32))
        truths.append(truth)
    base = score_labels([p.argmax(0) for p in probs], truths, 3, "iou")
    params, _ = tune_postprocess(probs, truths, metric="iou")
    assert "threshold" not in params
    assert score_labels([apply_postprocess(p, params) for p in probs], truths, 3, "iou") >= base


# ---------------------------------------------------------------- watershed split (cells and membranes)


def cells_and_membranes(rng, size: int = 160, cells: int = 20):
    """Voronoi cells (class 1) divided by 2-px membranes (class 0), and a U-Net-like probability
    map of them: membranes predicted three times too thick with soft edges, spurs of membrane-like
    probability running from the membranes into the cells (organelle outlines joined to the
    membrane network), and a little noise."""
    from skimage.segmentation import find_boundaries

    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0, size, (cells, 2))
    d = (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2
    region = d.argmin(-1) + 1
    truth = (~find_boundaries(region, mode="inner")).astype(np.uint8)
    depth = ndimage.distance_transform_edt(truth)
    p = 1 / (1 + np.exp(-(depth - 2.5) / 0.7))  # p < 0.5 within 2.5 px of a membrane: ~5 px thick
    for cy, cx in centres:  # a 6-px spur from the cell's nearest membrane towards its centre
        wall = np.unravel_index(np.argmin(np.where(region == region[int(cy) % size, int(cx) % size], depth, np.inf)
                                          + np.hypot(yy - cy, xx - cx) * 1e-3), depth.shape)
        for t in np.linspace(0, 1, 24):
            y, x = int(round(wall[0] + t * (cy - wall[0]) * 0.5)), int(round(wall[1] + t * (cx - wall[1]) * 0.5))
            p[max(y - 1, 0): y + 1, max(x - 1, 0): x + 1] = 0.1
    p = np.clip(p + ndimage.gaussian_filter(rng.normal(0, 0.1, p.shape), 2), 0.001, 0.999).astype(np.float32)
    return np.stack([1 - p, p]), truth


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


def test_rand_tuning_switches_the_split_on_within_the_dice_guard(rng):
    pairs = [cells_and_membranes(rng) for _ in range(3)]
    probs, truths = [p for p, _ in pairs], [t for _, t in pairs]
    params, log = tune_postprocess(probs, truths, metric="rand")
    assert params.get("watershed", [0, 0])[1] > 0
    assert [r["op"] for r in log][:2] == ["watershed", "watershed_band"]  # before the threshold
    base = score_labels([apply_postprocess(p, {}) for p in probs], truths, 2, "rand")
    tuned = score_labels([apply_postprocess(p, params) for p in probs], truths, 2, "rand")
    assert tuned > base + 0.1
    dice = [score_labels([apply_postprocess(p, c) for p in probs], truths, 2, "dice") for c in ({}, params)]
    assert dice[1] >= dice[0] - 0.005
    # a guard nothing can pass: arg-max stays
    tight, _ = tune_postprocess(probs, truths, metric="rand", dice_guard=-1.0)
    assert tight == {}


def test_rand_score_is_one_minus_the_adapted_rand_error_and_skips_ignored_pixels():
    from unetkit.metrics.topology import adapted_rand_error

    truth = np.zeros((6, 9), np.uint8)
    truth[:, :4], truth[:, 5:] = 1, 1
    pred = np.ones_like(truth)  # the two cells merged
    expected = 1 - adapted_rand_error(pred == 1, truth == 1)[0]
    assert score_labels([pred], [truth], 2, "rand") == pytest.approx(expected) and expected < 0.9
    ignored = truth.copy()
    ignored[:, 5:] = 255  # the second cell not labelled: nothing merged in what is scored
    assert score_labels([pred], [ignored], 2, "rand") == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="watershed"):
        PostprocessConfig(watershed=(0.0, 1.5))
