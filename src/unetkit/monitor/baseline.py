"""The drift baseline: what the training data and the trained model's answers looked like.

`build_baseline(images, outputs, ...)` turns training images (and the model's probabilities and
labels on validation images) into one `Reference` per feature, sized to fit in the artifact's
metadata (`ArtifactMeta.drift_baseline`, a JSON dict with a `schema` version):

- scalar features: bin edges at the baseline's deciles (fewer quantiles for small baselines, see
  `scalar_bins`; ties merged; the first and last bins catch values below the minimum / above the
  maximum), the baseline's fraction per bin, and a sample of at most `SAMPLE_CAP` values
  (evenly spaced quantiles) for the KS test;
- histogram features: the fixed bin edges and the mean of the per-image fractions (every image
  weighs the same, whatever its size).

`Baseline.measure(image, probabilities, labels)` computes the same features on a new image, so
the baseline, `unetkit drift` and the server measure alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from unetkit.config import from_dict, to_dict
from unetkit.data.splits import spread
from unetkit.errors import ConfigError
from unetkit.monitor import features as F

SCHEMA_VERSION = 1
QUANTILE_BINS = 10  # scalar features: decile bins, the usual PSI choice...
VALUES_PER_BIN = 16  # ...but fewer when the baseline is small: PSI's sampling noise grows with bins / values
INTENSITY_BINS = 32
SAMPLE_CAP = 1000  # values kept per scalar feature for the KS test
MAX_INPUT_IMAGES = 512  # images measured for the input baseline (evenly spread when there are more)
MAX_OUTPUT_IMAGES = 32  # images predicted for the output baseline...
MIN_OUTPUT_IMAGES = 12  # ...topped up with training images when the validation split is smaller

Kind = Literal["scalar", "histogram"]
Source = Literal["input", "output"]


@dataclass(frozen=True)
class Reference:
    """The baseline of one feature: bins, the baseline's fraction in each, and (scalar) a sample."""

    name: str
    kind: Kind
    source: Source
    edges: tuple[float, ...]
    expected: tuple[float, ...]  # len(edges) + 1 fractions
    count: int  # values (scalar features) or images (histogram features) behind `expected`
    sample: tuple[float, ...] = ()


@dataclass(frozen=True)
class Baseline:
    schema: int
    grid: int
    channels: int
    class_names: tuple[str, ...]
    input_images: int
    output_images: int
    outputs_of: dict[str, Any]  # the pipeline settings the output features were measured with
    features: tuple[Reference, ...]
    seconds: float = 0.0  # time it took to build

    @property
    def references(self) -> dict[str, Reference]:
        return {r.name: r for r in self.features}

    @property
    def has_outputs(self) -> bool:
        return self.output_images > 0

    def intensity_edges(self) -> list[tuple[float, ...]]:
        refs = self.references
        return [refs[f"intensity.c{c}"].edges for c in range(self.channels)]

    def measure(self, image: np.ndarray, probabilities: np.ndarray | None = None,
                labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The baseline's features of one `(C, H, W)` image (and of the model's `(K, H, W)`
        probabilities and `(H, W)` labels for it, when given and the baseline has outputs)."""
        if image.ndim != 3 or image.shape[0] != self.channels:
            raise ValueError(f"image of shape {image.shape}: the drift baseline expects ({self.channels}, H, W)")
        out = F.image_statistics(image, self.grid) | F.intensity_histograms(image, self.intensity_edges())
        if probabilities is not None and labels is not None and self.has_outputs:
            out |= F.output_statistics(probabilities, labels, self.class_names, self.grid)
        return out

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "drift_baseline") -> Baseline:
        """Parse a stored baseline; a missing, older/newer or malformed one is a `ConfigError`
        naming `where` and what to do."""
        if not data:
            raise ConfigError(f"{where}: the model has no drift baseline; add one with "
                              "`unetkit drift MODEL --baseline-from TRAINING_DATA`")
        if data.get("schema") != SCHEMA_VERSION:
            raise ConfigError(f"{where}.schema: {data.get('schema')!r} is not the supported drift baseline schema "
                              f"{SCHEMA_VERSION}; rebuild it with `unetkit drift MODEL --baseline-from TRAINING_DATA`")
        return from_dict(cls, data, where)


def outputs_signature(meta: Any, weights_sha256: str | None = None) -> dict[str, Any]:
    """What decides a model's probabilities and labels: weights, calibration, TTA, multi-scale, postprocessing."""
    return {"weights_sha256": weights_sha256 or meta.weights_sha256, "temperature": meta.temperature,
            "class_scale": list(meta.class_scale), "class_bias": list(meta.class_bias),
            "tta": bool(meta.tta), "tta_temperature": meta.tta_temperature, "resolutions": list(meta.resolutions),
            "resolutions_temperature": meta.resolutions_temperature, "postprocess": meta.postprocess}


def outputs_mismatch(baseline: Baseline, meta: Any) -> str | None:
    """Why the baseline's output features do not describe this model (None when they do)."""
    if not baseline.has_outputs:
        return "the baseline has no output statistics"
    now = outputs_signature(meta)
    changed = [k for k, v in baseline.outputs_of.items() if now.get(k) != v]
    if changed:
        return (f"the model's {', '.join(changed)} changed since the baseline was measured; rebuild it with "
                "`unetkit drift MODEL --baseline-from TRAINING_DATA`")
    return None


# ---------------------------------------------------------------- building


