"""Temperature (or per-class vector) scaling fitted on a model's raw logits over labelled data.

Calibration is fitted on the network's raw logits (any stored calibration is ignored while
fitting and replaced). ECE and NLL are reported before (the artifact as it was) and after, on
the same sampled pixels. The fitted fields are stored in the artifact; `InferencePipeline`
applies them to every later prediction.

Only when the fit holds on new images (`gate_calibration`): refitted leaving each fold of images
out, the held-out images' pooled NLL must improve on the raw logits' with a paired-bootstrap lower
bound above zero over at least `unetkit.tuning.gate.MIN_IMAGES` images (`unetkit.tuning.gate`);
otherwise the raw logits stay (temperature 1) and the summary's `gate` says why. A single
temperature changes no arg-max; thresholds tuned afterwards see the probabilities that were kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax

from unetkit.artifact import Artifact, ArtifactMeta
from unetkit.config import TileConfig
from unetkit.errors import DataError
from unetkit.evaluation.labelled import iter_probabilities, load_labelled
from unetkit.metrics.calibration import (
    CalibrationAccumulator,
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from unetkit.metrics.scores import json_value
from unetkit.tuning.gate import GateResult, decide, fold_indices, too_few
from unetkit.tuning.store import store_tuning

DEFAULT_CALIBRATION_PIXELS = 1_000_000
GATE_FIT_PIXELS = 200_000  # each out-of-fold refit of the gate uses at most this many pixels
ECE_BINS = 15  # the bins of the ECE a mean's temperature is judged by (`gate_mean_temperature`)
RAW = {"temperature": 1.0, "class_scale": (), "class_bias": ()}  # the fields that leave the logits as they are


def sample_pixels(
    logits: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `n` valid pixels (label != ignore_index; the ROI is folded in) of one image, drawn
    without replacement: ((m, K) logits, (m,) labels)."""
    flat = np.flatnonzero(labels.ravel() != ignore_index)
    if flat.size > n:
        flat = np.sort(rng.choice(flat, n, replace=False))
    z = logits.reshape(logits.shape[0], -1)[:, flat].T
    return np.ascontiguousarray(z, dtype=np.float32), labels.ravel()[flat].astype(np.int64)


def scaled(z: np.ndarray, scale: Sequence[float], bias: Sequence[float], temperature: float) -> np.ndarray:
    """What `InferencePipeline` computes from raw logits (m, K): z * scale / T + bias."""
    k = z.shape[1]
    s = np.asarray(scale or [1.0] * k, np.float64) / temperature
    b = np.asarray(bias or [0.0] * k, np.float64)
    return z.astype(np.float64) * s + b


