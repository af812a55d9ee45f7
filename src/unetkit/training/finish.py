"""The end of a run: the kept weights, calibrated and tuned on the validation split, as the artifact.

`save_final_artifact` takes a single model's kept weights (`unetkit.training.selection`: the best
validated checkpoint, or the final weights when they lead it across the validation images);
`write_artifact` (also the ensemble's) fits temperature scaling, decides TTA and tunes the
postprocessing on the validation split (`finish_on_validation`), adds the drift baseline (`unetkit.monitor`) and a few
labelled validation crops (`validation_sample`, what the parity gate checks reduced precisions on)
and writes the artifact atomically. `end_passes` is what the end of a run costs, in validation passes, for
the budget's end-of-run reserve (`unetkit.training.budget.reserve_seconds`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.artifact import Artifact, ArtifactMeta, ValidationSample, save_artifact
from unetkit.config import TileConfig, TrainConfig, to_dict
from unetkit.data.resample import resample_image, resample_labels
from unetkit.data.splits import spread
from unetkit.inference.files import trained_views
from unetkit.inference.predict import tta_views
from unetkit.monitor.baseline import baseline_validations
from unetkit.monitor.measure import training_baseline
from unetkit.training.budget import BudgetClock
from unetkit.training.finetune import Start
from unetkit.training.loop import SELECTION_METRIC
from unetkit.training.prepare import TrainingData
from unetkit.training.selection import select_weights
from unetkit.training.steps import RunState
from unetkit.tuning.calibration import calibrate_samples, calibration_record
from unetkit.tuning.gate import refits
from unetkit.tuning.postprocess import (
    label_probabilities,
    search_seconds,
    tune_probabilities,
    tune_samples,
    tuning_record,
)
from unetkit.tuning.scales import candidate_resolutions, choose_scales, extra_passes
from unetkit.tuning.tta import choose_tta

TUNE_PREDICT_VALIDATIONS = 1.0  # budget reserved for tuning postprocessing: one prediction pass (R13; with
# TTA measured, its views' passes instead) ...
SEARCH_VALIDATIONS = 1.0  # ... + the search, and each out-of-fold search of the gate (unetkit.tuning.gate);
# the search for the adapted Rand score is timed instead (`end_seconds`)
MAX_TUNE_IMAGES = 32  # the postprocessing search holds every image's probabilities: at most this many, evenly
# spread (TTA and multi-scale are judged on every validation image, holding the maps of these only)
CALIBRATE_VALIDATIONS = 1.2  # ... and for calibration: one pass of logits + the temperature fit (also what
# recalibrating each mean of predictions, TTA's views or the scales, costs beyond its pass: the fit)
GATE_FIT_VALIDATIONS = 0.1  # ... + each out-of-fold temperature fit of the gate
SAMPLE_CROPS = 4  # the validation sample kept in the artifact for the parity gate: at most this many crops,
SAMPLE_BYTES = 384 * 1024  # ... of at most this many raw bytes (images + labels; smaller crops when needed)
SAMPLE_MIN_SIDE = 32


def end_passes(config: TrainConfig, train_images: int, val_images: int) -> float:
    """The end of a single model's run in validation passes: the final validation, then
    calibration and tuning (`finish_validations`) and the drift baseline's predictions."""
    return 1.0 + baseline_validations(train_images, val_images) + finish_validations(config, val_images)


def finish_validations(config: TrainConfig, val_images: int) -> float:
    """The end-of-training work on the validation split, in validation passes (for the budget)."""
    if not val_images:
        return 0.0
    folds = refits(val_images)  # the gate's out-of-fold refits
    tuning = config.tune_postprocess != "off"
    search = 0.0 if config.tune_postprocess == "rand" else SEARCH_VALIDATIONS  # "rand": `end_seconds`
    held = min(val_images, MAX_TUNE_IMAGES) / val_images  # the spread whose maps the search tunes on
    # TTA is judged on every validation image, each predicted once per view (the first is the plain prediction),
    # and those the search holds also plainly, as inference predicts them
    views = len(tta_views(TileConfig(tta_views=trained_views(to_dict(config))))) if config.tta != "off" else 0
    predict = views + held if views else 0.0
    means = 1 if views else 0  # means of predictions whose temperature is fitted and gated (`recalibrate_samples`)
    if config.multiscale != "off" and candidate_resolutions(config.data.resolution):
        # every image at the other two resolutions, with the views when TTA may be on, and at its own where
        # TTA's predictions were not kept (all of them without TTA)
        single = max(views, 1)
        predict += extra_passes(config.data.resolution) * single + single * ((1.0 - held) if views else 1.0)
        means += 1
    if tuning:  # the search's spread: predicted for it when nothing before was, then searched (and refitted per fold)
        predict += ((1.0 if not predict else 0.0) + search * (1 + folds)) * held
    fit = CALIBRATE_VALIDATIONS - 1.0 + GATE_FIT_VALIDATIONS * folds  # a temperature fit and the gate's refits
    return (1.0 + fit if config.calibrate else 0.0) + fit * means + predict


