"""Postprocessing chosen on labelled data: a greedy search kept only where it strictly helps.

`tune_postprocess` chooses the ops of a `PostprocessConfig` (applied by
`unetkit.inference.postprocess.apply_postprocess`) greedily on validation data: each candidate is
kept only when it strictly improves the chosen metric, so the tuned result is never worse than
arg-max on the data it was tuned on. Metrics: pooled foreground Dice or IoU, or "rand" (1 - the
adapted Rand error of each foreground class's connected components, mean over images: an object
score for cells separated by membranes). Tuning for "rand" adds the watershed split and guards the
pixels: a trial that lowers the pooled Dice by more than `RAND_DICE_GUARD` is not admissible.

Never worse on the tuning images is not never worse on new ones: `gate_postprocess` re-runs the
search out of fold and adopts the result only when its gain holds across images
(`unetkit.tuning.gate`: paired bootstrap, at least `MIN_IMAGES` images); otherwise plain arg-max
stays and the summary's `gate` says why. With a `deadline` (training's budget) a search that has
not finished by then stops, and plain arg-max stays: on many classes the search is long (11 classes,
~110 trials, again per fold: 10+ minutes on 32 CamVid frames), and a budget is a promise.
`tune_model_postprocess` predicts labelled data with an
artifact, tunes, gates, and stores the result in the artifact's `postprocess`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import Artifact
from unetkit.config import POSTPROCESS_METRICS, PostprocessConfig, TileChoice, to_dict
from unetkit.errors import ConfigError, DataError
from unetkit.evaluation.labelled import iter_probabilities, load_labelled
from unetkit.inference.postprocess import acts_on, apply_postprocess, clean_class, same_below
from unetkit.metrics.confusion import confusion_matrix
from unetkit.metrics.scores import json_value, nan_mean, per_class_dice, per_class_iou
from unetkit.metrics.topology import adapted_rand_error
from unetkit.tuning.gate import GateResult, decide, fold_indices, not_needed, too_few
from unetkit.tuning.store import store_tuning

RAND_DICE_GUARD = 0.005  # "rand" tuning may give up at most this much pooled Dice
DEFAULT_BAND = 3  # watershed_band when a tuning trial switches the split on
DEFAULT_MIN_SEED = 10  # watershed_min_seed (px) when a tuning trial switches the split on


class OutOfTime(Exception):
    """The search passed its deadline after `trials` scored trials."""

    def __init__(self, trials: int) -> None:
        super().__init__(f"out of time after {trials} trials")
        self.trials = trials


def score_labels(
    predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
    metric: str = "dice", ignore_index: int = 255,
) -> float:
    """Pooled (micro) foreground mean Dice or IoU over images (all classes when K == 1); for
    "rand", 1 - the adapted Rand error of each foreground class's 4-connected components (truth
    pixels of other classes and ignored pixels not scored), mean over images and classes."""
    parts = score_parts(predictions, truths, num_classes, metric, ignore_index)
    return parts_statistic(num_classes, metric)(parts.sum(0))


def score_parts(
    predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray], num_classes: int,
    metric: str = "dice", ignore_index: int = 255,
) -> np.ndarray:
    """(n images, d) what each image adds to the pooled score: its flattened confusion matrix
    (Dice, IoU), or [sum of its classes' Rand scores, their count] ("rand"). `parts_statistic`
    turns a sum of rows into the score (what the gate's bootstrap resamples)."""
    if metric not in POSTPROCESS_METRICS:
        raise ConfigError(f"metric '{metric}': expected one of {list(POSTPROCESS_METRICS)}")
    rows = []
    for p, t in zip(predictions, truths, strict=True):
        if metric == "rand":
            scores = rand_scores(p, t, num_classes, ignore_index)
            rows.append([float(np.sum(scores)), float(len(scores))])
        else:
            rows.append(np.asarray(confusion_matrix(p, t, num_classes, ignore_index), np.float64).ravel())
    return np.asarray(rows, np.float64).reshape(len(rows), -1)


def parts_statistic(num_classes: int, metric: str = "dice"):
    """Pooled parts (see `score_parts`) -> the score; 0 where nothing is scored."""
    def statistic(pooled: np.ndarray) -> float:
        if metric == "rand":
            return float(pooled[0] / pooled[1]) if pooled[1] > 0 else 0.0
        cm = pooled.reshape(num_classes, num_classes)
        scores = (per_class_dice if metric == "dice" else per_class_iou)(cm)
        value = nan_mean(scores[1:] if num_classes > 1 else scores)
        return float(value) if np.isfinite(value) else 0.0
    return statistic


def rand_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore_index: int = 255) -> list[float]:
    """1 - adapted Rand error of each foreground class of one image (classes without a finite error left out)."""
    valid = truth != ignore_index
    scores = []
    for c in range(1 if num_classes > 1 else 0, num_classes):
        error = adapted_rand_error(pred == c, truth == c, valid)[0]
        if np.isfinite(error):
            scores.append(1.0 - error)
    return scores


def candidate_steps(num_classes: int, size_grid: Sequence[int] = (5, 10, 20, 50, 100, 200, 500, 1000),
                    metric: str = "dice") -> list[tuple[str, int, list[Any]]]:
    """(field, class, candidate values) in the order the greedy search tries them; the watershed
    split (seed probability, then band; its seeds' size floor after the threshold) only for the object
    score "rand"."""
    steps: list[tuple[str, int, list[Any]]] = []
    if metric == "rand":  # first: the split redraws the class, a threshold tuned before it misleads
        for c in range(1, num_classes):
            steps += [("watershed", c, [0.8, 0.9, 0.95, 0.97, 0.99]), ("watershed_band", c, [1, 2, 3, 5, 8])]
    if num_classes == 2:
        steps.append(("threshold", -1, [round(t, 2) for t in np.arange(0.1, 0.91, 0.05)]))
    if metric == "rand":  # the seeds' size floor after the threshold, which decides what counts as background
        steps += [("watershed_min_seed", c, [0, 5, 20, 50]) for c in range(1, num_classes)]
    for c in range(1, num_classes):
        steps += [
            ("opening", c, [1, 2]),
            ("closing", c, [1, 2]),
            ("fill_holes", c, [True]),
            ("min_size", c, list(size_grid)),
            ("keep_largest", c, [True]),
        ]
    return steps


def with_value(cfg: PostprocessConfig, name: str, c: int, value: Any, num_classes: int) -> PostprocessConfig:
    if name == "threshold":
        return dataclasses.replace(cfg, threshold=value)
    default = False if name in ("fill_holes", "keep_largest") else 0
    values = list(getattr(cfg, name)) or [default] * num_classes
    values[c] = value
    cfg = dataclasses.replace(cfg, **{name: tuple(values)})
    if name == "watershed" and value:  # the split's own settings start from their defaults
        for field, default in (("watershed_band", DEFAULT_BAND), ("watershed_min_seed", DEFAULT_MIN_SEED)):
            if c >= len(getattr(cfg, field)) or not getattr(cfg, field)[c]:
                cfg = with_value(cfg, field, c, default, num_classes)
    return cfg


def effective_guard(metric: str, dice_guard: float | None) -> float | None:
    """The Dice guard a search for `metric` runs under: `dice_guard`, or by default `RAND_DICE_GUARD`
    for "rand" and none otherwise."""
    if dice_guard is not None:
        return dice_guard
    return RAND_DICE_GUARD if metric == "rand" else None


def tune_postprocess(
    probabilities: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    *,
    metric: str = "dice",
    ignore_index: int = 255,
    steps: Sequence[tuple[str, int, list[Any]]] | None = None,
    dice_guard: float | None = None,
    deadline: float | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Greedy search over `candidate_steps`; returns (params for the artifact, trial log).

    Each step evaluates its candidate values on top of everything kept so far and keeps the best
    one only if it is strictly better than the current score. With `dice_guard` (default
    `RAND_DICE_GUARD` for "rand", none otherwise) a trial whose pooled Dice is more than that
    below arg-max's is not admissible. The log has one row per step: field, class, best value,
    score before, score after, kept. `deadline` (a `time.monotonic()` value): `OutOfTime` is raised
    when a trial would start after it.
    """
    k = probabilities[0].shape[0]
    cfg = PostprocessConfig()
    guard = effective_guard(metric, dice_guard)

    trials_done = 0
    prefix: tuple[PostprocessConfig, int, list[np.ndarray]] | None = None  # config, class, maps cleaned below it

    def trial_labels(trial: PostprocessConfig, c: int) -> list[np.ndarray]:
        """The labels of `trial`, which differs from the kept `cfg` in class `c` only. While no class
        after `c` has an op yet (the search goes class by class), every trial of a step starts from
        the same maps, cleaned for the classes before `c` (kept, and carried forward class by class):
        one class is cleaned per trial instead of all of them, for the same labels."""
        nonlocal prefix
        if c < 1 or trial.threshold != cfg.threshold or any(acts_on(trial, j) for j in range(c + 1, k)):
            return [apply_postprocess(p, trial) for p in probabilities]
        if prefix is None or prefix[1] > c or not same_below(prefix[0], cfg, prefix[1]):
            prefix = (cfg, 1, [apply_postprocess(p, cfg, upto=1) for p in probabilities])
        done, maps = prefix[1], prefix[2]
        for j in range(done, c):  # carry the maps forward to class c under the kept config
            maps = [clean_class(labels, j, p, cfg) for labels, p in zip(maps, probabilities, strict=True)]
        prefix = (cfg, c, maps)
        return [clean_class(labels, c, p, trial) for labels, p in zip(maps, probabilities, strict=True)]

    def score(trial: PostprocessConfig, c: int = -1) -> tuple[float, float]:
        nonlocal trials_done
        if deadline is not None and time.monotonic() > deadline:
            raise OutOfTime(trials_done)
        trials_done += 1
        labels = trial_labels(trial, c)
        value = score_labels(labels, truths, k, metric, ignore_index)
        if guard is None or metric == "dice":
            return value, value
        return value, score_labels(labels, truths, k, "dice", ignore_index)

    current, floor = score(cfg)
    floor = floor - guard if guard is not None else -np.inf
    log: list[dict[str, Any]] = []
    for name, c, values in steps if steps is not None else candidate_steps(k, metric=metric):
        trials = [(*score(trial, c), v, trial) for v in values for trial in [with_value(cfg, name, c, v, k)]]
        admissible = [(s, v, t) for s, dice, v, t in trials if dice >= floor]
        if not admissible:
            log.append({"op": name, "class": c, "value": None, "before": current, "after": current, "kept": False})
            continue
        best_score, best_value, best_cfg = max(admissible, key=lambda t: t[0])
        kept = best_score > current
        log.append({"op": name, "class": c, "value": best_value, "before": current, "after": best_score, "kept": kept})
        if kept:
            cfg, current = best_cfg, best_score
    return compact(cfg), log


def search_seconds(probs: np.ndarray, truth: np.ndarray, pixels: int, metric: str, *, ignore_index: int = 255,
                   folds: int = 0) -> float:
    """Seconds the search (`tune_postprocess`) and the gate's `folds` out-of-fold re-runs of it will
    take on validation images of `pixels` pixels in all, timed on this machine on one image (`probs`, its
    class probabilities; `truth`, its labels): the first step's trials, scaled to every trial of the
    search and to the pixels of every search (all the images, then each fold's rest). For a budget's
    reserve."""
    steps = candidate_steps(probs.shape[0], metric=metric)
    t0 = time.perf_counter()
    tune_postprocess([probs], [truth], metric=metric, ignore_index=ignore_index, steps=steps[:1])
    per_trial = (time.perf_counter() - t0) / (1 + len(steps[0][2]))  # arg-max's score + the step's values
    trials = 1 + sum(len(values) for _, _, values in steps)
    return per_trial * trials * pixels * max(folds, 1) / truth.size


def label_probabilities(labels: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(K, H, W) float32 one-hot probabilities of a label map (ignored pixels: class 0): a stand-in for
    a model's output before there is one (`search_seconds` then under-counts: measured ~1.7x faster
    trials than on a trained model's probabilities of ISBI 2012 slices)."""
    return np.eye(num_classes, dtype=np.float32)[np.where(labels == ignore_index, 0, labels)].transpose(2, 0, 1)


def compact(cfg: PostprocessConfig) -> dict[str, Any]:
    """The non-default fields only (what the artifact stores; `{}` is plain arg-max)."""
    out = {}
    for name, value in to_dict(cfg).items():
        if value is None or (isinstance(value, list) and not any(value)):
            continue
        out[name] = value
    return out


def require_metric(metric: str) -> None:
    """A DataError unless `metric` is one tuning scores (checked before anything is predicted)."""
    if metric not in POSTPROCESS_METRICS:
        raise DataError(f"metric '{metric}': expected one of {list(POSTPROCESS_METRICS)}")


def require_guard(dice_guard: float | None, name: str = "dice_guard") -> None:
    """A ConfigError naming `name` unless `dice_guard` is None or a finite number >= 0 (checked before
    predicting, or before training)."""
    if dice_guard is not None and not (isinstance(dice_guard, (int, float)) and math.isfinite(dice_guard)
                                       and dice_guard >= 0):
        raise ConfigError(f"{name} {dice_guard!r}: expected a number >= 0 (pooled Dice the search may give up)")


def tune_model_postprocess(
    model: str | Path,
    data: str | Path,
    *,
    keys: Sequence[str] | None = None,
    metric: str = "dice",
    out: str | Path | None = None,
    config: TileChoice = None,
    backend: str = "auto",
    progress: bool = True,
    dice_guard: float | None = None,
) -> dict[str, Any]:
    """Choose postprocessing on labelled data (see `tune_postprocess`), predicted as the artifact's
    inference does (its tiling and TTA choice, `config` over them), and store it in the artifact's
    `postprocess` (in place, or in a copy at `out`). `dice_guard`: pooled Dice the search may give
    up for the metric (None: `RAND_DICE_GUARD` for "rand", no guard for "dice" and "iou")."""
    require_metric(metric)
    require_guard(dice_guard)
    artifact, samples = load_labelled(model, data, keys, progress)
    summary = tune_samples(artifact, samples, metric, config=config, backend=backend, progress=progress,
                           dice_guard=dice_guard)
    summary |= {"data": str(data), "keys": list(keys or [])}
    target = store_tuning(artifact, out, {"postprocess_tuning": tuning_record(summary)}, postprocess=summary["postprocess"])
    return json_value(summary | {"artifact": str(target)})


def tune_samples(
    artifact: Artifact,
    samples: Sequence[Any],
    metric: str,
    *,
    config: TileChoice = None,
    backend: str = "auto",
    progress: bool = True,
    seed: int = 0,
    deadline: float | None = None,
    dice_guard: float | None = None,
) -> dict[str, Any]:
    """Predict labelled `samples` (LoadedSample: image, labels) with `artifact` as its inference
    does (`config` over the model's own tiling and TTA choice) and tune its postprocessing for
    `metric` (`tune_probabilities`)."""
    probs = [p for _, p in iter_probabilities(artifact, samples, config, backend=backend, progress=progress)]
    return tune_probabilities(probs, [s.labels for s in samples], artifact.meta.num_classes, metric,
                              ignore_index=artifact.meta.ignore_index, seed=seed, deadline=deadline,
                              dice_guard=dice_guard)


def tune_probabilities(
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    num_classes: int,
    metric: str,
    *,
    ignore_index: int = 255,
    seed: int = 0,
    deadline: float | None = None,
    dice_guard: float | None = None,
) -> dict[str, Any]:
    """Tune the postprocessing of predicted `probs` for `metric` against `truths`; returns the
    summary (`postprocess`: the params to store, `{}` unless the gate adopted them; `tuned`: what
    the search chose on all the images; `gate`: the verdict of `gate_postprocess`; `before` /
    `after`: the metric with arg-max / with the stored params; `dice_before` / `dice_after`;
    `steps`: the search log). Past `deadline` (`time.monotonic()`) the search or the gate stops and
    plain arg-max stays, the gate's reason saying so. `dice_guard`: `tune_postprocess`'s, for the
    search and its out-of-fold re-runs alike."""
    k, ignore = num_classes, ignore_index
    try:
        tuned, log = tune_postprocess(probs, truths, metric=metric, ignore_index=ignore, deadline=deadline,
                                      dice_guard=dice_guard)
        verdict = gate_postprocess(probs, truths, tuned, metric=metric, ignore_index=ignore, seed=seed,
                                   deadline=deadline, dice_guard=dice_guard)
    except OutOfTime as stop:
        tuned, log = {}, []
        verdict = GateResult(False, 0.0, float("nan"), len(probs),
                             f"postprocessing: not tuned, the search ran out of the budget's time after "
                             f"{stop.trials} trials on {len(probs)} images; plain arg-max kept")
    params = tuned if verdict.adopted else {}
    plain = [apply_postprocess(p, {}) for p in probs]
    kept = [apply_postprocess(p, params) for p in probs]
    return json_value({
        "metric": metric, "postprocess": params, "tuned": tuned, "gate": verdict.to_dict(),
        "before": score_labels(plain, truths, k, metric, ignore), "after": score_labels(kept, truths, k, metric, ignore),
        "dice_before": score_labels(plain, truths, k, "dice", ignore), "dice_after": score_labels(kept, truths, k, "dice", ignore),
        "images": len(probs), "steps": log,
        "dice_guard": effective_guard(metric, dice_guard),
    })


def gate_postprocess(
    probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray], tuned: dict[str, Any], *,
    metric: str = "dice", ignore_index: int = 255, seed: int = 0,
    steps: Sequence[tuple[str, int, list[Any]]] | None = None, deadline: float | None = None,
    dice_guard: float | None = None,
) -> GateResult:
    """Whether `tuned` (what `tune_postprocess` chose on all these images) is adopted: the search is
    re-run leaving each fold of images out (`gate.fold_indices`), each held-out image is scored with
    what was chosen without it, and the out-of-fold gain over plain arg-max must hold across
    images (`gate.decide`: paired bootstrap lower bound > 0, at least `gate.MIN_IMAGES` images).
    `steps`: the search's candidates, as `tune_postprocess` took them (default: all); `deadline`
    (`OutOfTime`) and `dice_guard`: as `tune_postprocess`'s."""
    n, what = len(probabilities), "postprocessing"
    if not tuned:
        return not_needed(n, what)
    refused = too_few(n, what)
    if refused is not None:
        return refused
    k = probabilities[0].shape[0]
    held_out: list[np.ndarray | None] = [None] * n
    for fold in fold_indices(n):
        rest = [i for i in range(n) if i not in set(fold.tolist())]
        chosen, _ = tune_postprocess([probabilities[i] for i in rest], [truths[i] for i in rest],
                                     metric=metric, ignore_index=ignore_index, steps=steps,
                                     deadline=deadline, dice_guard=dice_guard)
        for i in fold:
            held_out[i] = apply_postprocess(probabilities[i], chosen)
    plain = [apply_postprocess(p, {}) for p in probabilities]
    return decide(score_parts(plain, truths, k, metric, ignore_index),
                  score_parts(held_out, truths, k, metric, ignore_index),
                  parts_statistic(k, metric), what=what, seed=seed)


def tuning_record(summary: dict[str, Any]) -> dict[str, Any]:
    """What the artifact's metrics keep of a tuning summary (no trial log)."""
    return json_value({k: v for k, v in summary.items() if k not in ("steps", "artifact")})