def scalar_bins(count: int) -> int:
    """Quantile bins for a baseline of `count` values: 10, or fewer so that each holds at least
    `VALUES_PER_BIN` of them (never fewer than 2). Two samples of one distribution have an
    expected PSI of about (bins - 1) x (1/n + 1/m), so bins must stay well below n x threshold."""
    return int(np.clip(count // VALUES_PER_BIN, 2, QUANTILE_BINS))


def quantile_edges(values: np.ndarray, bins: int | None = None) -> np.ndarray:
    """Edges at the quantiles of `values` (`scalar_bins` of them unless given; ties merged); the
    maximum stays inside the last bin."""
    bins = bins or scalar_bins(np.size(values))
    edges = np.unique(np.quantile(np.asarray(values, np.float64), np.linspace(0.0, 1.0, bins + 1)))
    top = np.nextafter(edges[-1], np.inf)
    return np.array([edges[0], top]) if len(edges) == 1 else np.append(edges[:-1], top)  # constant: own bin


def capped_sample(values: np.ndarray, cap: int = SAMPLE_CAP) -> np.ndarray:
    values = np.sort(np.asarray(values, np.float64))
    return values if values.size <= cap else np.quantile(values, np.linspace(0.0, 1.0, cap))


def scalar_reference(name: str, source: Source, values: np.ndarray) -> Reference:
    values = np.asarray(values, np.float64).ravel()
    if values.size == 0:
        raise ConfigError(f"drift baseline: feature {name} has no values")
    edges = quantile_edges(values)
    return Reference(name, "scalar", source, tuple(edges.tolist()), tuple(F.bin_fractions(values, edges).tolist()),
                     int(values.size), tuple(float(f"{v:.6g}") for v in capped_sample(values)))


def histogram_reference(name: str, source: Source, edges: Sequence[float], fractions: Sequence[np.ndarray]) -> Reference:
    mean = np.mean(np.stack(fractions), axis=0)
    return Reference(name, "histogram", source, tuple(float(e) for e in edges), tuple(mean.tolist()), len(fractions))


def references(per_image: Sequence[dict[str, np.ndarray]], source: Source,
               histogram_edges: dict[str, Sequence[float]]) -> list[Reference]:
    """One Reference per feature of `per_image` (features named in `histogram_edges` are histograms)."""
    refs = []
    for name in per_image[0]:
        values = [f[name] for f in per_image]
        if name in histogram_edges:
            refs.append(histogram_reference(name, source, histogram_edges[name], values))
        else:
            refs.append(scalar_reference(name, source, np.concatenate(values)))
    return refs


def output_sample(held_out: Sequence[Any], train: Sequence[Any]) -> tuple[list[Any], int]:
    """The images (or paths) the output baseline is measured on, and how many are training images:
    the held-out images (at most `MAX_OUTPUT_IMAGES`, evenly spread), topped up to
    `MIN_OUTPUT_IMAGES` with evenly spread training images. A handful of validation images makes a
    noisy baseline (on DRIVE, 5 validation images put the same-camera test set at PSI 0.42 on the
    vessel fraction, 8 at 0.16, 12 at 0.07, 20 at 0.06), and the model's outputs on its training
    images were not measurably more confident there (confidence/entropy PSI < 0.001 against the
    test set). Each image costs a prediction, hence 12 rather than more."""
    picked = spread(held_out, MAX_OUTPUT_IMAGES)
    extra = spread(train, max(0, MIN_OUTPUT_IMAGES - len(picked)))
    return picked + extra, len(extra)


def baseline_validations(train_images: int, val_images: int) -> float:
    """What the output baseline costs at the end of training, in validation passes (images
    predicted for it / validation images)."""
    picked, _ = output_sample(range(val_images), range(train_images))
    return len(picked) / max(val_images, 1)


def build_baseline(
    images: Sequence[np.ndarray],
    outputs: Iterable[tuple[np.ndarray, np.ndarray]] = (),
    *,
    class_names: Sequence[str],
    outputs_of: dict[str, Any] | None = None,
    grid: int = F.GRID,
) -> Baseline:
    """The baseline of `images` (`(C, H, W)` raw units; typically the training images) and of
    `outputs`, `(probabilities (K, H, W), labels (H, W))` pairs of the model on held-out images,
    consumed one at a time."""
    start = time.perf_counter()
    picked = spread(range(len(images)), MAX_INPUT_IMAGES)  # `images` may read files lazily: two passes
    if not picked:
        raise ConfigError("drift baseline: no images to measure")
    try:
        edges = F.intensity_range((images[i] for i in picked), INTENSITY_BINS)
    except ValueError as e:
        raise ConfigError(f"drift baseline: {e}") from None
    per_image = [F.image_statistics(im, grid) | F.intensity_histograms(im, edges) for im in (images[i] for i in picked)]
    refs = references(per_image, "input", {f"intensity.c{c}": e for c, e in enumerate(edges)})
    measured = [F.output_statistics(p, lab, class_names, grid) for p, lab in outputs]
    if measured:
        k = len(class_names)
        refs += references(measured, "output", {"confidence": F.confidence_edges(k), "entropy": F.entropy_edges()})
    return Baseline(schema=SCHEMA_VERSION, grid=grid, channels=len(edges), class_names=tuple(class_names),
                    input_images=len(picked), output_images=len(measured),
                    outputs_of=(outputs_of or {}) if measured else {}, features=tuple(refs),
                    seconds=round(time.perf_counter() - start, 3))
