"""Temperature and vector scaling fitted on logits and stored in artifacts (unetkit.tuning.calibration)."""

import numpy as np
import pytest

from tests.evaluation_fixtures import TINY, drive_like, tiny_artifact
from unetkit.artifact import ArtifactMeta, load_artifact
from unetkit.config import TileConfig
from unetkit.errors import DataError
from unetkit.evaluation.labelled import load_labelled
from unetkit.inference.backends import make_predictor
from unetkit.inference.predict import predict_tiled, sharpen
from unetkit.metrics.calibration import pooled_ece
from unetkit.tuning.calibration import calibrate_model, fit_calibration, recalibrate_mean, sample_pixels

META = ArtifactMeta(model=TINY, class_names=("a", "b"), mean=(0.0,) * 3, std=(1.0,) * 3, patch_size=(32, 32))


def overconfident(rng, n=200_000, right=0.8, scale=5.0):
    """Logits (n, 2) that pick the true class 80 % of the time: calibrated margins (log 4) x5."""
    y = rng.integers(0, 2, n)
    picked = np.where(rng.random(n) < right, y, 1 - y)
    margin = scale * np.log(right / (1 - right)) * (1.0 + 0.1 * rng.standard_normal(n))
    z = np.zeros((n, 2), np.float32)
    z[np.arange(n), picked] = margin
    return z, y


def test_temperature_fixes_an_overconfident_model(rng):
    z, y = overconfident(rng)
    fit = fit_calibration(z, y, META)
    before, after = fit["before"], fit["after"]
    assert before["ece"] > 0.15  # confidence ~0.99, accuracy 0.8
    assert after["ece"] < 0.02 and after["nll"] < before["nll"]
    assert fit["fields"]["temperature"] == pytest.approx(5.0, rel=0.1) and fit["fields"]["class_scale"] == ()
    vec = fit_calibration(z, y, META, vector=True)
    assert vec["fields"]["temperature"] == 1.0 and len(vec["fields"]["class_scale"]) == 2
    assert vec["after"]["ece"] < 0.02


def test_before_uses_the_stored_calibration(rng):
    z, y = overconfident(rng, n=50_000)
    already = fit_calibration(z, y, META)["fields"]["temperature"]
    meta = META.__class__(**{**META.__dict__, "temperature": already})
    assert fit_calibration(z, y, meta)["before"]["ece"] < 0.02


def test_sample_pixels_honours_ignore_and_budget(rng):
    labels = np.full((20, 30), 255, np.uint8)
    labels[5:15, 5:25] = rng.integers(0, 2, (10, 20))
    logits = rng.normal(size=(2, 20, 30)).astype(np.float32)
    z, y = sample_pixels(logits, labels, 50, rng)
    assert z.shape == (50, 2) and set(np.unique(y)) <= {0, 1}
    z, y = sample_pixels(logits, labels, 10_000, rng)
    assert len(y) == 200  # every valid pixel, none ignored
    rows, cols = np.nonzero(labels != 255)
    np.testing.assert_array_equal(z[:, 1], logits[1, rows, cols])


def test_calibrate_model_stores_temperature_used_by_prediction(tmp_path):
    data = drive_like(tmp_path / "d")
    src = tiny_artifact(tmp_path / "m.unetkit", constant_logits=(5.0, 0.0))  # "background" everywhere, p=0.993
    copy = tmp_path / "calibrated.unetkit"
    summary = calibrate_model(src, data, out=copy, backend="torch", progress=False, max_pixels=3000)
    assert summary["pixels"] == 3000 and summary["images"] == 3
    assert summary["ece_before"] > 0.04 and summary["ece_after"] < 0.005
    assert summary["nll_after"] < summary["nll_before"]
    assert load_artifact(src).meta.temperature == 1.0  # the source is untouched
    art = load_artifact(copy)
    assert art.meta.temperature == pytest.approx(summary["temperature"]) and art.meta.temperature > 1.5
    assert art.meta.metrics["calibration"]["ece_after"] == pytest.approx(summary["ece_after"])
    # every later prediction uses it: P(background) now matches the background frequency in the ROI
    _, samples = load_labelled(art, data, progress=False)
    labels = np.concatenate([s.labels[s.labels != 255] for s in samples])
    probs = predict_tiled(make_predictor(art, backend="torch"), samples[0].image, TileConfig(tile_size=(32, 32)))
    assert probs[0].mean() == pytest.approx((labels == 0).mean(), abs=0.01)


