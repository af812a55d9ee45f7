import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

from unetkit.metrics import boundary as B
from unetkit.metrics import scores as S
from unetkit.metrics.confusion import confusion_matrix
from unetkit.metrics.streaming import Evaluator

NAMES = ["background", "cell", "vessel"]


def synthetic(rng, shape=(32, 40), noise=1.0):
    """Smooth random label map with 3 classes and probabilities that mostly agree with it."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), 3)
    labels = np.digitize(field, np.quantile(field, [0.5, 0.8])).astype(np.uint8)
    logits = 3.0 * np.eye(3)[labels].transpose(2, 0, 1) + noise * rng.normal(size=(3, *shape))
    return softmax(logits, axis=0).astype(np.float32), labels


def test_perfect_prediction_scores_perfectly(rng):
    _, labels = synthetic(rng)
    probs = np.eye(3, dtype=np.float32)[labels].transpose(2, 0, 1)
    ev = Evaluator(NAMES)
    ev.update(probs, labels, key="a")
    out = ev.result()
    assert out["micro"]["mean_iou"] == 1.0 and out["macro"]["mean_dice"] == 1.0
    for name in NAMES[1:]:
        fg = out["foreground"][name]
        assert fg["hd95_mean"] == 0.0 and fg["assd_mean"] == 0.0 and fg["boundary_iou_micro"] == 1.0
        assert fg["fp_islands_total"] == 0 and fg["missed_objects_total"] == 0 and fg["auc_roc"] == 1.0
        row = out["per_image"][0]["classes"][name]
        assert row["cldice"] == 1.0 and row["adapted_rand_error"] == pytest.approx(0.0)
    assert out["calibration"]["ece"] == pytest.approx(0.0, abs=1e-6)
    assert out["per_image"][0]["key"] == "a"


def test_micro_macro_and_per_image_metrics_match_direct_computation(rng):
    ev = Evaluator(NAMES)
    cms, hd_cell, biou_cell, probs_all, labels_all = [], [], [], [], []
    for i in range(3):
        probs, labels = synthetic(rng)
        labels[:2] = 255  # ignored rows
        roi = np.ones(labels.shape, bool)
        if i == 1:
            roi[:, :3] = False
        ev.update(probs, labels, roi=roi)
        valid = (labels != 255) & roi
        pred = probs.argmax(0)
        cms.append(confusion_matrix(pred, labels, 3, roi=roi))
        hd_cell.append(B.hausdorff_distance(pred == 1, labels == 1, valid=valid))
        biou_cell.append(B.boundary_iou(pred == 1, labels == 1, valid=valid))
        probs_all.append(probs[2][valid])
        labels_all.append(labels[valid] == 2)
    out = json.loads(json.dumps(ev.result(), allow_nan=False))
    total = sum(cms)
    assert out["confusion_matrix"] == total.tolist()
    assert out["micro"]["mean_iou"] == pytest.approx(S.mean_iou(total))
    macro_iou = S.nan_mean(np.stack([S.per_class_iou(c) for c in cms]), axis=0)
    assert [r["iou"] for r in out["macro"]["per_class"]] == pytest.approx(macro_iou.tolist())
    cell = out["foreground"]["cell"]
    assert cell["hd95_mean"] == pytest.approx(np.mean(hd_cell)) and cell["hd95_images"] == 3
    assert out["macro"]["per_class"][1]["boundary_iou"] == pytest.approx(np.mean(biou_cell))
    auc = roc_auc_score(np.concatenate(labels_all), np.concatenate(probs_all))
    vessel = out["foreground"]["vessel"]
    assert abs(vessel["auc_roc"] - auc) <= vessel["auc_roc_error_bound"]
    assert sum(out["calibration"]["reliability"]["count"]) == total.sum()


def test_empty_and_ignored_images_follow_the_policies(rng):
    ev = Evaluator(["background", "object"])
    # image 1: object absent from truth and prediction -> NaN (null) scores, no distance
    probs = np.zeros((2, 8, 8), np.float32)
    probs[0] = 1.0
    ev.update(probs, np.zeros((8, 8), np.uint8))
    # image 2: object in the truth, missed by the prediction -> IoU 0, HD95 infinite
    truth = np.zeros((8, 8), np.uint8)
    truth[2:5, 2:5] = 1
    ev.update(probs, truth)
    # image 3: every pixel ignored
    ev.update(probs, np.full((8, 8), 255, np.uint8))
    out = json.loads(json.dumps(ev.result(), allow_nan=False))
    rows = out["per_image"]
    assert rows[0]["classes"]["object"]["iou"] is None and rows[0]["classes"]["object"]["hd95"] is None
    assert rows[1]["classes"]["object"]["iou"] == 0.0 and rows[1]["classes"]["object"]["hd95"] is None
    assert rows[2]["pixels"] == 0 and rows[2]["pixel_accuracy"] is None
    obj = out["foreground"]["object"]
    assert obj["images_one_empty"] == 1 and obj["hd95_images"] == 0 and obj["hd95_mean"] is None
    assert obj["missed_objects_total"] == 1 and obj["missed_area_total"] == 9
    # macro IoU of the object: only image 2 has evidence -> 0; the micro matrix agrees
    assert out["macro"]["per_class"][1]["iou"] == 0.0 and out["micro"]["per_class"][1]["iou"] == 0.0
    assert out["images"] == 3


def test_binary_single_channel_and_prediction_override(rng):
    truth = np.zeros((16, 16), np.uint8)
    truth[4:10, 4:10] = 1
    fg = np.where(truth == 1, 0.9, 0.1).astype(np.float32)[None]
    ev = Evaluator(["bg", "fg"])
    row = ev.update(fg, truth)
    assert row["classes"]["fg"]["iou"] == 1.0
    # a post-processed prediction replaces the argmax for the overlap metrics
    pred = truth.copy()
    pred[0, 0] = 1  # one false-positive island
    row = ev.update(fg, truth, prediction=pred)
    assert row["classes"]["fg"]["fp_islands"] == 1 and row["classes"]["fg"]["iou"] == pytest.approx(36 / 37)
    out = ev.result()
    assert out["foreground"]["fg"]["auc_roc"] == 1.0


def test_options_and_input_errors(rng):
    probs, labels = synthetic(rng)
    ev = Evaluator(NAMES, distances=False, topology=False)
    row = ev.update(probs, labels)
    assert "hd95" not in row["classes"]["cell"] and "cldice" not in row["classes"]["cell"]
    assert "fp_islands" in row["classes"]["cell"]
    with pytest.raises(ValueError, match="expected 3 classes"):
        ev.update(probs[:2], labels)
    with pytest.raises(ValueError, match="differ in size"):
        ev.update(probs, labels[:-1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        Evaluator(["only"])
    empty = Evaluator(NAMES).result()  # no image at all: JSON nulls, not crashes
    assert empty["images"] == 0 and empty["micro"]["mean_iou"] is None and empty["calibration"]["ece"] is None