def end_seconds(config: TrainConfig, val: Sequence[Any], num_classes: int, probs: np.ndarray | None = None) -> float:
    """The end of the run's work that validation passes do not measure, timed on this machine: the
    postprocessing search for the adapted Rand score (R13: a watershed split and connected components
    per trial, however fast the network) and the gate's out-of-fold re-runs of it, on the spread of
    validation images it tunes on (`tuning.postprocess.search_seconds`), timed on the first validation
    image with `probs` (a model's probabilities of it; None: its one-hot labels, an under-count). Counted
    in validation passes (6 per search: on ISBI 2012 the search and its gate took 62 s, 1.9 s passes)
    the reserve shrank with a faster network: w8 d4 (1.0 s passes) ran out of time after 32 trials and
    kept plain arg-max, adapted Rand error 0.105 instead of ~0.035 (AMD EPYC Zen 3, docs/benchmarks.md,
    2026-12-07). 0 for the other metrics, whose search is reserved in passes."""
    if config.tune_postprocess != "rand" or not len(val):
        return 0.0
    held = [val[i] for i in search_spread(len(val))]
    ignore, truth = config.loss.ignore_index, val[0].labels
    first = probs if probs is not None else label_probabilities(truth, num_classes, ignore)
    return search_seconds(first, truth, sum(s.labels.size for s in held), "rand", ignore_index=ignore,
                          folds=refits(len(held)))


def search_spread(images: int) -> list[int]:
    """The validation images the postprocessing search tunes on (and holds the maps of): an even spread of
    at most `MAX_TUNE_IMAGES` (bounded memory and search time on a large validation split)."""
    return spread(range(images), MAX_TUNE_IMAGES)


def save_final_artifact(path: Path, model: torch.nn.Module, data: TrainingData, config: TrainConfig,
                        state: RunState, start: Start | None = None,
                        extra_metrics: dict[str, Any] | None = None, clock: BudgetClock | None = None,
                        extra_lineage: dict[str, Any] | None = None) -> Path:
    """The kept weights (`unetkit.training.selection`: the best validated checkpoint, or the final
    weights when they lead it across the validation images) with everything inference needs;
    the metrics are the kept weights' validation and `checkpoint` says which and why; the lineage
    records the steps and, for a run started from trained weights, the parent's sha256;
    `extra_metrics` join them in the artifact's metrics (e.g. "distillation"), `extra_lineage` its lineage
    (e.g. the teacher's sha256);
    `clock`: the run's budget, which the end-of-run tuning must keep (`write_artifact`)."""
    kept = select_weights(Path(config.out_dir), state, model)
    return write_artifact(path, kept.weights, data, config, history=state.history,
                          metrics={**kept.metrics, "step": kept.step, "selection_metric": SELECTION_METRIC,
                                   "checkpoint": kept.record, **(extra_metrics or {})},
                          lineage={"steps": state.step, "total_steps": state.total_steps,
                                   **(start.lineage(data.class_names, data.fingerprint) if start is not None else {}),
                                   **(extra_lineage or {})},
                          clock=clock)


def write_artifact(path: Path, weights: dict[str, Any], data: TrainingData, config: TrainConfig, *,
                   history: list[Any], metrics: dict[str, Any], lineage: dict[str, Any],
                   clock: BudgetClock | None = None) -> Path:
    """Weights + everything inference needs, calibrated and tuned on the validation split
    (`finish_on_validation`), with the drift baseline (reusing the validation images' probabilities
    predicted for those); written atomically. With a budget (`clock`) the postprocessing search stops
    where the drift baseline's passes would no longer fit, and the baseline at the budget's end."""
    meta = ArtifactMeta(
        model=config.model, class_names=tuple(data.class_names), class_colors=tuple(data.class_colors),
        mean=tuple(data.mean), std=tuple(data.std), patch_size=tuple(config.data.patch_size),
        resolution=config.data.resolution, ignore_index=config.loss.ignore_index, data_spec=data.spec_dict,
        fingerprint=data.fingerprint,
        train_config=to_dict(config), plan=config.plan, history=history, metrics=metrics, lineage=lineage,
    )
    deadline = clock.deadline(baseline_validations(len(data.train), len(data.val))) if clock is not None else None
    meta, predicted = finish_on_validation(meta, weights, data.val, config, deadline=deadline)
    baseline = training_baseline(weights, meta, data.train, data.val, log=print if config.progress else None,
                                 predicted=predicted, deadline=clock.deadline() if clock is not None else None)
    sample = validation_sample(data.val, config.data.patch_size, config.loss.ignore_index,
                               resolution=config.data.resolution)
    return save_artifact(path, weights, dataclasses.replace(meta, drift_baseline=baseline,
                                                            validation_sample=sample.to_dict() if sample else {}))


