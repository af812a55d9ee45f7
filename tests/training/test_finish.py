"""The end of a run (training.finish), driven through fit(): calibration and postprocessing tuned
on the validation split, and the drift baseline (training-image inputs, validation outputs)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from unetkit.artifact import ValidationSample, load_artifact
from unetkit.data.dataset import LoadedSample
from unetkit.evaluation.labelled import iter_probabilities, load_labelled
from unetkit.inference.postprocess import apply_postprocess
from unetkit.monitor.baseline import Baseline, outputs_mismatch
from unetkit.monitor.drift import compare
from unetkit.monitor.measure import predict_outputs
from unetkit.training import finish
from unetkit.training.fit import fit
from unetkit.training.prepare import load_training_data
from unetkit.tuning import gate
from unetkit.tuning.postprocess import score_labels


def test_fit_tunes_postprocessing_on_the_validation_split_and_stores_it(tiny_config, monkeypatch) -> None:
    monkeypatch.setattr(gate, "MIN_IMAGES", 2)  # the tiny data set validates on 2 images
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
    assert cal["gate"]["images"] == 2 and np.isfinite(cal["gate"]["gain"])  # judged, out of fold
    # stored only when the gate adopts it; the record says which
    assert (art.meta.temperature != 1.0) == cal["gate"]["adopted"]
    assert art.meta.temperature == (pytest.approx(cal["fitted_temperature"]) if cal["gate"]["adopted"] else 1.0)
    assert record["postprocess"] == (record["tuned"] if record["gate"]["adopted"] else {})
    # TTA decided between the two on the same images; the search tuned what inference produces
    # (the record's "before" is arg-max of the chosen probabilities), which evaluation re-predicted above
    tta = art.meta.metrics["tta"]
    assert tta["keys"] == record["keys"] and art.meta.tta == tta["tta"] == tta["gate"]["adopted"]
    assert record["before"] == pytest.approx(tta["iou_tta" if art.meta.tta else "iou_plain"], abs=1e-6)
    off = load_artifact(fit(tiny_config("off", tune_postprocess="off", calibrate=False, tta="off")))
    assert "postprocess_tuning" not in off.meta.metrics and off.meta.postprocess == {}
    assert "calibration" not in off.meta.metrics and off.meta.temperature == 1.0
    assert "tta" not in off.meta.metrics and off.meta.tta is False


def test_too_few_validation_images_keep_the_defaults_and_the_artifact_says_why(tiny_config) -> None:
    art = load_artifact(fit(tiny_config(tune_postprocess="dice")))  # 2 validation images < gate.MIN_IMAGES
    cal, record = art.meta.metrics["calibration"], art.meta.metrics["postprocess_tuning"]
    assert art.meta.temperature == 1.0 and art.meta.postprocess == {} and record["after"] == record["before"]
    for verdict in (cal["gate"], record["gate"]):
        assert verdict["adopted"] is False and verdict["images"] == 2 and verdict["min_images"] == gate.MIN_IMAGES
    assert f"fewer than the {gate.MIN_IMAGES}" in cal["gate"]["reason"]
    assert cal["fitted_temperature"] > 0  # what was fitted is still recorded


def test_postprocess_tuning_holds_a_bounded_spread_of_the_validation_images(tiny_config, monkeypatch) -> None:
    """The search holds the maps of at most `MAX_TUNE_IMAGES` images; TTA and multi-scale, which hold
    none (`tuning.compare`), are judged on every validation image."""
    monkeypatch.setattr(finish, "MAX_TUNE_IMAGES", 1)
    cfg = tiny_config(tune_postprocess="dice", calibrate=False)
    cfg = replace(cfg, data=replace(cfg.data, resolution=0.75, patch_size=(24, 24)))
    art = load_artifact(fit(cfg))
    record = art.meta.metrics["postprocess_tuning"]
    assert record["images"] == 1 and len(record["keys"]) == 1
    for decided in (art.meta.metrics["tta"], art.meta.metrics["multiscale"]):
        assert decided["images"] == 2 and decided["gate"]["images"] == 2 and len(decided["keys"]) == 2
        assert record["keys"][0] in decided["keys"]


def test_the_reserve_counts_judging_every_validation_image_and_searching_a_spread() -> None:
    from unetkit.config import AugmentConfig, DataConfig, TrainConfig
    from unetkit.training.finish import MAX_TUNE_IMAGES, finish_validations
    from unetkit.tuning.scales import extra_passes

    upright = AugmentConfig(flip_vertical=False)  # TTA's views: as is + mirrored
    n = 4 * MAX_TUNE_IMAGES
    held = MAX_TUNE_IMAGES / n
    # the two views of every image, and the plain pass of the spread the search holds
    tta = TrainConfig(tune_postprocess="off", calibrate=False, augment=upright)
    assert finish_validations(tta, n) == pytest.approx(2 + held + _mean_fit(n))
    # + both views at the two other resolutions of every image, and at its own where TTA's were not held
    scales = replace(tta, data=DataConfig(resolution=0.75))
    assert finish_validations(scales, n) == pytest.approx(2 + held + 2 * extra_passes(0.75) + 2 * (1 - held)
                                                          + 2 * _mean_fit(n))


def test_the_end_of_run_search_runs_under_the_configured_dice_guard(tiny_config, tmp_path) -> None:
    from unetkit.errors import ConfigError
    from unetkit.tuning.postprocess import RAND_DICE_GUARD

    plain = dict(tune_postprocess="rand", calibrate=False, tta="off")
    default = load_artifact(fit(tiny_config("default", **plain))).meta.metrics["postprocess_tuning"]
    loose = load_artifact(fit(tiny_config("loose", postprocess_dice_guard=0.05, **plain))).meta.metrics["postprocess_tuning"]
    assert default["dice_guard"] == RAND_DICE_GUARD and loose["dice_guard"] == 0.05
    with pytest.raises(ConfigError, match=r"^postprocess_dice_guard -0.1: expected a number >= 0"):
        fit(tiny_config("bad", postprocess_dice_guard=-0.1))
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_fit_stores_a_drift_baseline_and_a_validation_sample(tiny_config, capsys) -> None:
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
    # the validation sample for the parity gate: labelled crops of the validation images, raw units, bounded
    sample = art.meta.sample()
    assert sample is not None and set(sample.keys) == {s.key for s in data.val}
    assert sample.images.dtype == np.uint8 and sample.images.shape == (2, 3, 32, 32) and sample.labels.dtype == np.uint8
    assert art.meta.validation_sample["bytes"] <= finish.SAMPLE_BYTES
    for key, (y, x), image, labels in zip(sample.keys, sample.origins, sample.images, sample.labels, strict=True):
        source = next(s for s in data.val if s.key == key)
        assert np.array_equal(image, source.image[:, y : y + 32, x : x + 32])
        assert np.array_equal(labels, source.labels[y : y + 32, x : x + 32]) and (labels % 255 > 0).any()


def test_the_drift_baseline_reuses_the_validation_probabilities_and_stops_at_the_budgets_end(tiny_config,
                                                                                           monkeypatch) -> None:
    """The end of training hands the validation images' probabilities (as the artifact predicts them,
    TTA included) to the baseline, which predicts only the training top-up, and none past its deadline:
    a model that predicts with TTA costs up to 8x a pass per image, more than the end reserve holds."""
    import time

    from unetkit.monitor import measure

    cfg = tiny_config(steps=4, val_every=4, tta="on")
    art = load_artifact(fit(cfg))
    assert art.meta.tta is True and art.meta.drift_baseline["outputs_of"]["tta"] is True
    data = load_training_data(cfg.data)
    predicted = {s.key: p for s, p in iter_probabilities(art, data.val, progress=False)}
    calls = []
    real = measure.predict_tiled
    monkeypatch.setattr(measure, "predict_tiled", lambda *a, **k: calls.append(a[2].tta) or real(*a, **k))
    reused = measure.training_baseline(art.state_dict, art.meta, data.train, data.val, predicted=predicted)
    assert calls == [True] * 4  # the 4 training images of the top-up, with the model's TTA
    calls.clear()
    fresh = measure.training_baseline(art.state_dict, art.meta, data.train, data.val)
    assert len(calls) == 6 and reused["features"] == fresh["features"]  # the same outputs either way
    calls.clear()
    late = Baseline.from_dict(measure.training_baseline(art.state_dict, art.meta, data.train, data.val,
                                                        predicted=predicted, deadline=time.monotonic() - 1))
    assert calls == [] and late.output_images == len(data.val) == 2


def test_validation_sample_is_bounded_and_picks_foreground() -> None:
    rng = np.random.default_rng(0)
    val = []
    for i in range(6):
        labels = np.zeros((300, 200), np.uint8)
        labels[200:260, 120:190] = 1 + i % 2
        labels[:5] = 255
        val.append(LoadedSample(f"k{i}", rng.uniform(0, 4000, (3, 300, 200)).round().astype(np.float32), labels))
    sample = finish.validation_sample(val, (256, 256), max_bytes=100_000)
    n, c, h, w = sample.images.shape
    assert sample.images.dtype == np.uint16 and n * h * w * (c * 2 + 1) <= 100_000 and n == 4 and h % 16 == 0
    assert all(lab.mean() > 0.5 for lab in sample.labels)  # where the foreground is
    back = ValidationSample.from_dict(sample.to_dict())
    assert np.array_equal(back.images, sample.images) and back.origins == sample.origins and back.fp32_labels is None
    assert finish.validation_sample([], (32, 32)) is None
    floats = finish.validation_sample([LoadedSample("f", val[0].image / 7, val[0].labels)], (64, 64))
    assert floats.images.dtype == np.float16 and floats.images.shape == (1, 3, 64, 64)


def test_a_half_resolution_models_sample_is_cut_from_the_images_it_sees() -> None:
    """The parity gate feeds the sample to the network as it is: at a model's reduced resolution the
    crops come from the resampled images (integer units stay integers), not from the native ones."""
    from unetkit.data.resample import resample_image, resample_labels

    rng = np.random.default_rng(1)
    labels = np.zeros((120, 160), np.uint8)
    labels[60:100, 100:150] = 1
    image = rng.integers(0, 256, (3, 120, 160)).astype(np.float32)
    half = finish.validation_sample([LoadedSample("k", image, labels)], (64, 64), resolution=0.5)
    assert half.images.dtype == np.uint8 and half.images.shape == (1, 3, 60, 64)  # the 60x80 image's side caps it
    (y, x), = half.origins
    small = resample_image(image, 0.5)
    assert np.abs(half.images[0].astype(np.float32) - small[:, y : y + 60, x : x + 64]).max() <= 0.5
    assert np.array_equal(half.labels[0], resample_labels(labels, 0.5)[y : y + 60, x : x + 64])
    assert half.labels[0].sum() == resample_labels(labels, 0.5).sum() > 0  # all of the foreground, as at native


def test_a_rand_search_is_reserved_in_timed_seconds_not_in_validation_passes(monkeypatch) -> None:
    """The adapted Rand search's trials (watershed, components) cost the same however fast the network:
    counted in validation passes, a w8 d4 model's reserve ran out after 32 of ISBI 2012's trials."""
    from unetkit.config import TrainConfig
    from unetkit.training import finish
    from unetkit.tuning.postprocess import label_probabilities

    dice, rand = TrainConfig(tune_postprocess="dice"), TrainConfig(tune_postprocess="rand")
    # the search's passes: dice's 1 per search (the search and 5 out-of-fold re-runs), none for rand
    assert finish.finish_validations(rand, 5) == pytest.approx(finish.finish_validations(dice, 5) - 6.0)
    assert finish.finish_validations(TrainConfig(tune_postprocess="off", calibrate=False, tta="off"), 5) == 0.0
    rng = np.random.default_rng(0)
    val = [SimpleNamespace(key=str(i), labels=rng.integers(0, 2, (40, 30 + 10 * i))) for i in range(5)]
    calls = []

    def timed(probs, truth, pixels, metric, *, ignore_index, folds):
        calls.append((probs, truth, pixels, metric, folds))
        return 7.0

    monkeypatch.setattr(finish, "search_seconds", timed)
    assert finish.end_seconds(dice, val, 2) == 0.0 and not calls
    assert finish.end_seconds(rand, val, 2) == 7.0
    probs, truth, pixels, metric, folds = calls[-1]
    assert truth is val[0].labels and np.array_equal(probs, label_probabilities(val[0].labels, 2))
    assert pixels == sum(s.labels.size for s in val) and metric == "rand" and folds == 5
    model_probs = rng.random((2, 40, 30), dtype=np.float32)
    finish.end_seconds(rand, val, 2, model_probs)
    assert calls[-1][0] is model_probs  # a model's probabilities of the first image, when there are some
    assert finish.end_seconds(rand, val[:2], 2) == 7.0 and calls[-1][4] == 0  # too few images for the gate


def _mean_fit(images: int = 5) -> float:
    """What recalibrating a mean of predictions reserves: a temperature fit and the gate's refits (5 folds)."""
    from unetkit.training.finish import CALIBRATE_VALIDATIONS, GATE_FIT_VALIDATIONS

    return CALIBRATE_VALIDATIONS - 1.0 + GATE_FIT_VALIDATIONS * min(images, 5)