def test_calibrate_vector_in_place(tmp_path):
    data = drive_like(tmp_path / "d")
    path = tiny_artifact(tmp_path / "m.unetkit", head_scale=4.0)
    summary = calibrate_model(path, data, vector=True, backend="torch", progress=False)
    meta = load_artifact(path).meta
    assert summary["method"] == "vector" and len(meta.class_scale) == 2 and meta.temperature == 1.0
    assert summary["nll_after"] <= summary["nll_before"] + 1e-9


def test_calibrate_refuses_data_without_labels(tmp_path):
    from PIL import Image

    data = drive_like(tmp_path / "d", n_images=2)
    for roi in (data / "mask").glob("*.gif"):
        Image.fromarray(np.zeros((48, 44), np.uint8)).save(roi)  # empty field of view
    path = tiny_artifact(tmp_path / "m.unetkit")
    with pytest.raises(DataError, match="no labelled pixel"):
        calibrate_model(path, data, backend="torch", progress=False)


def _underconfident_means(rng, n_images=4):
    """Pixels right 90 % of the time whose mean (of views or scales) gives the chosen class 0.6."""
    truths = [rng.integers(0, 3, (40, 40)).astype(np.uint8) for _ in range(n_images)]
    for t in truths:
        t[:2] = 255  # ignored rows play no part
    means = []
    for t in truths:
        chosen = np.where(rng.random(t.shape) < 0.9, t, (t + 1) % 3) % 3
        p = np.full((3, *t.shape), 0.2, np.float32)
        np.put_along_axis(p, chosen[None].astype(np.int64), 0.6, axis=0)
        means.append(p)
    return means, truths


def test_an_underconfident_mean_is_sharpened_back_to_calibrated_without_moving_a_label(rng) -> None:
    """T < 1 brings the confidence to the accuracy, adopted out of fold; a calibrated input keeps T
    at 1 (or within a hair of it)."""
    means, truths = _underconfident_means(rng)
    fit = recalibrate_mean(means, truths, 255, what="recalibrating the views' mean")
    temperature = fit["temperature"]
    assert fit["gate"]["adopted"] and temperature == fit["fitted_temperature"] < 0.6
    assert "out-of-fold fall in ECE" in fit["gate"]["reason"] and fit["gate"]["gain"] > 0.2  # judged by ECE
    sharpened = [sharpen(p.copy(), temperature) for p in means]
    assert pooled_ece(sharpened, truths, 255) < 0.02 < 0.25 < pooled_ece(means, truths, 255)
    assert all((a.argmax(0) == b.argmax(0)).all() for a, b in zip(sharpened, means, strict=True))
    np.testing.assert_allclose(sharpened[0].sum(0), 1.0, atol=1e-5)
    again = recalibrate_mean(sharpened, truths, 255, what="x")
    assert again["fitted_temperature"] == pytest.approx(1.0, abs=0.02)
    assert again["temperature"] == pytest.approx(1.0, abs=0.02)
    assert sharpen(means[0], 1.0) is means[0]  # T = 1: as they are


def test_a_mean_on_too_few_images_or_with_no_labelled_pixel_keeps_temperature_one(rng) -> None:
    means, truths = _underconfident_means(rng, n_images=2)
    fit = recalibrate_mean(means, truths, 255, what="recalibrating the views' mean")
    assert fit["temperature"] == 1.0 and fit["fitted_temperature"] < 0.6  # measured, not adopted
    assert "fewer than the 3" in fit["gate"]["reason"] and "recalibrating the views' mean" in fit["gate"]["reason"]
    blank = [np.full_like(t, 255) for t in truths]
    assert recalibrate_mean(means, blank, 255, what="x")["temperature"] == 1.0
