"""Reduced-resolution training's resampling: images averaged down, labels kept as classes,
probabilities grown back as probabilities, bad fractions refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from unetkit.data.resample import (
    check_resolution,
    reduced_shape,
    resample_image,
    resample_labels,
    resize_scores,
)
from unetkit.errors import ConfigError


def test_images_shrink_by_averaging_so_fine_detail_becomes_its_mean() -> None:
    yy, xx = np.mgrid[0:40, 0:60]
    checker = ((yy + xx) % 2 * 200.0).astype(np.float32)[None]  # 1-px checkerboard, mean 100
    half = resample_image(np.concatenate([checker, checker + 10]), 0.5)
    assert half.shape == (2, 20, 30) and half.dtype == np.float32
    # plain bilinear sampling at half-pixel centres would alias to one phase (0 or 200); averaging gives the mean
    assert np.allclose(half[0, 2:-2, 2:-2], 100.0, atol=1.0) and np.allclose(half[1, 2:-2, 2:-2], 110.0, atol=1.0)
    assert resample_image(checker, 1.0) is checker  # native: untouched


def test_labels_keep_their_classes_and_the_ignore_index() -> None:
    labels = np.zeros((37, 51), np.uint8)
    labels[5:25, 10:40] = 2
    labels[:3] = 255
    half = resample_labels(labels, 0.5)
    assert half.shape == reduced_shape((37, 51), 0.5) == (18, 26) and half.dtype == np.uint8
    assert set(np.unique(half)) == {0, 2, 255}  # no blended values between classes
    assert (half[:1] == 255).all() and (half[4:11, 6:18] == 2).all()


def test_scores_grow_back_to_the_native_grid_and_stay_probabilities(rng: np.random.Generator) -> None:
    logits = rng.normal(size=(3, 12, 16)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    big = resize_scores(probs, (25, 31))
    assert big.shape == (3, 25, 31)
    assert np.allclose(big.sum(0), 1.0, atol=1e-5) and big.min() >= 0
    assert resize_scores(probs, (12, 16)) is probs


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, "half", None])
def test_a_resolution_outside_0_to_1_is_refused_by_name(bad) -> None:
    with pytest.raises(ConfigError, match=r"data\.resolution: expected a fraction of the native resolution in \(0, 1\]"):
        check_resolution(bad, "data.resolution")
    assert check_resolution("0.5", "x") == 0.5


@pytest.mark.parametrize(("n_in", "n_out"), [(97, 48), (97, 29), (120, 60), (48, 97), (29, 97), (60, 120), (7, 7)])
def test_axis_weights_are_torchs_bilinear_along_one_axis(n_in, n_out):
    """Antialiased when shrinking (as resample_image), plain when growing (as resize_scores)."""
    import torch
    import torch.nn.functional as F

    from unetkit.data.resample import axis_weights, last_input, resample_axis0

    x = np.random.default_rng(0).uniform(-3, 3, (2, n_in, 5)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x)[None], size=(n_out, 5), mode="bilinear", align_corners=False,
                             antialias=n_out < n_in)[0].numpy()
    first, weights = axis_weights(n_in, n_out)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(resample_axis0(x, 0, first, weights), expected, atol=3e-5)  # torch: float32 weights
    last = last_input(first, weights)
    assert (np.diff(first) >= 0).all() and (np.diff(last) >= 0).all() and last.max() < n_in
    # a band of outputs from just the rows they read
    a, b = n_out // 3, 2 * n_out // 3 + 1
    top, bottom = int(first[a]), int(last[a:b].max()) + 1
    np.testing.assert_allclose(resample_axis0(x[:, top:bottom], top, first[a:b], weights[a:b]), expected[:, a:b],
                               atol=3e-5)
