import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score

from unetkit.metrics import scores as S
from unetkit.metrics.confusion import ConfusionAccumulator, confusion_matrix

# ---------------------------------------------------------------- confusion matrix


def test_confusion_hand_computed_with_ignore_and_roi():
    target = np.array([[0, 0, 1], [1, 255, 2]], np.uint8)
    pred = np.array([[0, 1, 1], [2, 0, 2]], np.uint8)
    # counted pixels (truth, pred): (0,0) (0,1) (1,1) (1,2) (2,2); the 255 pixel is skipped
    expected = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.dtype == np.int64 and np.array_equal(cm, expected)
    roi = np.array([[1, 1, 0], [1, 1, 1]], bool)  # drops the (1,1) pixel
    expected_roi = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 1]])
    assert np.array_equal(confusion_matrix(pred, target, 3, roi=roi), expected_roi)
    # torch inputs give the same
    assert np.array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 3), expected)


def test_confusion_matches_sklearn_on_random(rng):
    for k in (2, 5):
        t = rng.integers(0, k, (3, 40, 50))
        p = rng.integers(0, k, (3, 40, 50))
        t[:, :5] = 255
        keep = t != 255
        ref = sk_confusion(t[keep], p[keep], labels=list(range(k)))
        assert np.array_equal(confusion_matrix(p, t, k), ref)


def test_confusion_refuses_out_of_range_and_shape_mismatch():
    with pytest.raises(ValueError, match="target holds class 3"):
        confusion_matrix(np.zeros((2, 2), int), np.full((2, 2), 3), 3)
    with pytest.raises(ValueError, match="prediction holds class 9"):
        confusion_matrix(np.full((2, 2), 9), np.zeros((2, 2), int), 3)
    with pytest.raises(ValueError, match="does not match"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)


def test_accumulator_sums_and_keeps_per_image(rng):
    acc = ConfusionAccumulator(3)
    cms = []
    for _ in range(4):
        t = rng.integers(0, 3, (10, 10))
        p = rng.integers(0, 3, (10, 10))
        cms.append(acc.update(p, t))
    assert np.array_equal(acc.compute(), sum(cms))
    assert acc.per_image.shape == (4, 3, 3) and np.array_equal(acc.per_image[2], cms[2])
    acc.reset()
    assert acc.compute().sum() == 0 and acc.per_image.shape == (0, 3, 3)


# ---------------------------------------------------------------- scores


def test_scores_hand_computed():
    cm = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    # class 0: tp 1 fp 0 fn 1; class 1: tp 1 fp 1 fn 1; class 2: tp 1 fp 1 fn 0
    tp, fp, fn, tn = S.counts(cm)
    assert tp.tolist() == [1, 1, 1] and fp.tolist() == [0, 1, 1] and fn.tolist() == [1, 1, 0]
    assert tn.tolist() == [3, 2, 3]
    assert S.per_class_iou(cm) == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert S.per_class_dice(cm) == pytest.approx([2 / 3, 2 / 4, 2 / 3])
    assert S.precision(cm) == pytest.approx([1, 1 / 2, 1 / 2])
    assert S.recall(cm) == pytest.approx([1 / 2, 1 / 2, 1])
    assert S.pixel_accuracy(cm) == pytest.approx(3 / 5)
    assert S.mean_iou(cm) == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert S.mean_iou(cm, include_background=False) == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_absent_class_policy():
    # class 2 absent from truth and prediction -> NaN, excluded from the mean
    cm = np.array([[2, 1, 0], [0, 3, 0], [0, 0, 0]])
    iou = S.per_class_iou(cm)
    assert iou[:2] == pytest.approx([2 / 3, 3 / 4]) and math.isnan(iou[2])
    assert S.mean_iou(cm) == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert all(math.isnan(f(cm)[2]) for f in (S.per_class_dice, S.precision, S.recall))
    # class 2 absent from truth but predicted once -> IoU = Dice = 0 (and recall 0)
    cm2 = np.array([[2, 1, 1], [0, 3, 0], [0, 0, 0]])
    assert S.per_class_iou(cm2)[2] == 0.0 and S.per_class_dice(cm2)[2] == 0.0 and S.recall(cm2)[2] == 0.0
    # class 1 present in truth but never predicted -> precision 0
    cm3 = np.array([[2, 0], [4, 0]])
    assert S.precision(cm3)[1] == 0.0 and S.per_class_iou(cm3)[1] == 0.0
    # nothing counted at all: every score NaN, accuracy NaN, means NaN without warnings
    empty = np.zeros((2, 2), int)
    with np.errstate(all="raise"):
        assert math.isnan(S.mean_iou(empty)) and math.isnan(S.pixel_accuracy(empty))


def test_scores_match_sklearn_on_random(rng):
    k = 4
    t = rng.integers(0, k, 5000)
    p = np.where(rng.random(5000) < 0.6, t, rng.integers(0, k, 5000))
    p[p == 3] = 2  # class 3 never predicted: precision 0 by our policy and sklearn's zero_division=0
    cm = confusion_matrix(p, t, k)
    kw = dict(labels=list(range(k)), average=None, zero_division=0)
    assert S.per_class_iou(cm) == pytest.approx(jaccard_score(t, p, **kw))
    assert S.per_class_dice(cm) == pytest.approx(f1_score(t, p, **kw))
    assert S.precision(cm) == pytest.approx(precision_score(t, p, **kw))
    assert S.recall(cm) == pytest.approx(recall_score(t, p, **kw))
    assert S.mean_iou(cm) == pytest.approx(jaccard_score(t, p, labels=list(range(k)), average="macro"))


def test_stacked_matrices_give_macro_scores(rng):
    acc = ConfusionAccumulator(3)
    per_image_iou = []
    for i in range(3):
        t = rng.integers(0, 2 if i == 0 else 3, (20, 20))  # class 2 absent from image 0's truth
        p = np.where(rng.random((20, 20)) < 0.7, t, 0)
        acc.update(p, t)
        per_image_iou.append(S.per_class_iou(confusion_matrix(p, t, 3)))
    stacked = S.per_class_iou(acc.per_image)
    assert stacked.shape == (3, 3)
    np.testing.assert_allclose(stacked, np.array(per_image_iou))
    assert math.isnan(stacked[0, 2])
    macro = S.nan_mean(stacked, axis=0)
    assert macro[2] == pytest.approx((stacked[1, 2] + stacked[2, 2]) / 2)


def test_summarize_is_json_ready_with_null_for_nan():
    cm = np.array([[2, 1, 0], [0, 3, 0], [0, 0, 0]])
    out = S.summarize(cm, ["bg", "cell", "vessel"])
    text = json.dumps(out, allow_nan=False)  # raises on NaN/inf
    back = json.loads(text)
    assert back["per_class"][2] == {
        "class": "vessel",
        "iou": None,
        "dice": None,
        "precision": None,
        "recall": None,
        "true_pixels": 0,
        "predicted_pixels": 0,
    }
    assert back["mean_iou"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert back["mean_iou_foreground"] == pytest.approx(3 / 4)
    assert back["pixel_accuracy"] == pytest.approx(5 / 6) and back["pixels"] == 6
    with pytest.raises(ValueError, match="K class names"):
        S.summarize(cm, ["a", "b"])