def calibration_scores(z: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """ECE, MCE, NLL and reliability bins of logits (m, K) against labels (m,)."""
    acc = CalibrationAccumulator(n_bins)
    acc.update(softmax(z, axis=1).T, y)
    return acc.result() | {"nll": negative_log_likelihood(z, y)}


def fitted_fields(z: np.ndarray, y: np.ndarray, vector: bool = False,
                  max_samples: int | None = None) -> tuple[dict[str, Any], float]:
    """The artifact fields fitted on raw logits (m, K) and labels (m,), and the fitted temperature."""
    fit = fit_temperature(z, y, vector=vector, ignore_index=None, max_samples=max_samples or max(len(y), 1))
    if vector and fit.scale is not None and fit.bias is not None:
        return {"temperature": 1.0, "class_scale": tuple(fit.scale), "class_bias": tuple(fit.bias)}, fit.temperature
    return {"temperature": fit.temperature, "class_scale": (), "class_bias": ()}, fit.temperature


def fit_calibration(z: np.ndarray, y: np.ndarray, meta: ArtifactMeta, vector: bool = False) -> dict[str, Any]:
    """Fit on raw logits; returns the new artifact fields and the before/after scores."""
    fields, temperature = fitted_fields(z, y, vector)
    before = calibration_scores(scaled(z, meta.class_scale, meta.class_bias, meta.temperature), y)
    after = calibration_scores(scaled(z, fields["class_scale"], fields["class_bias"], fields["temperature"]), y)
    return {"fields": fields, "fitted_temperature": temperature, "before": before, "after": after}


def gate_calibration(zs: Sequence[np.ndarray], ys: Sequence[np.ndarray], vector: bool = False,
                     seed: int = 0) -> GateResult:
    """Whether calibration fitted on these images' pixels (`zs[i]` (m_i, K) raw logits, `ys[i]`
    labels) is adopted: refitted leaving each fold of images out, the held-out images' NLL against
    the raw logits' must improve across images (`unetkit.tuning.gate.decide`)."""
    what = "calibration"
    refused = too_few(len(ys), what)
    if refused is not None:
        return refused

    def log_likelihood(z: np.ndarray, y: np.ndarray, fields: dict[str, Any]) -> list[float]:
        m = len(y)
        return [-m * negative_log_likelihood(scaled(z, fields["class_scale"], fields["class_bias"],
                                                    fields["temperature"]), y), m]

    def mean_log_likelihood(pooled: np.ndarray) -> float:
        return float(pooled[0] / pooled[1]) if pooled[1] > 0 else 0.0

    raw_parts, fitted_parts = out_of_fold_parts(zs, ys, log_likelihood, 2, vector)
    return decide(raw_parts, fitted_parts, mean_log_likelihood, what=what, seed=seed)


def out_of_fold_parts(zs: Sequence[np.ndarray], ys: Sequence[np.ndarray],
                      parts: Callable[[np.ndarray, np.ndarray, dict[str, Any]], Any], width: int,
                      vector: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-image parts `(n, width)` for a gate, raw and fitted: for each fold of images, calibration
    (`fitted_fields`) refitted on the other images' pixels, then `parts(z, y, fields)` of each held-out
    image under the raw logits (`RAW`) and under that fit. Images without pixels keep zeros."""
    n = len(ys)
    raw_parts, fitted_parts = np.zeros((n, width)), np.zeros((n, width))
    for fold in fold_indices(n):
        held = set(fold.tolist())
        rest = [i for i in range(n) if i not in held and len(ys[i])]
        if not rest:
            continue
        fields, _ = fitted_fields(np.concatenate([zs[i] for i in rest]), np.concatenate([ys[i] for i in rest]),
                                  vector, max_samples=GATE_FIT_PIXELS)
        for i in fold:
            if len(ys[i]):
                raw_parts[i], fitted_parts[i] = parts(zs[i], ys[i], RAW), parts(zs[i], ys[i], fields)
    return raw_parts, fitted_parts


class PixelSampler:
    """Up to `max_pixels` valid pixels spread evenly over `images` images, drawn image by image as
    they come (`add`), so the maps need not be held: ((m_i, K) values, (m_i,) labels) per image."""

    def __init__(self, images: int, max_pixels: int = DEFAULT_CALIBRATION_PIXELS, seed: int = 0,
                 ignore_index: int = 255) -> None:
        self.per_image = max(1, math.ceil(max_pixels / max(images, 1)))
        self.rng, self.ignore_index = np.random.default_rng(seed), ignore_index
        self.zs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.ys)

    def add(self, values: np.ndarray, labels: np.ndarray, *, log: bool = False) -> None:
        """One image's `(K, H, W)` logits, or probabilities whose log (`log`) plays the logits' part."""
        z, y = sample_pixels(values, labels, self.per_image, self.rng, self.ignore_index)
        self.zs.append(np.log(np.maximum(z, np.float32(1e-12))) if log else z)
        self.ys.append(y)

    def samples(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return self.zs, self.ys


def recalibrate_mean(maps: Sequence[np.ndarray], truths: Sequence[np.ndarray], ignore_index: int, *, what: str,
                     max_pixels: int = DEFAULT_CALIBRATION_PIXELS, seed: int = 0) -> dict[str, Any]:
    """The temperature T of softmax(log(mean) / T) (`unetkit.inference.predict.sharpen`) for means of
    calibrated predictions (`maps`, (K, H, W) each: TTA's views, multi-scale's resolutions) against
    their labels: `recalibrate_samples` on at most `max_pixels` valid pixels spread over the images
    (what `unetkit.tuning.compare.Comparison` samples image by image)."""
    sampler = PixelSampler(len(maps), max_pixels, seed, ignore_index)
    for p, t in zip(maps, truths, strict=True):
        sampler.add(p, t, log=True)
    return recalibrate_samples(*sampler.samples(), what=what, seed=seed)


def recalibrate_samples(zs: Sequence[np.ndarray], ys: Sequence[np.ndarray], *, what: str,
                        seed: int = 0) -> dict[str, Any]:
    """A mean of calibrated predictions is less confident than it is right wherever its members
    disagree, and T < 1 of softmax(log(mean) / T) undoes that without moving an arg-max. On the
    sampled pixels of each image (`zs[i]` (m_i, K) log(mean), `ys[i]` labels) T is fitted by NLL and
    adopted only where it holds out of fold (`gate_mean_temperature`); otherwise T stays 1. Returns
    "temperature" (what to store), "fitted_temperature" and the gate's verdict ("gate")."""
    if not sum(len(y) for y in ys):
        verdict = GateResult(False, float("nan"), float("nan"), len(ys), f"{what}: no labelled pixel; T stays 1")
        return {"temperature": 1.0, "fitted_temperature": 1.0, "gate": verdict.to_dict()}
    _, fitted = fitted_fields(np.concatenate(zs), np.concatenate(ys))
    verdict = gate_mean_temperature(zs, ys, what=what, seed=seed)
    return {"temperature": fitted if verdict.adopted else 1.0, "fitted_temperature": fitted, "gate": verdict.to_dict()}


def gate_mean_temperature(zs: Sequence[np.ndarray], ys: Sequence[np.ndarray], *, what: str, seed: int = 0) -> GateResult:
    """Whether a mean's temperature (`recalibrate_mean`; `zs[i]` (m_i, K) log-probabilities of image i's
    sampled pixels, `ys[i]` their labels) is adopted: refitted leaving each fold of images out, the
    held-out images' pooled ECE must fall across images (`unetkit.tuning.gate.decide`).

    ECE, not NLL as for the logits' calibration (`gate_calibration`): sharpening a mean raises the
    likelihood of its many right pixels and lowers it more steeply on its few confident mistakes, so the
    NLL gain is small and noisy even where the confidence plainly falls short of the accuracy (a
    held-out CamVid sequence: ECE 0.038 -> 0.010 with T 0.87, out-of-fold NLL gain +0.006 with a
    bootstrap bound of -0.002)."""
    refused = too_few(len(ys), what)
    if refused is not None:
        return refused

    def lower_ece(pooled: np.ndarray) -> float:
        return -parts_ece(pooled)

    raw_parts, fitted_parts = out_of_fold_parts(zs, ys, ece_parts, 3 * ECE_BINS)
    return decide(raw_parts, fitted_parts, lower_ece, what=what, seed=seed, gain_name="out-of-fold fall in ECE")


def ece_parts(z: np.ndarray, y: np.ndarray, fields: dict[str, Any]) -> np.ndarray:
    """The top-label ECE's bin sums (count, confidence, correct; `ECE_BINS` each) of softmax(z / T), T the
    fields' temperature."""
    p = softmax(z.astype(np.float64) / fields["temperature"], axis=1)
    return np.concatenate(calibration_bins(p.max(1), p.argmax(1) == y, n_bins=ECE_BINS))


def parts_ece(parts: np.ndarray) -> float:
    """The top-label ECE of `ece_parts`' bin sums (one image's, or summed over images)."""
    return expected_calibration_error(*np.asarray(parts).reshape(3, ECE_BINS))


def calibrate_model(
    model: str | Path,
    data: str | Path,
    *,
    keys: Sequence[str] | None = None,
    vector: bool = False,
    out: str | Path | None = None,
    max_pixels: int = DEFAULT_CALIBRATION_PIXELS,
    config: TileConfig = TileConfig(),
    backend: str = "auto",
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit temperature (or per-class vector) scaling on labelled data and store it in the artifact
    (in place, or in a copy at `out`). At most `max_pixels` valid pixels, spread evenly over the
    images, are used for fitting. Returns a JSON-ready summary."""
    artifact, samples = load_labelled(model, data, keys, progress)
    summary = calibrate_samples(artifact, samples, vector=vector, max_pixels=max_pixels, config=config,
                                backend=backend, progress=progress, seed=seed, source=str(data))
    summary |= {"data": str(data), "keys": list(keys or [])}
    target = store_tuning(artifact, out, {"calibration": calibration_record(summary)}, **summary.pop("fields"))
    return json_value(summary | {"artifact": str(target)})


def calibrate_samples(
    artifact: Artifact,
    samples: Sequence[Any],
    *,
    vector: bool = False,
    max_pixels: int = DEFAULT_CALIBRATION_PIXELS,
    config: TileConfig = TileConfig(),
    backend: str = "auto",
    progress: bool = True,
    seed: int = 0,
    source: str = "the validation images",
) -> dict[str, Any]:
    """Fit calibration on labelled `samples` (LoadedSample: image, labels) predicted with
    `artifact`'s raw logits; the summary's `fields` are the ArtifactMeta fields to store: the fit
    when `gate_calibration` adopts it, else the raw logits (`RAW`), with the verdict in `gate`."""
    raw = artifact.with_meta(temperature=1.0, class_scale=(), class_bias=())
    sampler = PixelSampler(len(samples), max_pixels, seed, artifact.meta.ignore_index)
    for sample, logits in iter_probabilities(raw, samples, config, backend=backend, logits=True, progress=progress):
        sampler.add(logits, sample.labels)
    zs, ys = sampler.samples()
    if not ys or sum(len(y) for y in ys) == 0:
        raise DataError(f"{source}: no labelled pixel to calibrate on (every pixel is ignored or outside the ROI)")
    z, y = np.concatenate(zs), np.concatenate(ys)
    fitted = fit_calibration(z, y, artifact.meta, vector)
    verdict = gate_calibration(zs, ys, vector, seed)
    if not verdict.adopted:  # the raw logits stay: "after" is what they score
        fitted |= {"fields": dict(RAW), "after": calibration_scores(scaled(z, (), (), 1.0), y)}
    return {
        "method": "vector" if vector else "temperature",
        **{k: v for k, v in fitted["fields"].items()},
        "fitted_temperature": fitted["fitted_temperature"],
        "gate": verdict.to_dict(),
        "images": len(samples),
        "pixels": int(len(y)),
        **{f"{m}_{when}": fitted[when][m] for m in ("ece", "mce", "nll") for when in ("before", "after")},
        "reliability_before": fitted["before"]["reliability"],
        "reliability_after": fitted["after"]["reliability"],
        "fields": fitted["fields"],
    }


def calibration_record(summary: dict[str, Any]) -> dict[str, Any]:
    """What the artifact's metrics keep of a calibration summary (no reliability bins)."""
    return json_value({k: v for k, v in summary.items() if not k.startswith("reliability") and k != "fields"})
