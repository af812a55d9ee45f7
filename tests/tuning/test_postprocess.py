"""Postprocessing search that never lowers its own metric, and storing its choice in an artifact
(unetkit.tuning.postprocess)."""

import numpy as np
import pytest
from scipy import ndimage

from tests.evaluation_fixtures import drive_like, tiny_artifact
from tests.postprocess_fixtures import cells_and_membranes, probs_from_labels
from unetkit.artifact import load_artifact
from unetkit.config import PostprocessConfig
from unetkit.errors import ConfigError, DataError
from unetkit.evaluation.evaluate import evaluate_model
from unetkit.inference.postprocess import apply_postprocess
from unetkit.metrics.topology import adapted_rand_error
from unetkit.tuning import postprocess
from unetkit.tuning.postprocess import (
    RAND_DICE_GUARD,
    candidate_steps,
    compact,
    gate_postprocess,
    label_probabilities,
    score_labels,
    search_seconds,
    tune_model_postprocess,
    tune_postprocess,
    tune_probabilities,
)


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


def test_the_dice_guard_reaches_the_search_and_its_out_of_fold_gate_and_is_recorded(rng):
    pairs = [cells_and_membranes(rng) for _ in range(4)]
    probs, truths = [p for p, _ in pairs], [t for _, t in pairs]
    default = tune_probabilities(probs, truths, 2, "rand")
    assert default["dice_guard"] == RAND_DICE_GUARD and default["postprocess"]  # the split pays and is adopted
    assert default["dice_after"] >= default["dice_before"] - RAND_DICE_GUARD
    assert tune_probabilities(probs, truths, 2, "dice")["dice_guard"] is None
    # no trial can pass a negative guard: the search keeps arg-max, and so nothing is gated or stored
    shut = tune_probabilities(probs, truths, 2, "rand", dice_guard=-1.0)
    assert shut["tuned"] == {} and shut["postprocess"] == {} and shut["dice_guard"] == -1.0
    # a loose guard is what the search and the gate's re-runs both use: whatever they keep may give up
    # more Dice than the default allows, and the search still never lowers its own metric
    loose = tune_probabilities(probs, truths, 2, "rand", dice_guard=1.0)
    assert loose["dice_guard"] == 1.0 and loose["after"] >= loose["before"]
    assert loose["steps"][0]["op"] == "watershed"
    # the gate re-runs the search with the guard it is given: with one nothing passes, the held-out
    # images keep arg-max, and the default's adopted choice is not
    assert not gate_postprocess(probs, truths, default["tuned"], metric="rand", dice_guard=-1.0).adopted


@pytest.mark.parametrize("guard", [-0.01, float("nan"), "0.1"])
def test_a_bad_dice_guard_is_refused_before_anything_is_read(tmp_path, guard):
    with pytest.raises(ConfigError, match="dice_guard .*expected a number >= 0"):
        tune_model_postprocess(tmp_path / "missing.unetkit", tmp_path / "no-data", metric="rand", dice_guard=guard)


def test_rand_score_is_one_minus_the_adapted_rand_error_and_skips_ignored_pixels():
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


def test_tune_postprocess_stores_params_and_never_lowers(tmp_path):
    data = drive_like(tmp_path / "d")
    path = tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3)
    summary = tune_model_postprocess(path, data, metric="dice", backend="torch", progress=False)
    assert summary["after"] >= summary["before"]
    assert all(s["after"] > s["before"] for s in summary["steps"] if s["kept"])
    art = load_artifact(path)
    assert art.meta.postprocess == summary["postprocess"]
    assert art.meta.metrics["postprocess_tuning"]["after"] == pytest.approx(summary["after"])
    # evaluate (like predict) applies the stored postprocessing: its Dice is the tuned one
    result = evaluate_model(path, data, backend="torch", progress=False, distances=False, topology=False)
    assert result["postprocess"] == summary["postprocess"]
    assert result["mean_dice_foreground"] == pytest.approx(summary["after"])
    with pytest.raises(DataError, match="metric 'f1'"):
        tune_model_postprocess(path, data, metric="f1", backend="torch", progress=False)


def test_a_search_past_its_deadline_stops_and_keeps_plain_arg_max(rng, tmp_path):
    """Training's budget bounds the end-of-run search: on 11 CamVid classes it ran 10+ minutes past a
    60-minute budget. Past the deadline the search (or the gate's refits) stops, arg-max stays."""
    import time

    from unetkit.evaluation.labelled import load_labelled
    from unetkit.tuning.postprocess import OutOfTime, gate_postprocess, tune_samples

    probs, truths = _noisy_binary(rng)
    with pytest.raises(OutOfTime):
        tune_postprocess(probs, truths, deadline=time.monotonic() - 1)
    tuned, _ = tune_postprocess(probs, truths, deadline=time.monotonic() + 600)  # time enough: as without one
    assert tuned == tune_postprocess(probs, truths)[0]
    with pytest.raises(OutOfTime):
        gate_postprocess(probs, truths, tuned, deadline=time.monotonic() - 1)

    data = drive_like(tmp_path / "d")
    path = tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3)
    artifact, samples = load_labelled(path, data, None, False)
    summary = tune_samples(artifact, samples, "dice", backend="torch", progress=False, deadline=time.monotonic() - 1)
    assert summary["postprocess"] == {} and summary["after"] == summary["before"]
    assert not summary["gate"]["adopted"] and "ran out of the budget's time after 0 trials" in summary["gate"]["reason"]


