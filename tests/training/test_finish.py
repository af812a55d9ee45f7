"""The end of a run (training.finish), driven through fit(): calibration and postprocessing tuned
on the validation split, and the drift baseline (training-image inputs, validation outputs)."""

from __future__ import annotations

import pytest

from unetkit.artifact import load_artifact
from unetkit.evaluation.labelled import iter_probabilities, load_labelled
from unetkit.inference.postprocess import apply_postprocess
from unetkit.monitor.baseline import Baseline, outputs_mismatch
from unetkit.monitor.drift import compare
from unetkit.monitor.measure import predict_outputs
from unetkit.training import finish
from unetkit.training.fit import fit
from unetkit.training.prepare import load_training_data
from unetkit.tuning.postprocess import score_labels


def test_fit_tunes_postprocessing_on_the_validation_split_and_stores_it(tiny_config) -> None:
    cfg = tiny_config(tune_postprocess="iou")
    art = load_artifact(fit(cfg))
    record = art.meta.metrics["postprocess_tuning"]
    assert record["metric"] == "iou" and record["postprocess"] == art.meta.postprocess
    assert record["after"] >= record["before"] and record["images"] == len(record["keys"]) >= 1
    # the record is what the saved model and its postprocessing score on those validation images
    _, samples = load_labelled(art, cfg.data.data, record["keys"], progress=False)
    pairs = list(iter_probabilities(art, samples, progress=False))
    labels = [apply_postprocess(p, art.meta.postprocess) for _, p in pairs]
    score = score_labels(labels, [s.labels for s, _ in pairs], art.meta.num_classes, "iou", art.meta.ignore_index)
    assert score == pytest.approx(record["after"], abs=1e-6)
    # calibrated first, on the same images: the tuning saw the calibrated probabilities
    cal = art.meta.metrics["calibration"]
    assert cal["keys"] == record["keys"] and art.meta.temperature == pytest.approx(cal["temperature"])
    assert art.meta.temperature != 1.0 and cal["nll_after"] <= cal["nll_before"] + 1e-9
    off = load_artifact(fit(tiny_config("off", tune_postprocess="off", calibrate=False)))
    assert "postprocess_tuning" not in off.meta.metrics and off.meta.postprocess == {}
    assert "calibration" not in off.meta.metrics and off.meta.temperature == 1.0


def test_postprocess_tuning_holds_a_bounded_spread_of_the_validation_images(tiny_config, monkeypatch) -> None:
    monkeypatch.setattr(finish, "MAX_TUNE_IMAGES", 1)
    art = load_artifact(fit(tiny_config(tune_postprocess="dice", calibrate=False)))
    record = art.meta.metrics["postprocess_tuning"]
    assert record["images"] == 1 and len(record["keys"]) == 1


def test_fit_stores_a_drift_baseline(tiny_config, capsys) -> None:
    cfg = tiny_config(steps=4, val_every=4)
    art = load_artifact(fit(cfg))
    assert capsys.readouterr().out == ""  # progress=False: the baseline's timing line is not printed either
    baseline = Baseline.from_dict(art.meta.drift_baseline)
    data = load_training_data(cfg.data)
    assert baseline.input_images == len(data.train) == 4 and len(data.val) == 2
    assert baseline.output_images == 2 + 4  # the validation images, topped up with training images
    assert baseline.class_names == art.meta.class_names and baseline.channels == 3
    assert outputs_mismatch(baseline, art.meta) is None  # measured with exactly the saved weights
    assert baseline.outputs_of["weights_sha256"] == art.meta.weights_sha256 and baseline.seconds > 0
    names = {r.name for r in baseline.features}
    assert {"sharpness", "intensity.c2", "fraction.class_0", "components.class_3", "entropy"} <= names
    held_out = [s.image for s in data.val] + [s.image for s in data.train]
    measured = [baseline.measure(im, p, lab) for im, (p, lab) in zip(held_out, predict_outputs(art, held_out), strict=True)]
    report = compare(baseline, measured)
    assert {f.source for f in report.features} == {"input", "output"}
    assert all(f.psi < 1e-6 for f in report.features if f.source == "output")  # the same images and model
