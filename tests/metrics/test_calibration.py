import math

import numpy as np
import pytest
from scipy.special import softmax

from unetkit.metrics import calibration as C


def direct_ece(confidence, correct, n_bins):
    """Textbook ECE: bins (lo, hi], confidence 0 in the first bin."""
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (confidence > lo) & (confidence <= hi)
        if b == 0:
            inside |= confidence == 0
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return ece


def test_ece_hand_computed():
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, False, True, True])
    # 10 bins: (0.9, 1]: acc 1/2 vs conf .95 -> .45; (0.5, 0.6]: acc 1 vs .55 -> .45; ECE = .5*.45 + .5*.45
    sums = C.calibration_bins(conf, correct, n_bins=10)
    assert C.expected_calibration_error(*sums) == pytest.approx(0.45)
    assert C.max_calibration_error(*sums) == pytest.approx(0.45)
    diagram = C.reliability_diagram(*sums)
    assert diagram["count"][9] == 2 and diagram["accuracy"][9] == 0.5 and diagram["confidence"][5] == 0.55
    assert math.isnan(diagram["accuracy"][0])


def test_ece_matches_direct_numpy(rng):
    k, n = 4, 20_000
    probs = softmax(rng.normal(size=(k, n)) * 2, axis=0)
    labels = rng.integers(0, k, n)
    labels[:100] = 255
    valid = labels != 255
    acc = C.CalibrationAccumulator(n_bins=15)
    for chunk in np.array_split(np.arange(n), 5):
        acc.update(probs[:, chunk], labels[chunk], valid[chunk])
    conf = probs.max(0)[valid]
    correct = (probs.argmax(0) == labels)[valid]
    assert acc.result()["ece"] == pytest.approx(direct_ece(conf, correct, 15), rel=1e-10)
    assert sum(acc.result()["reliability"]["count"]) == valid.sum()
    # bin edges: a confidence of exactly 1/3 goes to (0.2667, 0.3333] with 15 bins, 0 to the first bin
    count, _, _ = C.calibration_bins(np.array([0.0, 1 / 3, 1.0]), np.ones(3, bool), 15)
    assert count[0] == 1 and count[4] == 1 and count[14] == 1


def test_ece_ignore_everywhere_is_nan():
    acc = C.CalibrationAccumulator()
    acc.update(np.full((2, 3, 3), 0.5), np.full((3, 3), 255), np.zeros((3, 3), bool))
    assert math.isnan(acc.result()["ece"]) and math.isnan(acc.result()["mce"])


def overconfident(rng, n=4000, k=3, factor=4.0):
    """Labels drawn from softmax(z) (so z is calibrated); the model outputs factor * z."""
    z = rng.normal(size=(n, k)) * 1.5
    p = softmax(z, axis=1)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(1)
    return z * factor, labels


def ece_of(logits, labels):
    probs = softmax(logits, axis=1)
    return C.expected_calibration_error(*C.calibration_bins(probs.max(1), probs.argmax(1) == labels, 15))


def test_fit_temperature_recovers_scale_and_lowers_nll_and_ece(rng):
    logits, labels = overconfident(rng)
    fit = C.fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(4.0, rel=0.15)
    assert fit.nll_after < fit.nll_before - 0.1
    assert fit.nll_before == pytest.approx(C.negative_log_likelihood(logits, labels))
    calibrated = C.apply_calibration(logits, fit)
    assert ece_of(calibrated, labels) < 0.5 * ece_of(logits, labels)
    # vector scaling starts from 1/T and can only lower the NLL further
    vec = C.fit_temperature(logits, labels, vector=True)
    assert vec.scale is not None and len(vec.scale) == 3 and vec.nll_after <= fit.nll_after + 1e-9
    assert C.negative_log_likelihood(
        C.apply_calibration(logits, vec).astype(np.float64), labels
    ) == pytest.approx(vec.nll_after, rel=1e-4)


def test_fit_temperature_spatial_binary_and_ignore(rng):
    logits, labels = overconfident(rng, n=1600, k=2, factor=3.0)
    # as (N, 1, H, W) binary logits: foreground logit = z1 - z0
    binary = (logits[:, 1] - logits[:, 0]).reshape(4, 1, 20, 20)
    lab = labels.reshape(4, 20, 20).copy()
    lab[0, :5] = 255
    fit = C.fit_temperature(binary, lab)
    assert fit.temperature == pytest.approx(3.0, rel=0.25) and fit.nll_after < fit.nll_before
    probs = C.calibrated_probabilities(binary, fit)
    assert probs.shape == (4, 1, 20, 20)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-binary / fit.temperature)), rtol=1e-5)
    assert C.apply_calibration(binary, fit) == pytest.approx(binary / fit.temperature)
    with pytest.raises(ValueError, match="no valid pixel"):
        C.fit_temperature(binary, np.full((4, 20, 20), 255))
