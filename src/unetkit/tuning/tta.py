"""Test-time augmentation adopted only when it helps across the validation images.

Averaging the predictions of the flipped and rotated views (`unetkit.inference.predict.tta_views`:
the 8 of the square, or as-is + mirrored for a model trained upright) costs 8 (or 2) predictions
per tile. On DRIVE it bought +0.002-0.003 pooled Dice on the five held-out images of two runs and
+0.0006 on a third; on CamVid +0.003-0.009 on frames of a held-out sequence; on ISBI 2012 it cost
0.0009 Dice (docs/benchmarks.md). So it is a decision per model, made like the
other tuned settings (`unetkit.tuning.gate`): the artifact's `tta` turns on only when the gain of
the views' mean over the plain prediction holds across the validation images (paired bootstrap
lower bound above zero, at least `gate.MIN_IMAGES` images). TTA has no parameter chosen on the
images, so there is nothing to cross-fit: the paired bootstrap judges the one choice.

The mean of calibrated views is less confident than it is right where the views disagree (CamVid:
ECE 0.010 -> 0.026 on a held-out sequence's frames). It is recalibrated as softmax(log(mean) / T)
(`predict.sharpen`, applied by the engine to the blended rows), T fitted on the same images and
adopted only where it holds out of fold (`unetkit.tuning.calibration.recalibrate_samples`, as the
scales' mean is); it moves no arg-max, so the gate's verdict does not depend on it.

`choose_tta` predicts each image once per view (the first view is the plain prediction, the views'
mean what inference with TTA computes), judges every image it is given without holding their
maps (`unetkit.tuning.compare.Comparison`) and hands on the chosen probabilities of the images asked
for: the postprocessing search that follows tunes on what inference will produce, and reuses them.
`tune_model_tta` does the same for a trained artifact on labelled data and stores the choice.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import Artifact
from unetkit.config import TtaMode, replace
from unetkit.data.splits import spread
from unetkit.errors import DataError
from unetkit.evaluation.labelled import load_labelled
from unetkit.inference.backends import make_predictor
from unetkit.inference.files import tile_config_for
from unetkit.inference.predict import iter_view_probabilities, mean_of_maps, predict_tiled, sharpen
from unetkit.metrics.scores import json_value
from unetkit.tuning.compare import Comparison
from unetkit.tuning.gate import GateResult, decide
from unetkit.tuning.postprocess import parts_statistic, require_metric, score_parts
from unetkit.tuning.scales import candidate_resolutions, choose_scales
from unetkit.tuning.store import store_tuning

GAIN_NAME = "gain of the views' mean"
REUSED_MAPS = 32  # `tune_model_tta` holds this many images' TTA-decided maps for multi-scale to reuse (as training
# holds its search's spread): a reduced-resolution model's single scale is predicted again only for the others


def choose_tta(
    artifact: Artifact,
    samples: Sequence[Any],
    *,
    mode: TtaMode = "auto",
    metric: str = "dice",
    backend: str = "auto",
    seed: int = 0,
    deadline: float | None = None,
    keep: Sequence[int] | None = None,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(summary, the probabilities inference will produce for the samples at indices `keep`; None:
    all) for labelled `samples`, every one of which is judged (`compare.Comparison`: no map is held
    but the kept ones).

    The summary's `tta` and `temperature` are what to store: "auto" adopts TTA when its gain holds
    across the images (`gate.decide`, as `gate_tta`), "on" keeps it whatever the gain (the user's
    choice, still measured), and past `deadline` (`time.monotonic()`) "auto" stops predicting and
    keeps it off. The views' mean of calibrated views is less confident than it is right:
    `temperature` recalibrates it (`calibration.recalibrate_samples`, adopted only where it holds out
    of fold), fitted whether or not TTA is adopted, since a user may still ask for TTA (`--tta`). The
    summary also has the scores (`metric` and pooled Dice, plain and TTA), the ECE of both (TTA's after
    recalibration; `ece_tta_mean` before), the views and the seconds the views took.

    The kept images are predicted as inference predicts them, plainly and with TTA (one pass more
    than the views); every other image once per view (`iter_view_probabilities`), the first view being
    the plain prediction and the blended views' mean what inference with TTA computes up to float
    rounding (blending is linear), so judging it costs the views' passes and no more."""
    # single-scale (`choose_scales` follows); the views' raw mean, whose temperature is fitted below
    tile = replace(tile_config_for(artifact, {"tta": True}), resolutions=(), tta_temperature=1.0)
    predictor = make_predictor(artifact, backend=backend)
    kept = list(range(len(samples))) if keep is None else list(keep)
    wanted = set(kept)
    judged = Comparison(("plain", "tta"), artifact.meta.num_classes, metric=metric,
                        ignore_index=artifact.meta.ignore_index, images=len(samples), seed=seed)
    held: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    t0 = time.perf_counter()
    for i, sample in enumerate(samples):
        if mode == "auto" and deadline is not None and time.monotonic() > deadline:
            verdict = GateResult(False, float("nan"), float("nan"), len(samples),
                                 f"TTA: not measured, the budget's time ran out after {i} of "
                                 f"{len(samples)} images; kept off")
            plain = [held[j][0] if j in held else predict_tiled(predictor, samples[j].image, replace(tile, tta=False))
                     for j in kept]
            return _summary(False, verdict, tile.tta_views, metric, t0), plain
        if i in wanted:  # handed on: exactly what inference computes, plain and with TTA
            plain = predict_tiled(predictor, sample.image, replace(tile, tta=False))
            mean = predict_tiled(predictor, sample.image, tile)
            held[i] = (plain, mean)
        else:  # judged only: one pass per view, the first the plain prediction
            views = iter_view_probabilities(predictor, sample.image, tile)
            first = next(views)
            plain = first.copy()
            mean = mean_of_maps(itertools.chain([first], views))
        judged.add(plain, mean, sample.labels)
    verdict, scores, recalibration = judged.decide(mode=mode, what="TTA", gain_name=GAIN_NAME,
                                                   recalibrating="recalibrating the views' mean")
    temperature = recalibration["temperature"]
    summary = _summary(verdict.adopted, verdict, tile.tta_views, metric, t0, temperature)
    summary |= {"fitted_temperature": recalibration["fitted_temperature"],
                "recalibration_gate": recalibration["gate"], "ece_tta_mean": recalibration["ece_mean"]}
    # what inference computes with the stored temperature (`iter_probability_rows` sharpens the blended rows)
    chosen = [sharpen(held[j][1], temperature) if verdict.adopted else held[j][0] for j in kept]
    return summary | scores | {"images": len(samples)}, chosen


