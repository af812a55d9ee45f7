"""Multi-scale inference adopted only where it helps across images (tuning.scales): the candidates
a model's resolution gives, the choice on a real artifact's predictions, and every inference path
following the stored choice."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from tests.evaluation_fixtures import drive_like, tiny_artifact
from unetkit.artifact import load_artifact, update_artifact
from unetkit.evaluation.evaluate import evaluate_model
from unetkit.evaluation.labelled import iter_probabilities, load_labelled
from unetkit.inference.files import tile_config_for
from unetkit.inference.predict import sharpen
from unetkit.tuning.calibration import recalibrate_mean
from unetkit.tuning.gate import decide
from unetkit.tuning.postprocess import parts_statistic, score_parts
from unetkit.tuning.scales import candidate_resolutions, choose_scales, extra_passes
from unetkit.tuning.tta import tune_model_tta


def _probabilities(artifact, samples, choice) -> list[np.ndarray]:
    return [p for _, p in iter_probabilities(artifact, samples, choice, backend="torch", progress=False)]


def test_a_reduced_resolution_model_is_offered_two_thirds_of_its_resolution_and_the_native_side() -> None:
    assert candidate_resolutions(0.75) == pytest.approx((0.5, 0.75, 1.0))
    assert candidate_resolutions(0.5) == pytest.approx((1 / 3, 0.5, 1.0))
    assert candidate_resolutions(1.0) == ()  # thin structures at native resolution: nothing finer to see
    # deciding costs the two other predictions, in pixels of the model's own
    assert extra_passes(0.75) == pytest.approx((0.5 / 0.75) ** 2 + (1 / 0.75) ** 2)
    assert extra_passes(1.0) == 0.0


def test_choose_scales_scores_the_mean_that_inference_computes(tmp_path) -> None:
    """The multi-scale probabilities are what `--resolutions` predicts; the verdict is the paired
    gate on them against the single-scale ones; "on" keeps the scales whatever the gate says."""
    data = drive_like(tmp_path / "d", n_images=4, size=(60, 56))
    path = tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3, resolution=0.75)
    artifact, samples = load_labelled(path, data, None, False)
    single = _probabilities(artifact, samples, None)
    multi = _probabilities(artifact, samples, {"resolutions": (0.5, 0.75, 1.0)})
    assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(single, multi, strict=True))  # a different prediction

    summary, probs = choose_scales(artifact, samples, single, backend="torch")
    truths = [s.labels for s in samples]
    before, after = (score_parts([p.argmax(0) for p in ps], truths, 2, "dice", 255) for ps in (single, multi))
    verdict = decide(before, after, parts_statistic(2, "dice"), what="multi-scale inference")
    assert summary["gate"]["adopted"] == verdict.adopted and summary["gate"]["gain"] == pytest.approx(verdict.gain)
    assert summary["resolutions"] == (summary["candidates"] if verdict.adopted else [])
    assert summary["dice_multi"] - summary["dice_single"] == pytest.approx(verdict.gain)
    assert summary["images"] == 4 and 0 <= summary["ece_multi"] <= 1
    # the mean recalibrated with the temperature fitted on it where that holds out of fold (stored only with the
    # scales)
    recalibration = recalibrate_mean(multi, truths, 255, what="x")
    temperature = recalibration["temperature"]
    assert summary["fitted_temperature"] == pytest.approx(recalibration["fitted_temperature"])
    assert summary["recalibration_gate"]["adopted"] == recalibration["gate"]["adopted"]
    assert summary["temperature"] == (temperature if verdict.adopted else 1.0)
    recalibrated = [sharpen(p.copy(), temperature) for p in multi]
    for got, want in zip(probs, recalibrated if verdict.adopted else single, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)

    on, probs = choose_scales(artifact, samples, None, mode="on", backend="torch")  # predicts the single itself
    assert on["resolutions"] == pytest.approx([0.5, 0.75, 1.0]) and on["gate"]["adopted"] is True
    assert on["temperature"] == pytest.approx(temperature)
    for got, want in zip(probs, recalibrated, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    if not verdict.adopted:
        assert "on as asked" in on["gate"]["reason"]


def test_every_image_is_judged_from_the_single_scale_maps_given_or_predicted_and_the_kept_are_handed_on(tmp_path):
    data = drive_like(tmp_path / "d", n_images=4, size=(60, 56))
    path = tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3, resolution=0.75)
    artifact, samples = load_labelled(path, data, None, False)
    single = _probabilities(artifact, samples, None)
    full, probs = choose_scales(artifact, samples, single, backend="torch", mode="on")
    # one image's single-scale map given (as `choose_tta` hands on its kept ones), the others predicted here
    part, kept = choose_scales(artifact, samples, {2: single[2]}, backend="torch", mode="on", keep=[2, 0])
    for key in ("dice_single", "dice_multi", "ece_single", "ece_multi", "fitted_temperature"):
        assert part[key] == pytest.approx(full[key], abs=1e-9), key
    assert part["gate"]["gain"] == pytest.approx(full["gate"]["gain"]) and part["images"] == 4
    for got, want in zip(kept, (probs[2], probs[0]), strict=True):
        np.testing.assert_array_equal(got, want)
    off, given = choose_scales(artifact, samples, {2: single[2]}, backend="torch", mode="off", keep=[2])
    assert off["resolutions"] == [] and given[0] is single[2]


def test_tune_tta_decides_the_same_whichever_single_scale_maps_it_holds_for_the_scales(tmp_path, monkeypatch) -> None:
    """`tune-tta` holds at most `REUSED_MAPS` images' TTA-decided maps for multi-scale and predicts the
    others again: the decisions do not depend on how many it held."""
    from unetkit.tuning import tta

    data = drive_like(tmp_path / "d", n_images=4, size=(60, 56))
    path = tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3, resolution=0.75)
    every = tune_model_tta(path, data, backend="torch", progress=False, out=tmp_path / "a.unetkit")
    monkeypatch.setattr(tta, "REUSED_MAPS", 1)
    one = tune_model_tta(path, data, backend="torch", progress=False, out=tmp_path / "b.unetkit")
    for key in ("dice_single", "dice_multi", "ece_single", "fitted_temperature"):
        assert one["multiscale"][key] == pytest.approx(every["multiscale"][key], abs=1e-6), key
    assert one["multiscale"]["gate"]["gain"] == pytest.approx(every["multiscale"]["gate"]["gain"], abs=1e-6)
    assert one["multiscale"]["images"] == every["multiscale"]["images"] == 4 and one["tta"] == every["tta"]


def test_native_models_off_and_past_the_deadline_stay_single_scale_with_their_probabilities(tmp_path) -> None:
    data = drive_like(tmp_path / "d")
    native, samples = load_labelled(tiny_artifact(tmp_path / "n.unetkit", seed=3), data, None, False)
    single = _probabilities(native, samples, None)
    summary, probs = choose_scales(native, samples, single, backend="torch")
    assert summary["resolutions"] == [] and summary["candidates"] == [] and "native resolution" in summary["gate"]["reason"]
    assert all(a is b for a, b in zip(probs, single, strict=True))

    reduced = replace(native, meta=replace(native.meta, resolution=0.5))
    single = _probabilities(reduced, samples, None)
    late, probs = choose_scales(reduced, samples, single, backend="torch", deadline=time.monotonic() - 1)
    assert late["resolutions"] == [] and "ran out after 0 of 3 images" in late["gate"]["reason"]
    assert all(a is b for a, b in zip(probs, single, strict=True))
    off, _ = choose_scales(reduced, samples, single, mode="off", backend="torch")
    assert off["resolutions"] == [] and "multiscale: off" in off["gate"]["reason"]


def test_the_stored_scales_are_what_predict_evaluate_and_export_run_unless_told_otherwise(tmp_path) -> None:
    from unetkit.export.plan import inference_plan, tile_config_from_plan

    data = drive_like(tmp_path / "d", n_images=4, size=(60, 56))
    path = tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3, resolution=0.75)
    out = tmp_path / "decided.unetkit"
    summary = tune_model_tta(path, data, backend="torch", progress=False, out=out)
    scales = summary["multiscale"]
    art = load_artifact(out)
    assert list(art.meta.resolutions) == scales["resolutions"] and art.meta.metrics["multiscale"]["gate"] == scales["gate"]
    assert art.meta.tta == summary["tta"] and load_artifact(path).meta.resolutions == ()

    update_artifact(out, tta=False, resolutions=(0.5, 0.75, 1.0))  # whatever the gate said: the choice binds
    art = load_artifact(out)
    assert tile_config_for(art).resolutions == (0.5, 0.75, 1.0)
    assert tile_config_for(art, {"resolution": 0.75, "resolutions": ()}).resolutions == ()  # --resolutions 0.75
    plan = inference_plan(art, tile_config_for(art))
    assert tile_config_from_plan(plan).resolutions == (0.5, 0.75, 1.0)  # an export runs what the artifact ran
    own = evaluate_model(out, data, backend="torch", progress=False, distances=False, topology=False)
    forced = evaluate_model(path, data, {"resolutions": (0.5, 0.75, 1.0)}, backend="torch", progress=False,
                            distances=False, topology=False)
    single = evaluate_model(path, data, backend="torch", progress=False, distances=False, topology=False)
    assert own["mean_dice_foreground"] == pytest.approx(forced["mean_dice_foreground"])
    if summary["tta"] is False:  # the summary's scores are single-scale and multi-scale without TTA
        assert own["mean_dice_foreground"] == pytest.approx(scales["dice_multi"])
        assert single["mean_dice_foreground"] == pytest.approx(scales["dice_single"])
