"""TTA adopted only where it helps across images (tuning.tta): the gate on synthetic probabilities,
the choice on a real artifact's predictions, and every inference path following the stored choice."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.evaluation_fixtures import drive_like, tiny_artifact
from tests.postprocess_fixtures import probs_from_labels
from unetkit.artifact import load_artifact, update_artifact
from unetkit.errors import DataError
from unetkit.evaluation.evaluate import evaluate_model
from unetkit.evaluation.labelled import iter_probabilities, load_labelled
from unetkit.export.plan import inference_plan, tile_config_from_plan
from unetkit.inference.files import tile_config_for
from unetkit.inference.predict import sharpen
from unetkit.metrics.calibration import pooled_ece
from unetkit.tuning import gate
from unetkit.tuning.calibration import recalibrate_mean
from unetkit.tuning.tta import choose_tta, gate_tta, tune_model_tta


def _with_errors(rng, truth: np.ndarray, fraction: float) -> np.ndarray:
    """Probabilities that get `fraction` of the pixels wrong (confidently)."""
    labels = truth.copy()
    wrong = rng.random(truth.shape) < fraction
    labels[wrong] = 1 - labels[wrong]
    return probs_from_labels(labels, 2, confidence=0.8)


def _truths(rng, n: int, size: int = 40) -> list[np.ndarray]:
    return [(rng.random((size, size)) < 0.3).astype(np.uint8) for _ in range(n)]


def test_tta_that_helps_every_image_is_adopted(rng) -> None:
    truths = _truths(rng, 6)
    plain = [_with_errors(rng, t, 0.15) for t in truths]
    tta = [_with_errors(rng, t, 0.08) for t in truths]
    verdict = gate_tta(plain, tta, truths, 2)
    assert verdict.adopted and verdict.gain > 0 and verdict.lower > 0 and verdict.n == 6
    assert "gain of the views' mean" in verdict.reason and "out-of-fold" not in verdict.reason


def test_tta_that_helps_one_image_by_chance_and_hurts_the_others_is_refused(rng) -> None:
    """The pooled gain is positive only because one image gained a lot: it does not hold across images."""
    truths = _truths(rng, 6)
    plain = [_with_errors(rng, t, 0.45 if i == 0 else 0.10) for i, t in enumerate(truths)]
    tta = [_with_errors(rng, t, 0.02 if i == 0 else 0.13) for i, t in enumerate(truths)]
    verdict = gate_tta(plain, tta, truths, 2)
    assert verdict.gain > 0  # on all six images together it looks like a gain ...
    assert not verdict.adopted and verdict.lower <= 0  # ... that a resample without image 0 does not keep
    assert "TTA kept at the default" in verdict.reason


def test_two_images_are_too_few_to_adopt_tta_whatever_the_gain(rng) -> None:
    truths = _truths(rng, 2)
    verdict = gate_tta([_with_errors(rng, t, 0.3) for t in truths], [probs_from_labels(t, 2) for t in truths], truths, 2)
    assert not verdict.adopted and f"fewer than the {gate.MIN_IMAGES}" in verdict.reason
    with pytest.raises(DataError, match="metric 'f1'"):
        gate_tta([], [], [], 2, metric="f1")


def test_choose_tta_scores_the_models_own_plain_and_tta_predictions(tmp_path) -> None:
    """The first view is the plain prediction and the views' mean is what `--tta` predicts; the
    probabilities handed on are the chosen ones; "on" keeps TTA whatever the gate says."""
    data = drive_like(tmp_path / "d", n_images=4)
    artifact, samples = load_labelled(tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3), data, None, False)
    plain = [p for _, p in iter_probabilities(artifact, samples, {"tta": False}, backend="torch", progress=False)]
    tta = [p for _, p in iter_probabilities(artifact, samples, {"tta": True}, backend="torch", progress=False)]
    summary, probs = choose_tta(artifact, samples, backend="torch")
    verdict = gate_tta(plain, tta, [s.labels for s in samples], 2)
    assert summary["tta"] == verdict.adopted and summary["gate"]["gain"] == pytest.approx(verdict.gain)
    # the views' mean recalibrated with the temperature fitted on it where that holds out of fold: what `--tta`
    # predicts with the temperature stored
    truths = [s.labels for s in samples]
    fit = recalibrate_mean(tta, truths, 255, what="x")
    temperature = summary["temperature"]
    assert temperature == fit["temperature"] and summary["recalibration_gate"]["adopted"] == fit["gate"]["adopted"]
    assert summary["ece_tta_mean"] == pytest.approx(pooled_ece(tta, truths, 255))
    recalibrated = [p for _, p in iter_probabilities(artifact, samples, {"tta": True, "tta_temperature": temperature},
                                                     backend="torch", progress=False)]
    for got, raw in zip(recalibrated, tta, strict=True):
        np.testing.assert_allclose(got, sharpen(raw.copy(), temperature), atol=1e-5)
    assert summary["ece_tta"] == pytest.approx(pooled_ece(recalibrated, truths, 255), abs=1e-6)
    for got, want in zip(probs, recalibrated if summary["tta"] else plain, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert summary["views"] == "dihedral" and summary["images"] == 4 and 0 <= summary["ece_tta"] <= 1
    assert summary["dice_tta"] - summary["dice_plain"] == pytest.approx(verdict.gain)

    on, probs = choose_tta(artifact, samples, mode="on", backend="torch")
    assert on["tta"] is True and on["gate"]["adopted"] is True and on["temperature"] == temperature
    for got, want in zip(probs, recalibrated, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    if not verdict.adopted:
        assert "on as asked" in on["gate"]["reason"]


def test_every_image_is_judged_and_only_the_kept_images_maps_are_handed_on(tmp_path) -> None:
    """Judging holds no map (`compare.Comparison`): the decision on all images is the same whichever
    are kept, and the kept ones are exactly what inference computes for them."""
    data = drive_like(tmp_path / "d", n_images=4)
    artifact, samples = load_labelled(tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3), data, None, False)
    full, probs = choose_tta(artifact, samples, backend="torch")
    some, kept = choose_tta(artifact, samples, backend="torch", keep=[3, 1])
    none, nothing = choose_tta(artifact, samples, backend="torch", keep=[])
    assert nothing == [] and len(kept) == 2
    for got, want in zip(kept, (probs[3], probs[1]), strict=True):
        np.testing.assert_array_equal(got, want)
    for summary in (some, none):  # the views' blended mean where not kept: the same up to float rounding
        assert summary["images"] == 4 and summary["tta"] == full["tta"]
        assert summary["gate"]["gain"] == pytest.approx(full["gate"]["gain"], abs=1e-6)
        assert summary["temperature"] == pytest.approx(full["temperature"], rel=1e-4)
        assert summary["ece_tta_mean"] == pytest.approx(full["ece_tta_mean"], abs=1e-5)


def test_past_the_budgets_deadline_tta_stays_off_and_the_plain_predictions_are_handed_on(tmp_path) -> None:
    data = drive_like(tmp_path / "d")
    artifact, samples = load_labelled(tiny_artifact(tmp_path / "m.unetkit", seed=3), data, None, False)
    summary, probs = choose_tta(artifact, samples, backend="torch", deadline=time.monotonic() - 1)
    assert summary["tta"] is False and "ran out after 0 of 3 images" in summary["gate"]["reason"]
    plain = [p for _, p in iter_probabilities(artifact, samples, {"tta": False}, backend="torch", progress=False)]
    assert len(probs) == 3 and all(np.allclose(a, b, atol=1e-6) for a, b in zip(probs, plain, strict=True))


def test_the_stored_choice_is_what_predict_and_evaluate_run_unless_told_otherwise(tmp_path) -> None:
    data = drive_like(tmp_path / "d", n_images=4)
    path = tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3)
    out = tmp_path / "decided.unetkit"
    summary = tune_model_tta(path, data, backend="torch", progress=False, out=out)
    art = load_artifact(out)
    assert art.meta.tta == summary["tta"] and art.meta.metrics["tta"]["gate"] == summary["gate"]
    assert art.meta.tta_temperature == summary["temperature"]  # stored whether or not TTA is on: --tta uses it
    assert load_artifact(path).meta.tta is False  # --out leaves the source as it was

    update_artifact(out, tta=True, tta_temperature=0.7)  # whatever the gate said: the artifact's choice binds inference
    art = load_artifact(out)
    assert tile_config_for(art).tta is True and tile_config_for(art).tta_temperature == 0.7
    plan = inference_plan(art, tile_config_for(art))
    assert tile_config_from_plan(plan).tta_temperature == 0.7  # an export recalibrates as the artifact does
    _, artifact_samples = load_labelled(out, data, None, False)
    own_probs = [p for _, p in iter_probabilities(art, artifact_samples, None, backend="torch", progress=False)]
    raw = [p for _, p in iter_probabilities(load_artifact(path), artifact_samples, {"tta": True}, backend="torch",
                                           progress=False)]
    for got, want in zip(own_probs, raw, strict=True):
        np.testing.assert_allclose(got, sharpen(want, 0.7), atol=1e-5)
    assert tile_config_for(load_artifact(out), {"tta": False}).tta is False  # --no-tta
    own = evaluate_model(out, data, backend="torch", progress=False, distances=False, topology=False)
    forced = evaluate_model(path, data, {"tta": True}, backend="torch", progress=False, distances=False, topology=False)
    plain = evaluate_model(path, data, backend="torch", progress=False, distances=False, topology=False)
    assert own["mean_dice_foreground"] == pytest.approx(forced["mean_dice_foreground"])
    assert own["mean_dice_foreground"] == pytest.approx(summary["dice_tta"])
    assert plain["mean_dice_foreground"] == pytest.approx(summary["dice_plain"])
    with pytest.raises(DataError, match="metric 'f1'"):
        tune_model_tta(path, data, metric="f1", backend="torch", progress=False)