def gate_tta(plain: Sequence[np.ndarray], tta: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
             *, metric: str = "dice", ignore_index: int = 255, seed: int = 0) -> GateResult:
    """Whether TTA's probabilities (`tta`) beat the plain ones across the images: arg-max labels of
    each scored per image for `metric`, the pooled gain judged by `gate.decide`."""
    require_metric(metric)
    before = score_parts([p.argmax(0) for p in plain], truths, num_classes, metric, ignore_index)
    after = score_parts([p.argmax(0) for p in tta], truths, num_classes, metric, ignore_index)
    return decide(before, after, parts_statistic(num_classes, metric), what="TTA", seed=seed, gain_name=GAIN_NAME)


def tune_model_tta(
    model: str | Path,
    data: str | Path,
    *,
    keys: Sequence[str] | None = None,
    metric: str = "dice",
    out: str | Path | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Decide TTA for a trained artifact on labelled data (`choose_tta`, "auto"), then, for a model
    trained at reduced resolution, multi-scale inference on top of it (`scales.choose_scales`), and
    store both in the artifact's `tta` and `resolutions` (in place, or in a copy at `out`), the records
    in its metrics' "tta" and "multiscale" (the latter also returned, as "multiscale")."""
    require_metric(metric)
    artifact, samples = load_labelled(model, data, keys, progress)
    if not samples:
        raise DataError(f"{data}: no labelled images to decide TTA on")
    # every image judged; the single-scale maps of an even spread of at most REUSED_MAPS held for the scales to reuse
    # (bounded memory however many images), the others predicted again there
    reused = spread(range(len(samples)), REUSED_MAPS) if candidate_resolutions(artifact.meta.resolution) else []
    summary, probs = choose_tta(artifact, samples, metric=metric, backend=backend, keep=reused)
    decided = dataclasses.replace(artifact, meta=dataclasses.replace(artifact.meta, tta=summary["tta"],
                                                                     tta_temperature=summary["temperature"]))
    scales, _ = choose_scales(decided, samples, dict(zip(reused, probs, strict=True)), metric=metric, backend=backend,
                              keep=[])
    where = {"data": str(data), "keys": list(keys or [])}
    summary, scales = json_value(summary | where), json_value(scales | where)
    target = store_tuning(artifact, out, {"tta": summary, "multiscale": scales}, tta=summary["tta"],
                          tta_temperature=summary["temperature"],
                          resolutions=tuple(scales["resolutions"]), resolutions_temperature=scales["temperature"])
    return summary | {"multiscale": scales, "artifact": str(target)}


def _summary(adopted: bool, verdict: GateResult, views: str, metric: str, t0: float,
             temperature: float = 1.0) -> dict[str, Any]:
    return {"tta": adopted, "temperature": temperature, "views": views, "metric": metric, "gate": verdict.to_dict(),
            "seconds": round(time.perf_counter() - t0, 2)}
