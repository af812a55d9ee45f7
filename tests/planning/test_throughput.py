"""The compute-mode race of the candidate timing, on simulated probes (no training run): the
fastest healthy mode is chosen, an unhealthy faster one is rejected with its reason, a CPU with
emulated (slow) bf16 keeps fp32, and the plan records the choice with the ms of every mode."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tests.planning.conftest import VESSELS, make_fingerprint
from unetkit.planning.plan import format_plan
from unetkit.planning.rules import LADDER, make_plan
from unetkit.planning.throughput import Candidate, measure_throughput, train_flops
from unetkit.training.modes import candidate_modes
from unetkit.training.precision import Probe

CPU_MODES = candidate_modes("auto", "auto", torch.device("cpu"))
LADDER_CANDIDATES = [Candidate(w, d, (p, p), b) for w, d, p, b in LADDER[:7]]


def simulated_probe(speedup: dict[str, float], *, losses: dict[str, tuple[float, ...]] | None = None,
                    gflops: float = 40.0, calls: list | None = None):
    """A probe on a machine where mode m runs at `speedup[m]` x fp32's speed (FLOPs-based)."""

    def probe(c: Candidate, modes) -> dict[str, Probe]:
        if calls is not None:
            calls.append((c, [m.name for m in modes]))
        fp32 = 0.005 + train_flops(c) / (gflops * 1e9)
        return {m.name: Probe(fp32 / speedup[m.name], (losses or {}).get(m.name, (0.70, 0.66, 0.63, 0.61, 0.60)))
                for m in modes}

    return probe


AMX = {"fp32": 1.0, "fp32+cl": 1.14, "bf16": 2.35, "bf16+cl": 3.07}  # the Sapphire Rapids figures
EMULATED = {"fp32": 1.0, "fp32+cl": 1.05, "bf16": 0.3, "bf16+cl": 0.28}  # AVX2 only: bf16 in software


def test_the_fastest_healthy_mode_is_chosen_and_its_timings_are_the_throughput():
    measured = measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=60.0,
                                  modes=CPU_MODES, probe=simulated_probe(AMX))
    assert measured.decision.mode.name == "bf16+cl"
    assert "fp32" in measured.decision.reason and "bf16+cl" in measured.decision.reason
    # fp32 and fp32+cl (2.7-3.1x slower) leave on the first rung; bf16 (1.3x) races one more
    assert set(measured.decision.ms_per_step) == {"bf16", "bf16+cl"}
    assert all("slower than bf16+cl" in measured.decision.rejected[m] for m in ("fp32", "fp32+cl", "bf16"))
    assert all(measured.by_mode[m] for m in ("fp32", "fp32+cl", "bf16"))  # their timings stay in the table
    assert measured.table == measured.by_mode["bf16+cl"] and measured.table
    c = next(iter(measured.table))
    assert measured(c) == pytest.approx((0.005 + train_flops(c) / 40e9) / 3.07)


def test_an_unhealthy_faster_mode_is_rejected_with_its_reason():
    diverging = {"bf16+cl": (0.70, 0.95, 1.4, 2.2, 3.5), "bf16": (0.70, 0.66, math.nan, 0.6, 0.6)}
    measured = measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=60.0,
                                  modes=CPU_MODES, probe=simulated_probe(AMX, losses=diverging))
    decision = measured.decision
    assert decision.mode.name == "fp32+cl"
    assert "more than 10% apart" in decision.rejected["bf16+cl"] and "bf16+cl" in decision.reason
    assert "nan" in decision.rejected["bf16"].lower()
    assert not measured.by_mode["bf16+cl"]  # never entered the table


def test_a_cpu_with_emulated_bf16_keeps_fp32_and_stops_timing_bf16_after_the_first_rung():
    calls: list = []
    measured = measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=60.0,
                                  modes=CPU_MODES, probe=simulated_probe(EMULATED, calls=calls))
    assert measured.decision.mode.precision == "fp32"
    assert "bf16" in calls[0][1] and all("bf16" not in modes for _, modes in calls[1:])
    assert "slower than" in measured.decision.rejected["bf16"]


