"""The parity gate for reduced-precision predictors (pure numpy).

A bf16 or int8 predictor is eligible for the automatic backend choice only when its labels agree
with fp32's: label agreement >= 99.5 % and a Dice delta <= 0.002 (int8: <= 0.005).

With the model's validation sample (`GateData`, from the labelled crops training stores in the
artifact and export copies into the plan) the gate is the issue's: agreement with fp32's labels on
the sample's labelled pixels, and Dice delta = |Dice(fp32 vs truth) - Dice(candidate vs truth)|,
the mean foreground Dice pooled over the crops (`metrics.summary.evaluate_predictions`, the score
the int8 export's gate compares on validation images).

Without one (older artifacts, plain modules, random-weight benchmarks) there is no truth: the Dice
delta is 1 - the mean foreground Dice of the candidate's labels against fp32's labels, the most the
candidate could change a Dice score measured against any labels of these pixels (to first order),
so the stricter reading; the result says so (`basis`). `gate_sample` makes image-like tiles for it
(smooth shading, blobs, thin lines, a little noise) in raw units around the training mean, so that
the network sees structure rather than noise and its labels are not all borderline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from unetkit.config import MIN_AGREEMENT
from unetkit.metrics.summary import evaluate_predictions

MAX_DICE_DELTA = {"bf16": 0.002, "int8": 0.005}
NO_SAMPLE = "no validation sample: compared with fp32's labels"


@dataclass(frozen=True)
class GateResult:
    precision: str  # "bf16" or "int8"
    agreement: float  # fraction of (labelled) pixels whose arg-max label equals fp32's
    dice_delta: float  # see the module docstring: against the truth with a sample, else against fp32's labels
    max_abs_diff: float | None  # largest |difference| of the outputs; None when fp32's labels were stored, not run
    passed: bool
    reason: str  # "" when passed
    basis: str = NO_SAMPLE  # what the candidate was compared with
    fp32_dice: float | None = None  # mean foreground Dice against the truth (with a sample)
    candidate_dice: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateData:
    """Labelled images the gate runs on: a model's validation sample (`artifact.ValidationSample`)."""

    images: np.ndarray  # (N, C, h, w) float32, raw units
    truth: np.ndarray  # (N, h, w) labels
    class_names: tuple[str, ...]
    ignore_index: int = 255
    fp32_labels: np.ndarray | None = None  # fp32's labels when no fp32 model is at hand (an exported model)

    @classmethod
    def from_sample(cls, sample: Any, class_names: Sequence[str], ignore_index: int) -> GateData | None:
        if sample is None:
            return None
        return cls(sample.float_images(), np.asarray(sample.labels), tuple(class_names), int(ignore_index),
                   None if sample.fp32_labels is None else np.asarray(sample.fp32_labels))

    @property
    def basis(self) -> str:
        n, _, h, w = self.images.shape
        return f"validation sample: {n} crop(s) of {h}x{w}, Dice against their truth"


def parity_gate(reference: np.ndarray | None, candidate: np.ndarray, precision: str, data: GateData | None = None) -> GateResult:
    """Gate `candidate` outputs (N, K, h, w) against fp32 `reference` outputs of the same batch.

    With `data`, the batch is `data.images` and the Dice delta is measured against `data.truth`;
    `reference` may then be None when `data.fp32_labels` holds fp32's labels."""
    if precision not in MAX_DICE_DELTA:
        raise ValueError(f"parity_gate: precision {precision!r}; expected one of {list(MAX_DICE_DELTA)}")
    basis = data.basis if data is not None else NO_SAMPLE
    if reference is None:
        if data is None or data.fp32_labels is None:
            raise ValueError("parity_gate: no fp32 reference (outputs or stored labels)")
        ref, shape = data.fp32_labels, (candidate.shape[0], *data.fp32_labels.shape[1:])
    else:
        ref, shape = reference.argmax(1), reference.shape
    expected = shape if reference is not None else (shape[0], candidate.shape[1], *shape[1:])
    if candidate.shape != expected:
        return GateResult(precision, 0.0, 1.0, None, False, f"output shape {candidate.shape} differs from fp32's {expected}", basis)
    if not np.isfinite(candidate).all():
        return GateResult(precision, 0.0, 1.0, None, False, "non-finite outputs", basis)
    got = candidate.argmax(1)
    diff = None if reference is None else float(np.abs(candidate.astype(np.float64) - reference).max())
    fp32_dice = candidate_dice = None
    if data is None:
        agreement = float((ref == got).mean())
        delta = 1.0 - foreground_dice(ref, got, candidate.shape[1])
    else:
        agreement = label_agreement([(ref, got, data.truth)], data.ignore_index)
        fp32_dice, candidate_dice = (truth_dice(labels, data) for labels in (ref, got))
        delta = dice_delta(fp32_dice, candidate_dice)
    limit = MAX_DICE_DELTA[precision]
    reasons = []
    if agreement < MIN_AGREEMENT:
        reasons.append(f"label agreement {agreement:.2%} < {MIN_AGREEMENT:.1%}")
    if delta > limit:
        reasons.append(f"Dice delta {delta:.4f} > {limit}")
    return GateResult(precision, agreement, delta, diff, not reasons, "; ".join(reasons), basis, fp32_dice, candidate_dice)


