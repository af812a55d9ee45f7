"""A training plan: every planned setting with its value, why, and who chose it.

`Plan.settings()` is a flat mapping of dotted TrainConfig keys (`model.base_width`,
`data.patch_size`, `loss.cldice`, ...) that `apply_plan` writes into a TrainConfig with
`unetkit.config.replace`. `format_plan` is the table `unetkit plan` and `unetkit train --budget`
print; `Plan.to_dict()` is what the artifact stores (`ArtifactMeta.plan`) and `--json` writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from unetkit.config import PLANNED, USER, TrainConfig, replace


@dataclass(frozen=True)
class Choice:
    key: str  # dotted TrainConfig key, or "plan.<name>" for information that is not a config value
    value: Any
    reason: str
    source: str = PLANNED  # "plan" or "user" (an explicit flag or config-file value)


@dataclass(frozen=True)
class Plan:
    budget_seconds: float
    choices: tuple[Choice, ...]
    estimates: dict[str, Any] = field(default_factory=dict)  # seconds/step, steps, validation seconds...
    candidates: tuple[dict[str, Any], ...] = ()  # every candidate considered: cost, steps, chosen

    def settings(self) -> dict[str, Any]:
        """Dotted TrainConfig keys -> values (informational `plan.*` entries left out)."""
        return {c.key: c.value for c in self.choices if not c.key.startswith("plan.")}

    def value(self, key: str) -> Any:
        for c in self.choices:
            if c.key == key:
                return c.value
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps({
            "budget_seconds": self.budget_seconds,
            "choices": [{"key": c.key, "value": c.value, "reason": c.reason, "source": c.source}
                        for c in self.choices],
            "estimates": self.estimates,
            "candidates": list(self.candidates),
        }, default=float))


def apply_plan(config: TrainConfig, plan: Plan) -> TrainConfig:
    """`config` with every planned setting written in and the plan itself stored (`config.plan`)."""
    return replace(config, **plan.settings(), plan=plan.to_dict())


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            return f"{value[0]}x{value[1]}"
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value)


def format_plan(plan: Plan, width: int = 100) -> str:
    """A readable table: setting, value, who chose it, why."""
    rows = [(c.key, _show(c.value), "you" if c.source == USER else "plan", c.reason) for c in plan.choices]
    k_w = max(len(r[0]) for r in rows)
    v_w = min(22, max(len(r[1]) for r in rows))
    est = plan.estimates
    total = est.get("total_budget_seconds", plan.budget_seconds)
    lines = [f"Training plan for a {total / 60:.1f} min budget"
             + (f" ({est['summary']})" if est.get("summary") else ""), ""]
    lines.append(f"{'setting':<{k_w}}  {'value':<{v_w}}  {'by':<4}  why")
    lines.append("-" * min(width + 40, k_w + v_w + 60))
    for key, value, who, why in rows:
        lines.append(f"{key:<{k_w}}  {value:<{v_w}}  {who:<4}  {why}")
    if plan.candidates:
        lines += ["", "candidates (seconds/step on this machine; * = chosen):"]
        for c in plan.candidates:
            mark = "*" if c.get("chosen") else " "
            how = "timed" if c.get("timed") else "estimated"
            lines.append(f" {mark} {c['label']:<26} {c['seconds_per_step'] * 1000:9.1f} ms/step ({how})"
                         f"  -> {c['steps']:>7} steps")
    if est.get("mode_timings"):
        chosen = est.get("compute_mode", {}).get("mode")
        lines += ["", "compute modes (ms/step on this machine, interleaved probes; * = chosen):"]
        for row in est["mode_timings"]:
            times = "  ".join(f"{'*' if name == chosen else ' '}{name} {s * 1000:.1f}"
                              for name, s in row["seconds_per_step"].items())
            lines.append(f"   {row['candidate']:<26} {times}")
    return "\n".join(lines)
