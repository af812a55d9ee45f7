import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from unetkit.metrics import ranking as R


def scored(rng, n=200_000, separation=1.0):
    y = rng.random(n) < 0.2
    logit = rng.normal(size=n) + separation * y
    return 1 / (1 + np.exp(-logit)), y


def test_histogram_auc_ap_within_stated_bound_of_sklearn(rng):
    s, y = scored(rng)
    pos, neg = R.score_histograms(s, y, bins=10_000)
    auc, ap = R.roc_auc(pos, neg), R.average_precision(pos, neg)
    auc_bound, ap_bound = R.auc_error_bound(pos, neg), R.ap_error_bound(pos, neg)
    assert abs(auc - roc_auc_score(y, s)) <= auc_bound
    assert abs(ap - average_precision_score(y, s)) <= ap_bound
    assert auc_bound < 1e-4 and ap_bound < 1e-3  # the bounds are tight enough to be useful


def test_histogram_is_exact_on_bin_quantized_scores(rng):
    s, y = scored(rng, n=50_000)
    bins = 100
    quantized = (np.minimum((s * bins).astype(int), bins - 1) + 0.5) / bins
    pos, neg = R.score_histograms(s, y, bins=bins)
    assert R.roc_auc(pos, neg) == pytest.approx(roc_auc_score(y, quantized), abs=1e-12)
    assert R.average_precision(pos, neg) == pytest.approx(average_precision_score(y, quantized), abs=1e-12)


def test_edge_cases_ties_single_positive_no_positive_ignore_everywhere():
    # all scores tied: AUC 1/2 (as sklearn), AP = prevalence; the AUC bound is the whole 1/2
    y = np.array([1, 0, 0, 1, 0], bool)
    s = np.full(5, 0.7)
    pos, neg = R.score_histograms(s, y)
    assert R.roc_auc(pos, neg) == pytest.approx(roc_auc_score(y, s)) == pytest.approx(0.5)
    assert R.average_precision(pos, neg) == pytest.approx(average_precision_score(y, s))
    assert R.auc_error_bound(pos, neg) == pytest.approx(0.5)
    # single positive pixel ranked above all but one negative: AUC 3/4 (hand: 3 of 4 pairs right)
    y = np.array([0, 1, 0, 0, 0], bool)
    s = np.array([0.9, 0.8, 0.1, 0.2, 0.3])
    pos, neg = R.score_histograms(s, y)
    assert R.roc_auc(pos, neg) == pytest.approx(0.75)
    assert R.average_precision(pos, neg) == pytest.approx(0.5)  # precision 1/2 at its rank
    # no positive: undefined
    pos, neg = R.score_histograms(s, np.zeros(5, bool))
    assert math.isnan(R.roc_auc(pos, neg)) and math.isnan(R.average_precision(pos, neg))
    # ignore everywhere: nothing counted
    acc = R.RankingAccumulator(bins=16)
    acc.update(s, y, valid=np.zeros(5, bool))
    out = acc.result()
    assert out["positives"] == 0 and out["negatives"] == 0 and math.isnan(out["auc_roc"])
    # scores of exactly 0 and 1 are counted in the first and last bins
    pos, neg = R.score_histograms(np.array([0.0, 1.0]), np.array([False, True]), bins=4)
    assert pos.tolist() == [0, 0, 0, 1] and neg.tolist() == [1, 0, 0, 0]


def test_streaming_equals_one_shot_and_honours_valid(rng):
    s, y = scored(rng, n=60_000)
    valid = rng.random(60_000) < 0.8
    acc = R.RankingAccumulator(bins=1000)
    for chunk in np.array_split(np.arange(60_000), 7):  # seven "images"
        acc.update(s[chunk], y[chunk], valid[chunk])
    pos, neg = R.score_histograms(s[valid], y[valid], bins=1000)
    assert np.array_equal(acc.positive, pos) and np.array_equal(acc.negative, neg)
    out = acc.result()
    assert abs(out["auc_roc"] - roc_auc_score(y[valid], s[valid])) <= out["auc_roc_error_bound"]
    assert (
        abs(out["average_precision"] - average_precision_score(y[valid], s[valid]))
        <= out["average_precision_error_bound"]
    )


def test_roc_curve_endpoints(rng):
    s, y = scored(rng, n=1000)
    fpr, tpr, thr = R.roc_curve(*R.score_histograms(s, y, bins=50))
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0) and thr[0] == 1.0 and thr[-1] == 0.0


def test_refuses_non_probabilities():
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        R.score_histograms(np.array([0.2, 1.5]), np.array([True, False]))
    # float32 rounding of blended probabilities just above 1 is tolerated (last bin)
    pos, _ = R.score_histograms(np.array([1.0 + 1e-7]), np.array([True]), bins=4)
    assert pos.tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="does not match"):
        R.score_histograms(np.zeros(3), np.zeros(4, bool))
