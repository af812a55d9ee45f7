"""Fitting a run into a wall-clock budget: measure, then fix the number of steps.

The run trains a few probe steps at the provisional schedule, times them (the first step, with its
one-off allocations, is excluded), times one validation and one checkpoint save, then fixes
`total_steps` so that steps + periodic validations + the final validation and saves end inside
the budget. While it runs, the plan is refreshed every ~5% of the budget from the recent step
times (a shared machine speeds up and slows down), so the schedule still decays to its end when
the budget runs out. The plan is stored in the checkpoint; a resumed run keeps it as it is (no
re-planning), so resume is exact. A guard before every step stops cleanly if time runs out anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


def plan_total_steps(*, steps_done: int, seconds_left: float, seconds_per_step: float,
                     val_seconds: float, val_every: int, reserve_seconds: float) -> int:
    """Steps that fit in `seconds_left - reserve_seconds`, each also paying 1/val_every of a validation."""
    per_step = seconds_per_step + val_seconds / max(val_every, 1)
    usable = seconds_left - reserve_seconds
    if per_step <= 0:
        return steps_done
    return steps_done + max(0, int(usable / per_step))


RESERVE_FRACTION = 0.03  # of the budget: a margin for what the timings did not foresee
RESERVE_MARGIN_SECONDS = 0.1


def reserve_seconds(val_seconds: float, end_passes: float, *, save_seconds: float = 0.0, budget: float = 0.0,
                    end_seconds: float = 0.0) -> float:
    """Time kept for the end of a run: `end_passes` validation passes of `val_seconds` each (the
    final validation, calibration, postprocessing tuning, the drift baseline's predictions), the
    `end_seconds` of end work timed apart (`finish.end_seconds`: the object score's search), three
    saves (last and best checkpoints, the artifact) and a margin: 3 % of `budget` (0: none) + 0.1 s.

    The one model of the end-of-run reserve: the planner (R11, R12), the `BudgetClock` and the
    ensemble's split of the budget between members all reserve with it."""
    return (end_passes * val_seconds + end_seconds + 3.0 * save_seconds + RESERVE_FRACTION * budget
            + RESERVE_MARGIN_SECONDS)


@dataclass
class BudgetClock:
    """Wall-clock deadline and the step-time measurements the plan needs (main process only)."""

    budget: float  # seconds; 0 = no budget
    started: float = field(default_factory=time.perf_counter)
    probe_min_steps: int = 5
    step_times: list[float] = field(default_factory=list)
    val_seconds: float = 0.0
    save_seconds: float = 0.0
    end_passes: float = 2.0  # the end of the run in validation passes (set by fit: `finish.end_passes`)
    end_seconds: float = 0.0  # the end's work timed in seconds, apart from the passes (set by fit: `finish.end_seconds`)
    time_end: Callable[[np.ndarray], float] | None = None  # times it again on a model's probabilities (run_steps)
    excluded: float = 0.0  # validation/save time inside the current step's wall time
    last_plan: float = -1.0  # elapsed() at the last plan

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def seconds_left(self) -> float:
        return self.budget - self.elapsed()

    def deadline(self, reserve_passes: float = 0.0) -> float | None:
        """The budget's end as a `time.monotonic()` value, `reserve_passes` validation passes early
        (work that must still follow), or None without a budget."""
        if not self.enabled:
            return None
        return time.monotonic() + self.seconds_left() - reserve_passes * self.val_seconds

    def exclude(self, seconds: float) -> float:
        """Time spent validating/saving during a step: not part of the step time."""
        self.excluded += seconds
        return seconds

    def record_step(self, wall_seconds: float) -> None:
        self.step_times.append(max(wall_seconds - self.excluded, 0.0))
        self.excluded = 0.0

    def seconds_per_step(self) -> float:
        """Median of the recent step times, the first one excluded (one-off set-up costs)."""
        times = self.step_times[1:] or self.step_times
        recent = sorted(times[-50:])
        return recent[len(recent) // 2] if recent else 0.0

    def probe_done(self) -> bool:
        """Enough steps timed: at least `probe_min_steps` and ~3% of the budget (at most 30 s)."""
        timed = self.step_times[1:]
        return len(timed) >= self.probe_min_steps and sum(timed) >= min(0.03 * self.budget, 30.0)

    def reserve(self) -> float:
        return reserve_seconds(self.val_seconds, self.end_passes, save_seconds=self.save_seconds, budget=self.budget,
                               end_seconds=self.end_seconds)

    def time_to_plan(self, decided: bool, resumed: bool) -> bool:
        """First plan once the probe is done; then every ~5% of the budget (never in a resumed run)."""
        if not decided:
            return self.probe_done()
        return not resumed and self.elapsed() - self.last_plan >= max(0.05 * self.budget, 1.0)

    def plan(self, steps_done: int, val_every: int) -> int:
        self.last_plan = self.elapsed()
        return plan_total_steps(
            steps_done=steps_done, seconds_left=self.seconds_left(), seconds_per_step=self.seconds_per_step(),
            val_seconds=self.val_seconds, val_every=val_every, reserve_seconds=self.reserve(),
        )

    def out_of_time(self) -> bool:
        """True when one more step would eat into the time reserved for the end of the run."""
        if not self.enabled or not self.step_times:
            return False
        return self.seconds_left() < self.reserve() + 1.5 * self.seconds_per_step()