def label_agreement(maps: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], ignore_index: int) -> float:
    """The fraction of labelled pixels (truth != `ignore_index`) where two label maps agree, pooled over
    (reference, candidate, truth) triples of any sizes; 1.0 when no pixel is labelled."""
    same = labelled = 0
    for ref, got, truth in maps:
        mask = np.asarray(truth) != ignore_index
        same += int((np.asarray(ref) == np.asarray(got))[mask].sum())
        labelled += int(mask.sum())
    return same / labelled if labelled else 1.0


def truth_dice(labels: np.ndarray, data: GateData) -> float | None:
    """Mean foreground Dice of label maps (N, h, w) against `data.truth`, pooled over the crops (None: no
    foreground in the truth or the labels)."""
    items = ((str(i), labels[i], data.truth[i]) for i in range(len(labels)))
    value = evaluate_predictions(items, data.class_names, data.ignore_index).get("mean_dice_foreground")
    return None if value is None or not np.isfinite(value) else float(value)


def dice_delta(fp32: float | None, candidate: float | None) -> float:
    """|fp32 - candidate|; 0 when neither has a score, 1 when only one has."""
    if fp32 is None or candidate is None:
        return 0.0 if fp32 is candidate else 1.0
    return abs(fp32 - candidate)


def foreground_dice(reference: np.ndarray, candidate: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the foreground classes (1..K-1) present in either label map; 1.0 when none is."""
    scores = []
    for k in range(1, max(num_classes, 2)):
        a, b = reference == k, candidate == k
        total = int(a.sum()) + int(b.sum())
        if total:
            scores.append(2.0 * int((a & b).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


def gate_sample(
    in_channels: int, tile: Sequence[int], batch_size: int = 4, mean: Sequence[float] = (127.5,),
    std: Sequence[float] = (50.0,), seed: int = 0,
) -> np.ndarray:
    """(batch_size, C, h, w) float32 image-like tiles in raw units: mean + std * pattern, per channel."""
    rng = np.random.default_rng(seed)
    h, w = int(tile[0]), int(tile[-1])
    c = in_channels
    m = np.broadcast_to(np.asarray(mean, np.float32).reshape(-1), (c,)).reshape(1, c, 1, 1)
    s = np.broadcast_to(np.asarray(std, np.float32).reshape(-1), (c,)).reshape(1, c, 1, 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tiles = []
    for _ in range(batch_size):
        shading = np.sin(xx / rng.uniform(4, 16) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(4, 16))
        blobs = sum((np.hypot(yy - rng.uniform(0, h), xx - rng.uniform(0, w)) < rng.uniform(2, max(3, h / 6))).astype(np.float32)
                    for _ in range(4))
        slope, period = rng.uniform(-1.5, 1.5), rng.uniform(9, 23)
        lines = (np.abs((yy - slope * xx) % period) < 1.2).astype(np.float32)
        pattern = 0.6 * shading + 1.2 * blobs - 1.5 * lines
        tiles.append(pattern[None] + 0.2 * rng.standard_normal((c, h, w)).astype(np.float32))
    return (m + s * np.stack(tiles)).astype(np.float32)
