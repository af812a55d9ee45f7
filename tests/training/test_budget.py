"""Budget planning arithmetic and checkpoint RNG round trips (pure, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetkit.errors import ArtifactError
from unetkit.training.budget import BudgetClock, plan_total_steps, reserve_seconds
from unetkit.training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint


def test_plan_pays_for_validations_and_the_reserve() -> None:
    # 10 s left, 2 s reserved, 0.1 s/step + a 1 s validation every 10 steps = 0.2 s/step -> 40 steps
    assert plan_total_steps(steps_done=5, seconds_left=10.0, seconds_per_step=0.1, val_seconds=1.0,
                            val_every=10, reserve_seconds=2.0) == 45
    assert plan_total_steps(steps_done=5, seconds_left=1.0, seconds_per_step=0.1, val_seconds=0.0,
                            val_every=10, reserve_seconds=2.0) == 5  # no time left: no more steps
    # end passes x validation + three saves + 3 % of the budget + 0.1 s
    assert reserve_seconds(1.0, 3.4, save_seconds=0.5, budget=100.0) == pytest.approx(3.4 + 1.5 + 3.0 + 0.1)
    assert reserve_seconds(2.0, 4.0) == pytest.approx(8.0 + 0.1)  # no budget: no share of it as margin
    clock = BudgetClock(budget=100.0, val_seconds=1.0, save_seconds=0.5, end_passes=3.4)
    assert clock.reserve() == reserve_seconds(1.0, 3.4, save_seconds=0.5, budget=100.0)
    # end work timed in seconds (the object score's search) is kept on top of the passes
    assert reserve_seconds(1.0, 3.4, save_seconds=0.5, budget=100.0, end_seconds=20.0) == pytest.approx(28.0)
    clock.end_seconds = 20.0
    assert clock.reserve() == pytest.approx(28.0)


def test_clock_ignores_the_first_step_and_guards_the_deadline() -> None:
    clock = BudgetClock(budget=10.0, probe_min_steps=2)
    for t in (5.0, 0.2, 0.2, 0.3):
        clock.record_step(t)
    assert clock.seconds_per_step() == pytest.approx(0.2)  # median, first (set-up) step excluded
    assert clock.probe_done()
    clock.started -= 9.5  # 0.5 s left: less than the reserve plus a step
    assert clock.out_of_time()
    assert not BudgetClock(budget=0.0).out_of_time()


class _Sampler:
    def __init__(self) -> None:
        self.rng = np.random.default_rng(3)

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path) -> None:
    sampler = _Sampler()
    torch.manual_seed(1)
    np.random.seed(2)
    path = save_checkpoint(tmp_path / "c.pt", {"rng": capture_rng(sampler)})
    expected = (torch.rand(3), np.random.rand(3), sampler.rng.random(3))
    restore_rng(load_checkpoint(path)["rng"], sampler)
    got = (torch.rand(3), np.random.rand(3), sampler.rng.random(3))
    torch.testing.assert_close(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[2], expected[2])
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_a_pickled_object_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "obj": _Sampler()}, path)  # arbitrary object: weights_only refuses it
    with pytest.raises(ArtifactError, match="not a readable unetkit checkpoint"):
        load_checkpoint(path)


def test_the_deadline_is_the_budgets_end_less_the_passes_that_must_follow() -> None:
    import time

    assert BudgetClock(0).deadline() is None
    clock = BudgetClock(100.0)
    clock.val_seconds = 4.0
    now = time.monotonic()
    assert clock.deadline() == pytest.approx(now + 100.0, abs=0.5)
    assert clock.deadline(reserve_passes=2.5) == pytest.approx(now + 90.0, abs=0.5)
