"""The promotion gate (pure): is a candidate's validation no worse than production's?

Metrics come from the artifacts' `metrics` (nested sections such as `calibration` are flattened to
`calibration/ece_after`). Each metric's direction is read from its name: higher is better for
IoU, Dice, AUC, AP, accuracy, precision, recall; lower for ECE, NLL, HD95, ASSD and errors
(adapted Rand error). A metric whose name says neither (step, temperature, pixel counts) is not
gated, nor are `*_before` values (calibration's starting point, not what is served). Every gated
metric production has must be present in the candidate and worse by at most its tolerance
(absolute, in the metric's own units: 0.005 by default; HD95 in pixels usually needs its own).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from unetkit.errors import RegistryError

Direction = Literal["higher", "lower"]
DEFAULT_TOLERANCE = 0.005
# The most a tolerance may be before it overrides the gate (a registry's policy may change them): a key
# is a metric's full name, a word of it (`hd95` covers `hd95/cell`), or `*` for the rest. Scores are
# fractions; distances are in pixels.
MAX_TOLERANCE = {"*": 0.05, "hd95": 5.0, "assd": 5.0}
HIGHER = frozenset({"iou", "dice", "cldice", "auc", "ap", "accuracy", "precision", "recall", "f1",
                    "sensitivity", "specificity"})
LOWER = frozenset({"ece", "mce", "nll", "brier", "hd95", "assd", "error", "loss"})


def direction(name: str) -> Direction | None:
    """'higher' or 'lower' (is better) from the metric's name; None when it is not a quality metric."""
    for token in re.split(r"[^a-z0-9]+", name.lower()):
        if token in HIGHER:
            return "higher"
        if token in LOWER:
            return "lower"
    return None


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric values by name; nested mappings become `section/name` (lists and strings are dropped)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


@dataclass(frozen=True)
class MetricCheck:
    name: str
    direction: Direction
    candidate: float | None  # None: the candidate does not report it
    production: float
    tolerance: float

    @property
    def worse_by(self) -> float:
        """How much worse the candidate is (0 when equal or better; inf when missing)."""
        if self.candidate is None or math.isnan(self.candidate):
            return math.inf
        gap = self.production - self.candidate if self.direction == "higher" else self.candidate - self.production
        return max(gap, 0.0)

    @property
    def ok(self) -> bool:
        return self.worse_by <= self.tolerance + 1e-12

    def describe(self) -> str:
        if self.candidate is None or math.isnan(self.candidate):
            return f"{self.name} is missing from the candidate (production: {self.production:.4g})"
        return (f"{self.name} is {self.worse_by:.4g} worse ({self.candidate:.4g} vs production {self.production:.4g}, "
                f"{self.direction} is better, tolerance {self.tolerance:g})")


@dataclass(frozen=True)
class GateResult:
    against: str | None  # the production version compared with ("name:version"); None: nothing to compare
    checks: tuple[MetricCheck, ...] = ()
    not_gated: tuple[str, ...] = field(default=())  # metrics without a direction, or NaN in production

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[MetricCheck]:
        return sorted((c for c in self.checks if not c.ok), key=lambda c: -c.worse_by)

    def summary(self) -> str:
        if self.against is None:
            return "no production version to compare with"
        if self.passed:
            return f"{len(self.checks)} metrics no worse than {self.against} beyond tolerance"
        failures = self.failures
        text = "; ".join(c.describe() for c in failures[:3])
        more = f" (+{len(failures) - 3} more)" if len(failures) > 3 else ""
        return f"worse than {self.against}: {text}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "against": self.against, "passed": self.passed, "not_gated": list(self.not_gated),
            "checks": [{"metric": c.name, "direction": c.direction, "candidate": _json_number(c.candidate),
                        "production": c.production, "worse_by": _json_number(c.worse_by),
                        "tolerance": c.tolerance, "ok": c.ok} for c in self.checks],
        }


def check(candidate: Mapping[str, Any], production: Mapping[str, Any] | None, against: str | None = None,
          tolerance: float = DEFAULT_TOLERANCE, tolerances: Mapping[str, float] | None = None,
          only: Sequence[str] | None = None) -> GateResult:
    """Compare a candidate's metrics with production's (None: no production, the gate passes).

    `tolerances` overrides `tolerance` per metric; `only` restricts the gate to these metrics."""
    if production is None:
        return GateResult(against=None)
    tolerances = dict(tolerances or {})
    cand, prod = flatten_metrics(candidate), flatten_metrics(production)
    unknown = [n for n in [*tolerances, *(only or [])] if n not in prod]
    if unknown:
        raise RegistryError(f"metric {unknown[0]!r} is not among production's metrics {sorted(prod)}")
    names = [n for n in prod if only is None or n in only]
    checks, not_gated = [], []
    for name in names:
        way = None if name.endswith("_before") else direction(name)
        if way is None or math.isnan(prod[name]):
            not_gated.append(name)
            continue
        checks.append(MetricCheck(name, way, cand.get(name), prod[name], tolerances.get(name, tolerance)))
    if only and not checks:
        raise RegistryError(f"none of the metrics {list(only)} can be gated (no direction, or NaN in production)")
    return GateResult(against=against, checks=tuple(checks), not_gated=tuple(not_gated))


def loosening(full: GateResult, tolerance: float, tolerances: Mapping[str, float] | None,
              only: Sequence[str] | None, limits: Mapping[str, float] | None = None) -> list[str]:
    """How these options loosen the gate beyond policy (empty: they do not). `full` is the gate over
    every metric; `limits` the registry's maximum tolerances (over MAX_TOLERANCE). A tolerance above
    its maximum, or `only` leaving gated metrics out, overrides the gate as `--force` does, and is
    recorded so."""
    limits = {**MAX_TOLERANCE, **(limits or {})}
    reasons = []
    for c in full.checks:
        allowed = (tolerances or {}).get(c.name, tolerance)
        words = [w for w in re.split(r"[^a-z0-9]+", c.name.lower()) if w in limits]
        limit = limits.get(c.name, limits[words[0]] if words else limits["*"])
        if allowed > limit + 1e-12:
            reasons.append(f"tolerance {allowed:g} for {c.name} is above the registry's maximum {limit:g}")
    left_out = [c.name for c in full.checks if only is not None and c.name not in only]
    if left_out:
        reasons.append(f"--metric leaves {', '.join(left_out)} out of the gate")
    return reasons


def parse_tolerances(values: Sequence[str], default: float | None = DEFAULT_TOLERANCE) -> tuple[Any, dict[str, float]]:
    """CLI values: `0.01` sets the default, `NAME=VALUE` one metric's tolerance."""
    per_metric: dict[str, float] = {}
    for raw in values:
        name, _, number = raw.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise RegistryError(f"--tolerance {raw!r}: expected a number (0.01) or METRIC=NUMBER (hd95=2)") from None
        if value < 0 or math.isnan(value):
            raise RegistryError(f"--tolerance {raw!r}: must be >= 0")
        if name:
            per_metric[name] = value
        else:
            default = value
    return default, per_metric


def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) or math.isnan(value) else value