def test_the_class_by_class_shortcut_gives_the_full_searchs_choice_and_log(rng, monkeypatch):
    """The search cleans one class per trial on maps shared by the step (`trial_labels`); forcing the
    full clean-up of every class for every trial must give the same choice, scores and log."""
    import unetkit.tuning.postprocess as tuning

    k, truths, probs = 4, [], []
    for _ in range(3):
        field = ndimage.gaussian_filter(rng.random((k, 40, 44)), (0, 3, 3))
        truth = field.argmax(0).astype(np.uint8)
        noisy = np.exp(4 * (field + rng.normal(0, 0.04, field.shape)) / field.std())
        probs.append((noisy / noisy.sum(0)).astype(np.float32))
        truth[:, :2] = 255
        truths.append(truth)
    for metric in ("dice", "rand"):
        fast = tune_postprocess(probs, truths, metric=metric)
        monkeypatch.setattr(tuning, "acts_on", lambda cfg, c: True)  # every trial takes the full path
        full = tune_postprocess(probs, truths, metric=metric)
        monkeypatch.undo()
        assert fast == full
        assert any(row["kept"] for row in fast[1])  # the search did change something on this data


def test_search_seconds_scales_one_timed_step_to_every_trial_and_every_fold_search(rng, monkeypatch):
    probs, truth = cells_and_membranes(rng)
    steps = candidate_steps(2, metric="rand")
    assert steps[0][0] == "watershed" and len(steps[0][2]) == 5
    ticks = iter([10.0, 16.0])  # arg-max's score + the first step's 5 trials, timed: 1 s a trial
    monkeypatch.setattr(postprocess.time, "perf_counter", lambda: next(ticks))
    trials = 1 + sum(len(values) for _, _, values in steps)
    # the search on 5 images' pixels, then 5 out-of-fold re-runs on 4/5 of them each: 25 images' searches
    assert search_seconds(probs, truth, 5 * truth.size, "rand", folds=5) == pytest.approx(trials * 25.0)
    ticks = iter([0.0, 6.0])
    assert search_seconds(probs, truth, 2 * truth.size, "rand") == pytest.approx(trials * 2.0)  # no gate


def test_label_probabilities_are_the_one_hot_labels_with_ignored_pixels_as_background():
    labels = np.array([[0, 1, 255], [2, 1, 0]])
    probs = label_probabilities(labels, 3)
    assert probs.shape == (3, 2, 3) and probs.dtype == np.float32
    assert np.array_equal(probs.argmax(0), np.where(labels == 255, 0, labels)) and np.all(probs.sum(0) == 1)


def test_rand_search_drops_seed_specks_that_would_split_cells(rng, monkeypatch):
    """Organelles' closed outlines inside cells make specks of seed probability of their own: the split
    starts from `DEFAULT_MIN_SEED` and the search's seed-size step, and scores above a search without them."""
    import unetkit.tuning.postprocess as tuning

    probs, truths = [], []
    for _ in range(3):
        p2, truth = cells_and_membranes(rng)
        p = p2[1].copy()
        depth = ndimage.distance_transform_edt(truth)
        yy, xx = np.mgrid[: p.shape[0], : p.shape[1]]
        for cy, cx in np.argwhere(depth >= 8)[rng.choice(int((depth >= 8).sum()), 12, replace=False)]:
            r = np.hypot(yy - cy, xx - cx)
            p[(r >= 1.5) & (r < 2.5)] = np.minimum(p[(r >= 1.5) & (r < 2.5)], 0.6)
        probs.append(np.stack([1 - p, p]).astype(np.float32))
        truths.append(truth)
    params, log = tune_postprocess(probs, truths, metric="rand")
    ops = [r["op"] for r in log]
    assert ops[:3] == ["watershed", "watershed_band", "threshold"] and ops[3] == "watershed_min_seed"
    assert params["watershed"][1] > 0 and params["watershed_min_seed"][1] > 0
    monkeypatch.setattr(tuning, "DEFAULT_MIN_SEED", 0)
    bare = [s for s in candidate_steps(2, metric="rand") if s[0] != "watershed_min_seed"]
    without, _ = tune_postprocess(probs, truths, metric="rand", steps=bare)
    assert "watershed_min_seed" not in without
    scores = [score_labels([apply_postprocess(p, c) for p in probs], truths, 2, "rand") for c in (without, params)]
    assert scores[1] > scores[0] + 0.01


def test_only_the_object_score_searches_the_split_and_its_seed_floor():
    for k in (2, 3):
        for metric in ("dice", "iou"):
            assert not [s for s in candidate_steps(k, metric=metric) if s[0].startswith("watershed")]
        ops = [(name, c) for name, c, _ in candidate_steps(k, metric="rand")]
        assert [c for name, c in ops if name == "watershed_min_seed"] == list(range(1, k))
        last_split = max(i for i, (name, _) in enumerate(ops) if name in ("watershed", "watershed_band", "threshold"))
        assert min(i for i, (name, _) in enumerate(ops) if name == "watershed_min_seed") > last_split
