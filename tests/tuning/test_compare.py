"""Two ways of predicting judged image by image (tuning.compare): what `Comparison` accumulates
without holding the maps equals what the whole maps give."""

from __future__ import annotations

import numpy as np
import pytest

from tests.postprocess_fixtures import probs_from_labels
from unetkit.inference.predict import sharpen
from unetkit.metrics.calibration import pooled_ece
from unetkit.tuning.calibration import recalibrate_mean
from unetkit.tuning.compare import Comparison
from unetkit.tuning.gate import decide
from unetkit.tuning.postprocess import parts_statistic, score_labels, score_parts


def _maps(rng, truths, flip: float, confidence: float) -> list[np.ndarray]:
    out = []
    for t in truths:
        labels = t.copy()
        wrong = rng.random(t.shape) < flip
        labels[wrong] = (labels[wrong] + 1) % 3
        out.append(probs_from_labels(labels, 3, confidence=confidence))
    return out


def test_image_by_image_the_comparison_equals_the_whole_maps_scores_gate_ece_and_recalibration() -> None:
    rng = np.random.default_rng(0)
    truths = [rng.integers(0, 3, (30, 34)).astype(np.uint8) for _ in range(8)]
    for t in truths:
        t[:3] = 255  # ignored pixels take no part
    default = _maps(rng, truths, 0.25, 0.9)  # over-confident and often wrong
    candidate = _maps(rng, truths, 0.1, 0.55)  # a mean: right more often, under-confident
    judged = Comparison(("plain", "tta"), 3, metric="iou", ignore_index=255, images=len(truths), seed=4)
    for d, c, t in zip(default, candidate, truths, strict=True):
        judged.add(d, c, t)
    assert len(judged) == 8
    verdict, scores, recalibration = judged.decide(mode="auto", what="TTA", gain_name="gain", recalibrating="x")

    parts = {name: score_parts([p.argmax(0) for p in maps], truths, 3, "iou", 255)
             for name, maps in (("plain", default), ("tta", candidate))}
    want = decide(parts["plain"], parts["tta"], parts_statistic(3, "iou"), what="TTA", seed=4, gain_name="gain")
    assert verdict.adopted and verdict.gain == pytest.approx(want.gain) and verdict.lower == pytest.approx(want.lower)
    for name, maps in (("plain", default), ("tta", candidate)):
        labels = [p.argmax(0) for p in maps]
        assert scores[f"iou_{name}"] == pytest.approx(score_labels(labels, truths, 3, "iou", 255))
        assert scores[f"dice_{name}"] == pytest.approx(score_labels(labels, truths, 3, "dice", 255))
    assert scores["ece_plain"] == pytest.approx(pooled_ece(default, truths, 255))
    # the candidate's temperature as `recalibrate_mean` fits it on the whole maps (every pixel sampled here),
    # and its ECE after it that of the sharpened maps
    fit = recalibrate_mean(candidate, truths, 255, what="x", seed=4)
    assert recalibration["temperature"] == pytest.approx(fit["temperature"]) and fit["temperature"] < 0.9
    assert recalibration["gate"]["adopted"]
    assert recalibration["ece_mean"] == pytest.approx(pooled_ece(candidate, truths, 255))
    sharpened = [sharpen(p.copy(), fit["temperature"]) for p in candidate]
    assert scores["ece_tta"] == pytest.approx(pooled_ece(sharpened, truths, 255), abs=1e-6)
    assert scores["ece_tta"] < recalibration["ece_mean"]


def test_on_keeps_the_candidate_whatever_the_gate_and_says_so() -> None:
    rng = np.random.default_rng(1)
    truths = [rng.integers(0, 3, (20, 20)).astype(np.uint8) for _ in range(4)]
    good, worse = _maps(rng, truths, 0.05, 0.9), _maps(rng, truths, 0.4, 0.9)
    judged = Comparison(("single", "multi"), 3, metric="dice", ignore_index=255, images=4)
    for d, c, t in zip(good, worse, truths, strict=True):
        judged.add(d, c, t)
    auto, _, _ = judged.decide(mode="auto", what="multi-scale", gain_name="g", recalibrating="x")
    on, scores, _ = judged.decide(mode="on", what="multi-scale", gain_name="g", recalibrating="x")
    assert not auto.adopted and on.adopted and "on as asked" in on.reason and scores["dice_multi"] < scores["dice_single"]