def test_deciding_tta_reserves_one_pass_per_view_which_the_search_then_reuses() -> None:
    from unetkit.config import AugmentConfig, TrainConfig
    from unetkit.training.finish import finish_validations

    off = finish_validations(TrainConfig(tune_postprocess="dice", tta="off"), 5)
    # the plain pass and 8 views, the plain pass being the search's own, and the views' mean recalibrated
    assert finish_validations(TrainConfig(tune_postprocess="dice"), 5) == pytest.approx(off + 8 + _mean_fit())
    upright = TrainConfig(tune_postprocess="off", calibrate=False, augment=AugmentConfig(flip_vertical=False))
    assert finish_validations(upright, 5) == pytest.approx(3.0 + _mean_fit())  # plain, then as is + mirrored


def test_deciding_multi_scale_reserves_the_other_two_resolutions_views_included() -> None:
    from unetkit.config import AugmentConfig, DataConfig, TrainConfig
    from unetkit.training.finish import finish_validations
    from unetkit.tuning.scales import extra_passes

    upright = AugmentConfig(flip_vertical=False)  # TTA's views: as is + mirrored
    native = TrainConfig(tune_postprocess="dice", augment=upright)
    reduced = TrainConfig(tune_postprocess="dice", augment=upright, data=DataConfig(resolution=0.75))
    assert finish_validations(reduced, 5) == pytest.approx(finish_validations(native, 5) + 2 * extra_passes(0.75)
                                                           + _mean_fit())  # and the scales' mean recalibrated
    assert finish_validations(TrainConfig(tune_postprocess="dice", augment=upright, multiscale="off",
                                          data=DataConfig(resolution=0.75)), 5) == finish_validations(native, 5)
    plain = TrainConfig(tune_postprocess="off", calibrate=False, tta="off", data=DataConfig(resolution=0.75))
    assert finish_validations(plain, 5) == pytest.approx(1 + extra_passes(0.75) + _mean_fit())  # the single pass
    # is its own