def test_a_mode_slow_only_on_the_tiny_first_rung_keeps_racing_and_wins():
    """channels_last's fixed cost shows on the cheapest rung (measured: bf16+cl 1.7x slower than fp32+cl
    on w8 d3 96x96 b2, the fastest at w32 d4 on an AMD EPYC with AVX512-BF16): one slow rung is not enough
    to leave the race; slow on two rungs in a row is."""
    calls: list = []
    first = LADDER_CANDIDATES[0]
    late = simulated_probe({"fp32": 1.0, "fp32+cl": 1.05, "bf16": 1.4, "bf16+cl": 1.8})
    early = simulated_probe({"fp32": 1.0, "fp32+cl": 1.05, "bf16": 1.1, "bf16+cl": 0.6})

    def probe(c, modes):
        calls.append((c, [m.name for m in modes]))
        return (early if c == first else late)(c, modes)

    measured = measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=60.0,
                                  modes=CPU_MODES, probe=probe)
    assert "bf16+cl" in calls[1][1] and measured.decision.mode.name == "bf16+cl"

    always_slow = measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=60.0,
                                     modes=CPU_MODES, probe=simulated_probe({"fp32": 1.0, "fp32+cl": 1.05,
                                                                             "bf16": 1.1, "bf16+cl": 0.6}))
    assert always_slow.decision.mode.name == "bf16" and "slower than" in always_slow.decision.rejected["bf16+cl"]
    assert not always_slow.by_mode["bf16+cl"].keys() - set(LADDER_CANDIDATES[:2])  # two rungs, then out


def test_when_the_budget_cannot_pay_for_every_mode_the_leaders_climb_and_a_tiny_one_keeps_fp32():
    calls: list = []
    close = simulated_probe({"fp32": 1.0, "fp32+cl": 1.1, "bf16": 1.05, "bf16+cl": 1.2}, calls=calls)

    def timed(c, modes):  # each probe takes real time, so the bound matters
        time.sleep(0.1 * len(modes))
        return close(c, modes)

    measured = measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=1.0,
                                  modes=CPU_MODES, probe=timed, timed_steps=0)
    assert len(calls[0][1]) == 4 and len(calls) > 1 and len(calls[1][1]) < 4 and calls[1][1][0] == "bf16+cl"
    assert measured.decision.mode.name == "bf16+cl"
    assert any("leading mode(s) only" in why for why in measured.decision.rejected.values())
    assert measured.seconds_spent < 1.0 + 0.3

    calls.clear()
    tiny = measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=0.12,
                              modes=CPU_MODES, probe=timed, timed_steps=0)
    assert calls[0][1] == ["fp32"] and tiny.decision.mode.name == "fp32"
    assert "left no room" in tiny.decision.reason


def test_a_single_expensive_rung_times_the_other_modes_once_fp32_is_measured():
    """A patch and batch set by the user leave one rung. Costed at a modest CPU's speed before any
    timing, it affords fp32 alone; measured, the others fit in the time left and are raced on it
    (before: fp32 was kept, "the timing budget left no room": 2x slower steps on a bf16 CPU)."""
    calls: list = []
    fast = simulated_probe(AMX, gflops=40000.0, calls=calls)  # measured far faster than the modest estimate
    big = [Candidate(32, 4, (512, 512), 16)]
    measured = measure_throughput(big, in_channels=3, out_channels=2, max_seconds=60.0, modes=CPU_MODES, probe=fast)
    assert calls[0][1] == ["fp32"] and [names for _, names in calls[1:]] == [["bf16+cl"], ["bf16"], ["fp32+cl"]]
    assert measured.decision.mode.name == "bf16+cl" and "left no room" not in measured.decision.reason
    assert set(measured.decision.ms_per_step) == {"fp32", "bf16+cl", "bf16", "fp32+cl"}
    assert measured.table == {big[0]: measured.by_mode["bf16+cl"][big[0]]}

    # one mode measured unhealthy on the same seeded batches is still rejected
    calls.clear()
    sick = simulated_probe(AMX, gflops=40000.0, calls=calls, losses={"bf16+cl": (0.70, 0.66, float("nan"), 0.6, 0.6)})
    measured = measure_throughput(big, in_channels=3, out_channels=2, max_seconds=60.0, modes=CPU_MODES, probe=sick)
    assert measured.decision.mode.name == "bf16" and "non-finite loss" in measured.decision.rejected["bf16+cl"]


