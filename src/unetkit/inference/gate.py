"""The parity gate for reduced-precision predictors (pure numpy).

A bf16 or int8 predictor is eligible for the automatic backend choice only when its labels on a
sample agree with fp32's: label agreement >= 99.5 % and a Dice delta <= 0.002 (int8: <= 0.005).
Without ground truth on the sample, the Dice delta is 1 - the mean foreground Dice of the
candidate's labels against fp32's labels: the most the candidate could change a Dice score
measured against any labels of these pixels, to first order, so it is the stricter reading.

`gate_sample` makes the sample when the model brings none: image-like tiles (smooth shading,
blobs, thin lines, a little noise) in raw intensity units around the training mean, so that the
network sees structure rather than noise and its labels are not all borderline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_AGREEMENT = 0.995
MAX_DICE_DELTA = {"bf16": 0.002, "int8": 0.005}


@dataclass(frozen=True)
class GateResult:
    precision: str  # "bf16" or "int8"
    agreement: float  # fraction of pixels whose arg-max label equals fp32's
    dice_delta: float  # 1 - mean foreground Dice of the candidate's labels against fp32's
    max_abs_diff: float  # largest |difference| of the outputs (logits or probabilities)
    passed: bool
    reason: str  # "" when passed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity_gate(reference: np.ndarray, candidate: np.ndarray, precision: str) -> GateResult:
    """Gate `candidate` outputs (N, K, h, w) against fp32 `reference` outputs of the same batch."""
    if precision not in MAX_DICE_DELTA:
        raise ValueError(f"parity_gate: precision {precision!r}; expected one of {list(MAX_DICE_DELTA)}")
    if reference.shape != candidate.shape:
        return GateResult(precision, 0.0, 1.0, float("inf"), False,
                          f"output shape {candidate.shape} differs from fp32's {reference.shape}")
    if not np.isfinite(candidate).all():
        return GateResult(precision, 0.0, 1.0, float("inf"), False, "non-finite outputs")
    ref, got = reference.argmax(1), candidate.argmax(1)
    agreement = float((ref == got).mean())
    delta = 1.0 - foreground_dice(ref, got, reference.shape[1])
    diff = float(np.abs(candidate.astype(np.float64) - reference).max())
    limit = MAX_DICE_DELTA[precision]
    reasons = []
    if agreement < MIN_AGREEMENT:
        reasons.append(f"label agreement {agreement:.2%} < {MIN_AGREEMENT:.1%}")
    if delta > limit:
        reasons.append(f"Dice delta {delta:.4f} > {limit}")
    return GateResult(precision, agreement, delta, diff, not reasons, "; ".join(reasons))


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
