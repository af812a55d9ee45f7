"""The per-pixel measures and aggregates against values computed by hand on tiny maps."""

import math

import numpy as np
import pytest

from unetkit.active.uncertainty import (
    aggregate,
    combined_scores,
    entropy_map,
    foreground_region,
    margin_map,
    score_image,
    view_stats,
)
from unetkit.config import RankConfig
from unetkit.errors import ConfigError, InputError


def pixels(*probs: tuple[float, ...]) -> np.ndarray:
    """A (K, 1, N) map whose N pixels have the given class probabilities."""
    return np.array(probs, dtype=np.float32).T[:, None, :]


def test_entropy_is_normalized_by_log_k():
    h = entropy_map(pixels((0.5, 0.5), (1.0, 0.0), (0.9, 0.1)))
    by_hand = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2)  # 0.46900
    np.testing.assert_allclose(h[0], [1.0, 0.0, by_hand], atol=1e-6)
    uniform4 = entropy_map(np.full((4, 2, 2), 0.25, np.float32))
    np.testing.assert_allclose(uniform4, 1.0, atol=1e-6)


def test_margin_is_one_minus_the_gap_between_the_two_best():
    m = margin_map(pixels((0.7, 0.2, 0.1), (0.5, 0.5, 0.0), (1.0, 0.0, 0.0), (0.1, 0.3, 0.6)))
    np.testing.assert_allclose(m[0], [0.5, 1.0, 0.0, 0.7], atol=1e-6)


def test_tta_variance_by_hand():
    # pixel 0: one view says class 0, the other class 1 -> the largest disagreement, 1
    # pixel 1: identical views -> 0
    # pixel 2: (0.8, 0.2) and (0.6, 0.4): Var of each class over the views = 0.01, sum 0.02,
    #          divided by 1 - 1/K = 0.5 -> 0.04; both views pick class 0, so no flip
    a = pixels((1.0, 0.0), (0.3, 0.7), (0.8, 0.2))
    b = pixels((0.0, 1.0), (0.3, 0.7), (0.6, 0.4))
    stats = view_stats([a, b])
    np.testing.assert_allclose(stats.variance[0], [1.0, 0.0, 0.04], atol=1e-6)
    assert stats.flips[0].tolist() == [True, False, False]
    np.testing.assert_allclose(stats.mean[:, 0, 2], [0.7, 0.3], atol=1e-6)
    assert stats.views == 2


def test_tta_variance_reaches_one_for_views_spread_evenly_over_three_classes():
    one_hots = [pixels(tuple(float(c == k) for c in range(3))) for k in (0, 1, 2)]
    assert view_stats(one_hots).variance[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_view_stats_takes_a_stack_or_an_iterator_alike(rng):
    views = rng.dirichlet([1, 1, 1], size=(8, 5, 6)).transpose(0, 3, 1, 2).astype(np.float32)  # (V, K, H, W)
    from_stack, from_iter = view_stats(views), view_stats(iter(list(views)))
    np.testing.assert_allclose(from_stack.variance, from_iter.variance)
    np.testing.assert_allclose(from_stack.mean, views.mean(axis=0), atol=1e-6)
    by_numpy = views.var(axis=0).sum(axis=0) / (1 - 1 / 3)
    np.testing.assert_allclose(from_stack.variance, by_numpy, atol=1e-6)


def test_aggregates():
    values = np.array([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.2, 0.4]])
    assert aggregate(values, "mean") == pytest.approx(0.2)
    assert aggregate(values, "top", top_fraction=0.25) == pytest.approx((1.0 + 0.4) / 2)  # 2 of 8 pixels
    assert aggregate(values, "top", top_fraction=0.01) == pytest.approx(1.0)  # at least one pixel
    region = np.array([[False, False, False, False], [False, False, True, True]])
    assert aggregate(values, "foreground", region=region) == pytest.approx(0.3)
    assert aggregate(values, "foreground", region=np.zeros_like(region)) == 0.0


def test_foreground_region_is_where_background_is_not_sure():
    probs = pixels((0.95, 0.05), (0.9, 0.1), (0.2, 0.8))
    assert foreground_region(probs, background=0, min_prob=0.1)[0].tolist() == [False, True, True]
    with pytest.raises(InputError, match="background class 5 does not exist; the model has 2 classes"):
        foreground_region(probs, background=5)


def test_means_do_not_favour_big_images():
    small = np.tile(pixels((0.6, 0.4), (0.99, 0.01)), (1, 3, 5))
    big = np.tile(small, (1, 40, 40))
    for how in ("mean", "top"):
        config = RankConfig(aggregate=how, tta=False)
        assert score_image(small, config).scores["entropy"] == pytest.approx(score_image(big, config).scores["entropy"])


def test_score_image_from_views_scores_the_mean_and_its_disagreement():
    a, b = pixels((1.0, 0.0), (0.5, 0.5)), pixels((0.0, 1.0), (0.5, 0.5))
    result = score_image(np.stack([a, b]), RankConfig(by="tta"))
    assert result.scores["entropy"] == pytest.approx(1.0)  # the mean is (0.5, 0.5) at both pixels
    assert result.scores["tta"] == pytest.approx(0.5)  # 1 and 0
    assert result.scores["tta_flip"] == pytest.approx(0.5)
    np.testing.assert_allclose(result.heat[0], [1.0, 0.0], atol=1e-6)  # the map sorted by
    single = score_image(a, RankConfig(tta=False))
    assert math.isnan(single.scores["tta"]) and single.scores["entropy"] == pytest.approx(0.5)  # 0 and 1


def test_combined_is_the_mean_percentile_rank():
    table = {"a": np.array([0.1, 0.5, 0.3]), "b": np.array([0.3, 0.2, 0.1]), "off": np.full(3, np.nan)}
    # ranks a: 0, 1, 0.5; b: 1, 0.5, 0
    np.testing.assert_allclose(combined_scores(table), [0.5, 0.75, 0.25])
    np.testing.assert_allclose(combined_scores({"a": np.array([0.2, 0.2])}), [0.5, 0.5])  # ties share
    assert combined_scores({"a": np.array([0.3])}).tolist() == [1.0]


def test_bad_inputs_name_what_is_wrong():
    with pytest.raises(InputError, match=r"shape \(1, 2, 2\): expected \(K, H, W\) with K >= 2"):
        entropy_map(np.ones((1, 2, 2)))
    with pytest.raises(InputError, match="no probability maps"):
        view_stats([])
    with pytest.raises(ConfigError, match="rank.by: 'confidence' is not a score; expected one of entropy, margin, tta, combined"):
        RankConfig(by="confidence")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rank.aggregate"):
        RankConfig(aggregate="max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'tta' needs the TTA views"):
        RankConfig(by="tta", tta=False)