def test_fit_at_reduced_resolution_decides_multi_scale_after_tta_and_tunes_what_it_predicts(tiny_config,
                                                                                          monkeypatch) -> None:

    monkeypatch.setattr(gate, "MIN_IMAGES", 2)  # the tiny data set validates on 2 images
    cfg = tiny_config(tune_postprocess="iou", multiscale="on")
    cfg = replace(cfg, data=replace(cfg.data, resolution=0.75, patch_size=(24, 24)))
    art = load_artifact(fit(cfg))
    record, tuning = art.meta.metrics["multiscale"], art.meta.metrics["postprocess_tuning"]
    assert list(art.meta.resolutions) == record["resolutions"] == pytest.approx([0.5, 0.75, 1.0])  # "on" keeps them
    assert record["keys"] == tuning["keys"] == art.meta.metrics["tta"]["keys"] and record["gate"]["images"] == 2
    # the search tuned the probabilities inference now produces: multi-scale, over the adopted views
    assert tuning["before"] == pytest.approx(record["iou_multi"], abs=1e-6)
    _, samples = load_labelled(art, cfg.data.data, record["keys"], progress=False)
    labels = [p.argmax(0) for _, p in iter_probabilities(art, samples, progress=False)]
    score = score_labels(labels, [s.labels for s in samples], art.meta.num_classes, "iou", art.meta.ignore_index)
    assert score == pytest.approx(record["iou_multi"], abs=1e-6)
    native = load_artifact(fit(tiny_config("native", tune_postprocess="off")))
    assert "multiscale" not in native.meta.metrics and native.meta.resolutions == ()
