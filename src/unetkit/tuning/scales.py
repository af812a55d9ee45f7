"""Multi-scale inference adopted only when it helps across the validation images.

A model trained at reduced resolution (`data.resolution` r < 1: R18, scenes whose objects are
large) sees each image at r of its side. Predicting the image also at 2/3 of that and at the native
side, and averaging the three probability maps on the native grid, lets the model see small objects
larger and large ones whole: on a held-out CamVid sequence it gave +0.010 mIoU (0.4793 against
0.4692 at r = 0.75, docs/benchmarks.md) for 3.2x the inference. Like TTA (`unetkit.tuning.tta`) it
is a decision per model: the artifact's `resolutions` are set only when the gain of the scales' mean
over the single-resolution prediction holds across the validation images (paired bootstrap lower
bound above zero, at least `gate.MIN_IMAGES` images). Nothing the gate judges is chosen on the
images (the resolutions follow from r alone), so the paired bootstrap judges the one choice.

The mean of three calibrated predictions that disagree is less confident than it is right: on two
held-out CamVid sequences it took ECE from 0.006 to 0.031 and from 0.027 to 0.060. So the mean is
recalibrated, softmax(log(mean) / T) (`predict.sharpen`), with T fitted on the same images and
adopted only where it holds out of fold (`unetkit.tuning.calibration.recalibrate_samples`, as
TTA's mean is) and stored beside the resolutions (`resolutions_temperature`); the transform moves no
arg-max, so the gate's verdict is the same with or without it.

A model trained at native resolution (DRIVE, ISBI 2012: thin structures, r = 1) has no finer
scale to see and is not measured: its inference stays single-scale and costs nothing more.

`choose_scales` starts from the probabilities inference produces once TTA is decided (the views,
when adopted, are averaged at every scale, as inference does), predicts each image at the two other
resolutions, judges every image without holding their maps (`unetkit.tuning.compare.Comparison`) and
hands the chosen probabilities of the images asked for on to the postprocessing search.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from unetkit.artifact import Artifact
from unetkit.config import TtaMode
from unetkit.inference.backends import make_predictor
from unetkit.inference.files import tile_config_for
from unetkit.inference.predict import mean_of_maps, predict_tiled, sharpen
from unetkit.tuning.compare import Comparison
from unetkit.tuning.gate import GateResult

LOWER_SCALE = 2 / 3  # the coarser view: this fraction of the model's own resolution


def candidate_resolutions(resolution: float) -> tuple[float, ...]:
    """The resolutions multi-scale inference averages for a model trained at `resolution`: 2/3 of
    it, it, and the native side; () for a model trained at native resolution."""
    if resolution >= 1.0:
        return ()
    return (resolution * LOWER_SCALE, resolution, 1.0)


def extra_passes(resolution: float) -> float:
    """What deciding multi-scale costs beyond the prediction at `resolution`, in such predictions
    (pixels scale with the square of the side)."""
    return sum((r / resolution) ** 2 for r in candidate_resolutions(resolution) if r != resolution)


def choose_scales(
    artifact: Artifact,
    samples: Sequence[Any],
    probabilities: Sequence[np.ndarray] | Mapping[int, np.ndarray] | None = None,
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
    but the kept ones). `probabilities` are the artifact's own single-resolution predictions (its
    tiling and TTA) of all the samples, or of some by index (`choose_tta`'s kept ones); the others are
    predicted here.

    The summary's `resolutions` is what to store (`ArtifactMeta.resolutions`; [] = single-scale):
    "auto" adopts the scales when the gate finds their gain holds, "on" keeps them whatever the gain
    (still measured), "off" and a native-resolution model measure nothing; past `deadline`
    (`time.monotonic()`) "auto" stops and stays single-scale. Also the scores (`metric` and pooled
    Dice, single and multi), the ECE of both and the seconds taken."""
    candidates = candidate_resolutions(float(artifact.meta.resolution))
    t0 = time.perf_counter()
    tile = replace(tile_config_for(artifact), resolutions=())
    known = dict(enumerate(probabilities)) if isinstance(probabilities, Sequence) else dict(probabilities or {})
    kept = list(range(len(samples))) if keep is None else list(keep)
    measured = mode != "off" and bool(candidates)
    # a predictor only for what is predicted here (with backend "auto", building one times the backends)
    needed = measured or any(j not in known for j in kept)
    predictor = make_predictor(artifact, backend=backend) if needed else None

    def single(j: int) -> np.ndarray:
        return known[j] if j in known else predict_tiled(predictor, samples[j].image, tile)

    if not measured:
        why = ("multi-scale inference off (multiscale: off)" if mode == "off" else
               "the model sees images at their native resolution: no finer scale to add; single-scale kept")
        verdict = GateResult(False, float("nan"), float("nan"), len(samples), why)
        return _summary([], candidates, verdict, metric, t0), [single(j) for j in kept]
    judged = Comparison(("single", "multi"), artifact.meta.num_classes, metric=metric,
                        ignore_index=artifact.meta.ignore_index, images=len(samples), seed=seed)
    wanted = set(kept)
    held: dict[int, np.ndarray] = {}
    for i, sample in enumerate(samples):
        if mode == "auto" and deadline is not None and time.monotonic() > deadline:
            verdict = GateResult(False, float("nan"), float("nan"), len(samples),
                                 f"multi-scale inference: not measured, the budget's time ran out after {i} "
                                 f"of {len(samples)} images; single-scale kept")
            return _summary([], candidates, verdict, metric, t0), [single(j) for j in kept]
        own = single(i)
        # `predict_tiled`'s sum, in its order (the same numbers inference computes), reusing the prediction at the
        # model's own resolution; the first map, summed into, is the fresh one at 2/3 of it
        multi = mean_of_maps(own if r == tile.resolution else
                             predict_tiled(predictor, sample.image, replace(tile, resolution=r)) for r in candidates)
        judged.add(own, multi, sample.labels)
        if i in wanted:
            known[i], held[i] = own, multi
    verdict, scores, recalibration = judged.decide(mode=mode, what="multi-scale inference",
                                                   gain_name="gain of the scales' mean",
                                                   recalibrating="recalibrating the scales' mean")
    adopted = verdict.adopted
    temperature = recalibration["temperature"]
    summary = _summary(list(candidates) if adopted else [], candidates, verdict, metric, t0)
    summary |= {"temperature": temperature if adopted else 1.0, "fitted_temperature": recalibration["fitted_temperature"],
                "recalibration_gate": recalibration["gate"], "ece_multi_mean": recalibration["ece_mean"]}
    # what inference computes with the stored temperature
    chosen = [sharpen(held[j], temperature) if adopted else known[j] for j in kept]
    return summary | scores | {"images": len(samples)}, chosen


def _summary(resolutions: list[float], candidates: Sequence[float], verdict: GateResult, metric: str,
             t0: float) -> dict[str, Any]:
    return {"resolutions": resolutions, "candidates": list(candidates), "temperature": 1.0, "metric": metric,
            "gate": verdict.to_dict(), "seconds": round(time.perf_counter() - t0, 2)}
