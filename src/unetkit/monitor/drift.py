"""Compare new images with the drift baseline: PSI and KS per feature, one score, a verdict.

- **PSI** (population stability index) of a feature, on the baseline's bins:
  `sum_i (q_i - p_i) * ln(q_i / p_i)` with `p` the baseline's and `q` the new fractions, both
  floored at `EPSILON` so that an empty bin stays finite (a complete move to an empty bin
  scores about 18). Symmetric, 0 for identical distributions.
- **KS**: `scipy.stats.ks_2samp` of the new values against the baseline's stored sample, for
  scalar features (histogram features have no per-value sample: `None`). Cells of one image
  are not independent samples, so read the p-value as a ranking aid; the verdict uses PSI only.
- **score**: the largest PSI over the features compared. The max, not a mean: drift usually
  moves a few features (a blur: sharpness; a new scanner size: height/width), and a mean over
  ~20 features would dilute exactly those.
- **threshold** 0.2 (`unetkit.config.DRIFT_THRESHOLD`): the credit-scoring rule of thumb reads PSI < 0.1 as
  no change, 0.1-0.25 as a moderate one and > 0.25 as a significant shift; 0.2 flags a shift
  before it becomes significant. On DRIVE a fresh sample of the same distribution scores well
  below it and the drifted copies far above it (docs/monitoring.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from unetkit.config import DRIFT_THRESHOLD
from unetkit.monitor.baseline import Baseline, Reference
from unetkit.monitor.features import bin_fractions

EPSILON = 1e-4


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, epsilon: float = EPSILON) -> float:
    """Population stability index of `actual` fractions against `expected` fractions."""
    p = np.maximum(np.asarray(expected, np.float64), epsilon)
    q = np.maximum(np.asarray(actual, np.float64), epsilon)
    if p.shape != q.shape:
        raise ValueError(f"psi: {p.shape[0]} expected fractions but {q.shape[0]} actual ones")
    return float(np.sum((q - p) * np.log(q / p)))


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    source: str  # input / output
    kind: str  # scalar / histogram
    psi: float
    ks_statistic: float | None
    p_value: float | None
    drifted: bool
    count: int  # new values (scalar) or images (histogram) compared


@dataclass(frozen=True)
class DriftReport:
    features: tuple[FeatureDrift, ...]
    score: float  # max PSI over `features`
    threshold: float
    images: int  # new images measured
    output_images: int  # of which with model outputs
    notes: tuple[str, ...] = field(default=())  # e.g. why output features were left out

    @property
    def drifted(self) -> bool:
        return self.score > self.threshold

    @property
    def worst(self) -> FeatureDrift | None:
        return max(self.features, key=lambda f: f.psi, default=None)

    def verdict(self) -> str:
        worst = self.worst
        where = f" (largest: {worst.name}, PSI {worst.psi:.3f})" if worst is not None else ""
        if self.drifted:
            drifted = sum(f.drifted for f in self.features)
            return (f"DRIFT: score {self.score:.3f} > threshold {self.threshold:g}; {drifted} of "
                    f"{len(self.features)} features shifted{where}")
        return f"no drift: score {self.score:.3f} <= threshold {self.threshold:g}{where}"

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "threshold": self.threshold, "drifted": self.drifted, "verdict": self.verdict(),
                "images": self.images, "output_images": self.output_images, "notes": list(self.notes),
                "features": [f.__dict__ for f in self.features]}

    def table(self) -> Any:
        """A rich Table: one row per feature, most shifted first."""
        from rich.table import Table

        table = Table(title=f"drift of {self.images} images against the baseline", title_justify="left")
        for name, justify in (("feature", "left"), ("PSI", "right"), ("KS", "right"), ("p-value", "right"),
                              ("drifted", "center"), ("n", "right")):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for f in sorted(self.features, key=lambda f: -f.psi):
            table.add_row(f.name, f"{f.psi:.3f}", _num(f.ks_statistic, ".3f"), _num(f.p_value, ".2g"),
                          "[bold red]yes[/]" if f.drifted else "no", str(f.count))
        return table


def _num(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def collect(per_image: Sequence[dict[str, np.ndarray]], baseline: Baseline) -> dict[str, list[np.ndarray]]:
    """The values of each baseline feature over images (an image without a feature adds nothing)."""
    out: dict[str, list[np.ndarray]] = {name: [] for name in baseline.references}
    for features in per_image:
        for name, values in features.items():
            if name in out:
                out[name].append(values)
    return out


def compare_feature(ref: Reference, values: list[np.ndarray], threshold: float) -> FeatureDrift:
    """PSI (and KS for scalars) of one feature's new per-image values against its reference."""
    if ref.kind == "histogram":
        actual = np.mean(np.stack(values), axis=0)
        value = psi(ref.expected, actual)
        return FeatureDrift(ref.name, ref.source, ref.kind, value, None, None, value > threshold, len(values))
    sample = np.concatenate(values)
    value = psi(ref.expected, bin_fractions(sample, ref.edges))
    ks = stats.ks_2samp(sample, np.asarray(ref.sample), method="asymp")
    return FeatureDrift(ref.name, ref.source, ref.kind, value, float(ks.statistic), float(ks.pvalue),
                        value > threshold, int(sample.size))


def compare(
    baseline: Baseline,
    per_image: Sequence[dict[str, np.ndarray]],
    threshold: float = DRIFT_THRESHOLD,
    *,
    outputs: bool = True,
    notes: Sequence[str] = (),
) -> DriftReport:
    """Drift of images measured by `baseline.measure` against the baseline. Output features count
    when `outputs` and at least one image has them."""
    if threshold <= 0:
        raise ValueError(f"threshold {threshold}: expected a positive PSI value")
    values = collect(per_image, baseline)
    rows = [compare_feature(ref, values[ref.name], threshold) for ref in baseline.features
            if values[ref.name] and (outputs or ref.source == "input")]
    output_images = max((len(values[r.name]) for r in baseline.features if r.source == "output"), default=0)
    score = max((f.psi for f in rows), default=0.0)
    return DriftReport(tuple(rows), score, threshold, len(per_image), output_images if outputs else 0, tuple(notes))