def validation_sample(val: Sequence[Any], patch_size: Sequence[int], ignore_index: int = 255,
                      crops: int = SAMPLE_CROPS, max_bytes: int = SAMPLE_BYTES,
                      resolution: float = 1.0) -> ValidationSample | None:
    """Up to `crops` labelled crops of the validation images (evenly spread over them), each where its
    image has the most foreground (labels other than 0 and `ignore_index`), for the parity gate.

    The crops are what the network itself is fed: cut from the images resampled to the model's
    `resolution` (`DataConfig.resolution`; integer raw units rounded back to integers), so a gate
    compares precisions at the scale the model predicts at. Crops are the patch size, shrunk (to
    multiples of 16, at least 32) to fit `max_bytes` raw; images keep their raw units as uint8 /
    uint16 when every value is an integer in that range, else float16; `origins` are in the
    resampled image. None without validation images. Costs no prediction: only numpy on loaded images."""
    chosen = spread(val, crops)
    if not chosen:
        return None
    dtype = _sample_dtype([s.image for s in chosen])  # resampling mixes values convexly: the range holds
    pictures = [resample_image(s.image, resolution) for s in chosen]
    if dtype != np.float16 and resolution != 1.0:
        pictures = [np.round(p) for p in pictures]
    truths = [resample_labels(s.labels, resolution) for s in chosen]
    keys = [s.key for s in chosen]
    c = pictures[0].shape[0]
    label_dtype = np.uint8 if max(int(t.max()) for t in truths) <= 255 else np.uint16
    per_pixel = c * np.dtype(dtype).itemsize + np.dtype(label_dtype).itemsize
    patch = tuple(int(v) for v in patch_size) * (2 if len(patch_size) == 1 else 1)
    h = min(patch[0], *(im.shape[1] for im in pictures))
    w = min(patch[1], *(im.shape[2] for im in pictures))
    while len(keys) * h * w * per_pixel > max_bytes and max(h, w) > SAMPLE_MIN_SIDE:
        h, w = (max(min(v, SAMPLE_MIN_SIDE), (v * 3 // 4) // 16 * 16) for v in (h, w))
    while len(keys) > 1 and len(keys) * h * w * per_pixel > max_bytes:
        keys = keys[:-1]
    images, labels, origins = [], [], []
    for image, truth, _ in zip(pictures, truths, keys, strict=False):
        y, x = _most_foreground(truth, (h, w), ignore_index)
        images.append(image[:, y : y + h, x : x + w])
        labels.append(truth[y : y + h, x : x + w])
        origins.append((y, x))
    return ValidationSample(np.stack(images).astype(dtype), np.stack(labels).astype(label_dtype),
                            tuple(keys), tuple(origins))


def _sample_dtype(images: Sequence[np.ndarray]) -> type:
    integral = all(np.array_equal(im, np.round(im)) for im in images)
    low = min(float(im.min()) for im in images)
    high = max(float(im.max()) for im in images)
    if integral and low >= 0 and high <= 255:
        return np.uint8
    if integral and low >= 0 and high <= 65535:
        return np.uint16
    return np.float16


def _most_foreground(labels: np.ndarray, size: tuple[int, int], ignore_index: int) -> tuple[int, int]:
    """(y, x) of the `size` window with the most foreground pixels, on a grid of quarter-window steps."""
    h, w = size
    fg = ((labels != 0) & (labels != ignore_index)).astype(np.int64)
    integral = np.pad(fg.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys = sorted({*range(0, labels.shape[0] - h + 1, max(1, h // 4)), labels.shape[0] - h})
    xs = sorted({*range(0, labels.shape[1] - w + 1, max(1, w // 4)), labels.shape[1] - w})
    best = max((int(integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]), -y, -x)
                for y in ys for x in xs)
    return -best[1], -best[2]


def finish_on_validation(meta: Any, weights: dict[str, Any], val: Sequence[Any], config: TrainConfig, *,
                         deadline: float | None = None) -> tuple[Any, dict[str, np.ndarray]]:
    """`meta` with temperature scaling fitted on the validation split (`config.calibrate`), then TTA
    decided on it (`config.tta`, `unetkit.tuning.tta`), then for a model trained at reduced
    resolution multi-scale inference (`config.multiscale`, `unetkit.tuning.scales`), both judged on
    every validation image, then the postprocessing tuned on an even spread of at most
    `MAX_TUNE_IMAGES` of them (whose maps the search holds) for `config.tune_postprocess` (R13), each
    recorded in the metrics with the validation keys it saw. Calibration first: TTA averages calibrated views and a tuned threshold refers
    to calibrated probabilities; TTA, then the scales (each scale averages the adopted views), before
    the search, which tunes on the probabilities inference will produce.
    Each is stored only when `unetkit.tuning.gate` finds its gain holds across the validation
    images (out of fold, paired bootstrap, at least `MIN_IMAGES` images: a `--full-train` run that
    validates on one image keeps the defaults); the record's `gate` says why either way. A search
    still running at `deadline` (`time.monotonic()`, the budget's) stops and keeps the defaults.
    Also returns the probabilities of the search's spread of validation images as the finished `meta`
    predicts them, by key, where they were computed (for the TTA decision), for the drift baseline to reuse."""
    if not len(val):
        return meta, {}
    keys = [s.key for s in val]
    say = print if config.progress else (lambda *_: None)
    # eager torch, not "auto": this runs inside the training budget, on a few images, and the automatic
    # choice would first time every backend (compiling OpenVINO f32 and bf16) on weights seen once
    backend = "torch"
    if config.calibrate:
        t0 = time.perf_counter()
        c = calibrate_samples(Artifact(meta=meta, state_dict=weights), val, progress=False, source="the validation split",
                              backend=backend)
        meta = dataclasses.replace(meta, **c["fields"], metrics={**meta.metrics, "calibration":
                                                                  calibration_record(c | {"keys": keys})})
        say(f"calibrated on {len(val)} validation image(s) in {time.perf_counter() - t0:.1f} s: temperature "
            f"{c['temperature']:.3f}, ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f} ({c['gate']['reason']})")
    held = search_spread(len(val))
    sample = [val[i] for i in held]
    sample_keys = [s.key for s in sample]
    probs = None
    metric = config.tune_postprocess if config.tune_postprocess != "off" else "dice"  # what TTA and scales are judged by
    if config.tta != "off":
        t0 = time.perf_counter()
        choice, probs = choose_tta(Artifact(meta=meta, state_dict=weights), val, mode=config.tta, metric=metric,
                                   backend=backend, deadline=deadline, keep=held)
        meta = dataclasses.replace(meta, tta=choice["tta"], tta_temperature=choice["temperature"],
                                   metrics={**meta.metrics, "tta": choice | {"keys": keys}})
        say(f"TTA ({choice['views']} views) measured on {len(val)} validation image(s) in "
            f"{time.perf_counter() - t0:.1f} s: {'on' if choice['tta'] else 'off'} ({choice['gate']['reason']}); "
            f"the views' mean recalibrated with T {choice['temperature']:.3f}")
    if config.multiscale != "off" and candidate_resolutions(meta.resolution):
        t0 = time.perf_counter()
        choice, probs = choose_scales(Artifact(meta=meta, state_dict=weights), val,
                                      dict(zip(held, probs, strict=True)) if probs is not None else None,
                                      mode=config.multiscale, metric=metric, backend=backend, deadline=deadline,
                                      keep=held)
        meta = dataclasses.replace(meta, resolutions=tuple(choice["resolutions"]),
                                   resolutions_temperature=choice["temperature"],
                                   metrics={**meta.metrics, "multiscale": choice | {"keys": keys}})
        say(f"multi-scale inference (resolutions {', '.join(f'{r:.3g}' for r in choice['candidates'])}) measured on "
            f"{len(val)} validation image(s) in {time.perf_counter() - t0:.1f} s: "
            f"{'on' if choice['resolutions'] else 'off'} ({choice['gate']['reason']})")
    if config.tune_postprocess != "off":
        t0 = time.perf_counter()
        artifact = Artifact(meta=meta, state_dict=weights)
        guard = config.postprocess_dice_guard
        summary = (tune_samples(artifact, sample, config.tune_postprocess, progress=False, backend=backend,
                                deadline=deadline, dice_guard=guard) if probs is None else
                   tune_probabilities(probs, [s.labels for s in sample], meta.num_classes, config.tune_postprocess,
                                      ignore_index=meta.ignore_index, deadline=deadline, dice_guard=guard))
        meta = dataclasses.replace(meta, postprocess=summary["postprocess"], metrics={
            **meta.metrics, "postprocess_tuning": tuning_record(summary | {"keys": sample_keys})})
        say(f"postprocessing tuned on {len(sample)} validation image(s) for {summary['metric']} in "
            f"{time.perf_counter() - t0:.1f} s: {summary['before']:.4f} -> {summary['after']:.4f} with "
            f"{summary['postprocess'] or 'plain arg-max'} ({summary['gate']['reason']})")
    return meta, dict(zip(sample_keys, probs, strict=True)) if probs is not None else {}
