"""Drift features of a model artifact on images: the glue between the pure monitor modules, the
readers and the artifact's inference pipeline (used by training, `unetkit drift` and benchmarks).

Output features come from the artifact's calibrated probabilities and the labels it serves
(its postprocessing applied), computed by the same tiled inference as `unetkit predict`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import Artifact, load_artifact, update_artifact, weights_sha256
from unetkit.config import DRIFT_THRESHOLD
from unetkit.data.io import read_image
from unetkit.data.pairing import pair_samples
from unetkit.data.spec import load_spec
from unetkit.errors import ConfigError, DataError, InputError, UnetkitError
from unetkit.inference.backends import make_predictor
from unetkit.inference.files import collect_inputs, labels_from_probabilities, tile_config_for
from unetkit.inference.predict import predict_tiled
from unetkit.monitor.baseline import (
    Baseline,
    build_baseline,
    output_sample,
    outputs_mismatch,
    outputs_signature,
)
from unetkit.monitor.drift import DriftReport, compare


def predict_outputs(artifact: Artifact, images: Iterable[np.ndarray], *, predictor: Any = None,
                    backend: str = "torch", known: Sequence[np.ndarray | None] = (),
                    deadline: float | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(probabilities (K,H,W), served labels (H,W)) of the model on each image, lazily, tiled as the
    model's own tiling says (an artifact's patch size and TTA choice, an exported model's plan).
    `known[i]`: image i's probabilities, already computed (not predicted again); `deadline`
    (`time.monotonic()`): stop, leaving the rest out, when the next prediction would end past it."""
    tile, last = tile_config_for(artifact), 0.0
    for i, image in enumerate(images):
        probs = known[i] if i < len(known) else None
        if probs is None:
            if deadline is not None and time.monotonic() + last > deadline:
                return
            t0 = time.monotonic()
            predictor = predictor or make_predictor(artifact, backend=backend)
            probs = predict_tiled(predictor, image, tile)
            last = time.monotonic() - t0
        yield probs, labels_from_probabilities(probs, artifact)


def artifact_baseline(artifact: Artifact, input_images: Sequence[np.ndarray], output_images: Iterable[np.ndarray],
                      *, backend: str = "torch", log: Callable[[str], Any] | None = None, note: str = "",
                      known: Sequence[np.ndarray | None] = (), deadline: float | None = None) -> Baseline:
    """The baseline of `input_images` (the training images) and of the artifact's outputs on
    `output_images` (see `baseline.output_sample`; `known` and `deadline` as `predict_outputs`'s);
    `note` says where those came from in the log."""
    start = time.perf_counter()
    sha = artifact.meta.weights_sha256 or weights_sha256(artifact.state_dict)  # not saved yet during training
    outputs = predict_outputs(artifact, output_images, backend=backend, known=known, deadline=deadline)
    baseline = build_baseline(input_images, outputs,
                              class_names=artifact.meta.class_names, outputs_of=outputs_signature(artifact.meta, sha))
    if log:
        log(f"drift baseline: {baseline.input_images} images, model outputs on {baseline.output_images}{note}, "
            f"{len(baseline.features)} features in {time.perf_counter() - start:.2f} s")
    return baseline


def training_baseline(weights: dict[str, Any], meta: Any, train: Sequence[Any], val: Sequence[Any],
                      log: Callable[[str], Any] | None = None, *, predicted: Mapping[str, np.ndarray] | None = None,
                      deadline: float | None = None) -> dict[str, Any]:
    """`ArtifactMeta.drift_baseline` for a training run: inputs from the training images, outputs
    of the trained weights, as the artifact predicts (its TTA choice included), on the validation
    images topped up with training images (`output_sample`). `predicted`: probabilities already
    computed for some of them, by sample key (the end of training's, for the validation images);
    `deadline` (`time.monotonic()`): the others are predicted only while the next one still fits
    before it (a model that predicts with TTA costs 2-8x a validation pass per image, which the
    budget's end reserve does not hold), so the baseline may have fewer output images; it says how many."""
    artifact = Artifact(meta=meta, state_dict=weights)
    images = [s.image for s in train]
    held_out, extra = output_sample(list(val), list(train))
    note = f" ({len(held_out) - extra} validation + {extra} training)" if extra and len(held_out) > extra else ""
    known = [(predicted or {}).get(s.key) for s in held_out]
    return artifact_baseline(artifact, images, [s.image for s in held_out], log=log, note=note, known=known,
                             deadline=deadline).to_dict()