def test_a_mode_the_estimate_left_out_of_a_single_rung_race_is_timed_after_it():
    """A pinned model's one rung, costed at a modest CPU's speed, lets fp32 and the two bf16 modes race
    and leaves fp32+cl out; measured, the time left pays for fp32+cl on that rung, and it wins on an
    AVX2 CPU (before: fp32 was kept and fp32+cl "not timed": ISBI 2012 pinned to w16 d4 128x128 b8 on
    an AMD EPYC Zen 3 trained NCHW fp32)."""
    calls: list = []
    pinned = [Candidate(16, 4, (128, 128), 8)]
    measured = measure_throughput(pinned, in_channels=3, out_channels=2, max_seconds=50.0, modes=CPU_MODES,
                                  probe=simulated_probe(EMULATED, gflops=40000.0, calls=calls))
    assert calls == [(pinned[0], ["fp32", "bf16+cl", "bf16"]), (pinned[0], ["fp32+cl"])]
    assert measured.decision.mode.name == "fp32+cl" and "fp32+cl" in measured.decision.ms_per_step
    assert not any("left no room" in why for why in measured.decision.rejected.values())
    assert measured.table == {pinned[0]: measured.by_mode["fp32+cl"][pinned[0]]}

    calls.clear()  # a mode timed on an earlier rung and left out later for time is not timed again
    measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=60.0, modes=CPU_MODES,
                       probe=simulated_probe(EMULATED, calls=calls))
    assert sum(names == ["fp32+cl"] for _, names in calls) == 0


def test_one_allowed_mode_times_the_ladder_as_before():
    calls: list = []
    measured = measure_throughput(LADDER_CANDIDATES[:3], in_channels=3, out_channels=2, max_seconds=60.0,
                                  modes=candidate_modes("fp32", "contiguous", torch.device("cpu")),
                                  probe=simulated_probe(AMX, calls=calls))
    assert [m for _, m in calls] == [["fp32"]] * 3 and measured.decision.mode.name == "fp32"


def test_the_plan_records_the_mode_its_reason_and_the_ms_of_every_mode():
    measured = measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=60.0,
                                  modes=CPU_MODES, probe=simulated_probe(AMX))
    plan = make_plan(make_fingerprint(classes=VESSELS), measured, 1800, {}, mode=measured.decision)
    assert plan.value("precision") == "bf16" and plan.value("memory_format") == "channels_last"
    assert plan.settings()["precision"] == "bf16"
    assert plan.to_dict()["estimates"]["compute_mode"]["ms_per_step"]["bf16"] > 0
    plan.estimates["mode_timings"] = measured.mode_rows()
    shown = format_plan(plan)
    assert "compute modes" in shown and "*bf16+cl" in shown and "fastest healthy mode on" in shown

    user = make_plan(make_fingerprint(classes=VESSELS), measured, 1800, {"precision": "bf16"}, mode=measured.decision)
    assert next(c for c in user.choices if c.key == "precision").source == "user"


def test_a_faster_measured_mode_buys_a_bigger_model_at_the_same_step_target():
    """Issue 17 item 4: the plan reads the timings of the mode it chose, so bf16 on AMX climbs the
    ladder (more capacity for the same steps); emulated bf16 leaves the fp32 plan."""
    fp = make_fingerprint(classes=VESSELS)
    plans = {}
    for name, speedup in (("amx", AMX), ("emulated", EMULATED)):
        measured = measure_throughput(LADDER_CANDIDATES, in_channels=3, out_channels=2, max_seconds=60.0,
                                      modes=CPU_MODES, probe=simulated_probe(speedup))
        plans[name] = make_plan(fp, measured, 1800, {}, mode=measured.decision)
    amx, emulated = plans["amx"], plans["emulated"]
    assert emulated.value("precision") == "fp32" and amx.value("precision") == "bf16"
    assert amx.estimates["seconds_per_step"] * amx.value("steps") <= 1800
    cost = {n: train_flops(Candidate(p.value("model.base_width"), p.value("model.depth"),
                                     tuple(p.value("data.patch_size")), p.value("data.batch_size")))
            for n, p in plans.items()}
    assert cost["amx"] > cost["emulated"]
    assert amx.value("steps") >= amx.estimates["step_target"] <= emulated.value("steps")