def measure_files(
    artifact: Artifact,
    baseline: Baseline,
    paths: Sequence[Path],
    *,
    outputs: bool = True,
    backend: str = "auto",
    progress: bool = True,
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """Features of each image file (read with unetkit's readers): `(per-image features, errors)`;
    an unreadable or unfit file is one error line and the others still count."""
    from tqdm import tqdm

    predictor = make_predictor(artifact, backend=backend) if outputs else None
    measured, errors = [], []
    for path in tqdm(paths, desc="drift", unit="img", disable=not progress or len(paths) < 2):
        try:
            image = read_image(path)
            if image.shape[0] != baseline.channels:
                raise UnetkitError(f"{path}: {image.shape[0]} channel(s); the model's baseline has {baseline.channels}")
            probs, labels = next(predict_outputs(artifact, [image], predictor=predictor)) if outputs else (None, None)
            measured.append(baseline.measure(image, probs, labels))
        except UnetkitError as e:
            errors.append(str(e))
    return measured, errors


# ---------------------------------------------------------------- files: `unetkit drift`


class ImageFiles(Sequence[np.ndarray]):
    """Image files read on access (a baseline over many files never holds them all)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return ImageFiles(self.paths[index])
        return read_image(self.paths[index])


def image_paths(folder: str | Path) -> list[Path]:
    """Every image under `folder` (recursive, sorted), or the folder itself when it is one file."""

    return [path for path, _ in collect_inputs([folder])]


def baseline_sources(artifact: Artifact, data: str | Path) -> tuple[list[Path], list[Path]]:
    """(training images, validation images) of a training data set: a data folder, dataset
    description or manifest, split as training splits it: its test split left out, validation the
    artifact's training run's validation keys when set, else the data set's own val split (else all
    images are training images); or a plain folder of images."""

    try:
        spec = load_spec(data)
        samples = pair_samples(spec)
    except DataError:
        return image_paths(data), []
    own = spec.split_map
    samples = [s for s in samples if s.key not in set(own.get("test", ()))]
    if not samples:
        raise DataError(f"{data}: no images found" + (" outside its test split" if own.get("test") else ""))
    val_keys = set((artifact.meta.train_config.get("data") or {}).get("val_keys") or own.get("val", ()))
    train = [s.image for s in samples if s.key not in val_keys]
    val = [s.image for s in samples if s.key in val_keys]
    return (train, val) if train else ([s.image for s in samples], [])


def add_baseline(model: str | Path, data: str | Path, *, backend: str = "auto",
                 log: Callable[[str], Any] | None = None) -> Baseline:
    """Measure the baseline of `data` (the training data) and store it in the artifact (atomic
    rewrite through `update_artifact`)."""

    artifact = load_artifact(model)
    inputs, held_out = baseline_sources(artifact, data)
    held_out, extra = output_sample(held_out, inputs)
    note = f" ({len(held_out) - extra} validation + {extra} training)" if extra and len(held_out) > extra else ""
    baseline = artifact_baseline(artifact, ImageFiles(inputs), ImageFiles(held_out), backend=backend, log=log, note=note)
    update_artifact(model, drift_baseline=baseline.to_dict())
    return baseline


def brings_runtime(model: Any) -> bool:
    """An exported model (`export.deployed.DeployedModel`: it makes its own predictor), not an artifact."""
    return callable(getattr(model, "make_predictor", None))


FEW_IMAGES = 20  # below this a same-distribution sample often scores near the threshold


def check_drift(model: str | Path | Any, folder: str | Path, *, threshold: float, outputs: bool = True,
                backend: str = "auto", progress: bool = True) -> tuple[DriftReport, list[str]]:
    """Compare the images under `folder` with the model's baseline: `(report, file errors)`.

    `model`: an artifact (path or loaded) or an exported model opened with
    `unetkit.export.deployed.load_model`, whose plan carries the artifact's baseline and whose own
    runtime computes the output features."""

    if threshold <= 0:
        raise ConfigError(f"--threshold {threshold}: expected a positive PSI value (default {DRIFT_THRESHOLD:g})")
    artifact = load_artifact(model) if isinstance(model, (str, Path)) else model
    where = artifact.path or artifact.meta.name
    if not artifact.meta.drift_baseline and brings_runtime(artifact):
        raise ConfigError(f"{where}: its inference plan carries no drift baseline (the artifact had none when it was "
                          "exported); add one with `unetkit drift MODEL.unetkit --baseline-from TRAINING_DATA` and "
                          "export again")
    baseline = Baseline.from_dict(artifact.meta.drift_baseline, f"{where}: drift_baseline")
    notes = []
    reason = outputs_mismatch(baseline, artifact.meta) if outputs else None
    if reason:
        notes.append(f"output features left out: {reason}")
    paths = image_paths(folder)
    measured, errors = measure_files(artifact, baseline, paths, outputs=outputs and reason is None,
                                     backend=backend, progress=progress)
    if not measured:
        raise InputError(f"{folder}: none of the {len(paths)} images could be measured; first error: {errors[0]}")
    if len(measured) < FEW_IMAGES:
        notes.append(f"only {len(measured)} images: the PSI of fewer than {FEW_IMAGES} is noisy, even without "
                     "drift (docs/monitoring.md)")
    return compare(baseline, measured, threshold, outputs=outputs and reason is None, notes=notes), errors
