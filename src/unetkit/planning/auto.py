"""`unetkit train DATA --budget 30m` end to end: fingerprint, time candidates, plan, hand over to fit.

`plan_training(config, overrides)` loads the data (as fit will: same split, same fingerprint),
times the candidate models on this machine within `TIMING_FRACTION` of the budget (3 %,
at most 60 s) in each compute mode the config allows (fp32/bf16, NCHW/channels_last: the modes
race up the ladder, see `unetkit.planning.throughput`), calls the pure planner `make_plan`, and returns the config with the plan written
in (`config.plan` holds it, so fit stores it in the artifact) and `budget_seconds` reduced by the
time already spent, so the whole command ends within the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from unetkit.config import PretrainConfig, TrainConfig, replace, to_dict
from unetkit.planning.plan import Plan, apply_plan
from unetkit.planning.rules import (
    StartFacts,
    candidates,
    data_facts,
    make_plan,
    planned_steps,
    step_target,
    under_topology_depth,
)
from unetkit.planning.throughput import MeasuredThroughput, measure_throughput, simulated_throughput
from unetkit.runtime import keep_freed_memory
from unetkit.training.distill import check_teacher, read_teacher
from unetkit.training.distributed import DistEnv, resolve_device
from unetkit.training.finetune import check_start, read_start
from unetkit.training.modes import candidate_modes
from unetkit.training.precision import check_available
from unetkit.training.prepare import load_training_data
from unetkit.training.pretrain import image_list, pretrain

TIMING_FRACTION = 0.03
TIMING_MAX_SECONDS = 60.0

# keys of the TrainConfig that are not planning decisions: never reported as user overrides
NOT_PLANNED = {"data.data", "nproc", "progress", "out_dir", "resume", "tensorboard", "data.skip_bad",
               "seed", "data.seed", "device", "plan"}
PRETRAINED_NAME = "encoder.safetensors"  # R16's pretrained encoder, in the run folder
TIMED_PARTS = ("model.", "loss.", "augment.")  # the settings a timed training step depends on
AUTO = {"precision", "memory_format", "distill.mode"}  # keys whose value "auto" leaves the choice to the plan


def time_candidates(fingerprint: Mapping[str, Any], overrides: Mapping[str, Any], budget_seconds: float, *,
                    n_val: int | None = None, device: str = "auto", max_seconds: float | None = None,
                    precision: str = "auto", memory_format: str = "auto",
                    log: Callable[[str], object] | None = None) -> MeasuredThroughput:
    """Time the planner's candidates for this data on this machine (bounded, cheapest first), in
    every compute mode `precision` and `memory_format` allow (`measure_throughput` races them)."""
    facts = data_facts(fingerprint, overrides, n_val=n_val)
    limit = max_seconds if max_seconds is not None else min(TIMING_MAX_SECONDS, TIMING_FRACTION * budget_seconds)
    # time with the network, loss and augmentation the run will use (clDice and kornia cost time too): the
    # plan's choices over what the user set that the plan does not choose (deep supervision, attention...)
    own = replace(TrainConfig(), **{k: v for k, v in overrides.items() if k.startswith(TIMED_PARTS)})
    provisional = apply_plan(own, make_plan(fingerprint, simulated_throughput(20.0), budget_seconds,
                                            overrides, n_val=n_val))
    target = step_target(budget_seconds, facts)
    on = resolve_device(device, DistEnv())  # the device fit's (first) process will train on
    if on.type == "cpu":
        keep_freed_memory()  # time steps as fit will run them

    def too_slow(c, seconds: float) -> bool:  # larger candidates can only be slower; objects scored by their
        # topology time on to the first rung of TOPOLOGY_DEPTH, which R1 may take below the target
        return planned_steps(c, seconds, facts, budget_seconds)[0] < target and not under_topology_depth(c, facts)

    return measure_throughput(candidates(facts, overrides), in_channels=facts.channels,
                              out_channels=facts.num_classes, max_seconds=limit, model=provisional.model,
                              loss=provisional.loss, augment=provisional.augment, device=on,
                              modes=candidate_modes(precision, memory_format, on), stop_when=too_slow, log=log)


def plan_training(config: TrainConfig, overrides: Mapping[str, Any], *,
                  log: Callable[[str], object] | None = print,
                  max_timing_seconds: float | None = None,
                  unlabelled: str | Path | None = None) -> tuple[TrainConfig, Plan]:
    """The planned config (budget reduced by the time spent here) and the plan."""
    started = time.perf_counter()
    budget = config.budget_seconds
    user = {k: v for k, v in overrides.items() if k not in NOT_PLANNED and not (k in AUTO and v == "auto")}
    device = resolve_device(config.device, DistEnv())
    candidate_modes(config.precision, config.memory_format, device)  # refuses unknown values
    check_available(config.precision, device, config.model, config.loss)
    start = read_start(config.finetune)  # --init / --pretrained: checked before the data and the timing
    teacher = read_teacher(config)  # --distill-from: likewise
    extra = image_list(unlabelled) if unlabelled is not None else []
    data = load_training_data(config.data, progress=False, log=log)  # the data set's own splits, as fit's
    facts = None
    if teacher is not None:
        check_teacher(teacher, config, data)
    if start is not None:
        check_start(start, data.in_channels, data.train[0].image.ndim - 1)
        facts = StartFacts(start.kind, str(start.path), to_dict(start.model),
                           start.keeps_head(data.class_names, data.fingerprint), start.resolution)
    measured = time_candidates(data.fingerprint, user | (facts.pinned(user) if facts else {}), budget,
                               n_val=data.n_val_split, device=config.device, max_seconds=max_timing_seconds,
                               precision=config.precision, memory_format=config.memory_format, log=log)
    remaining = max(1.0, budget - (time.perf_counter() - started))
    plan = make_plan(data.fingerprint, measured, remaining, user, n_val=data.n_val_split,
                     timed=frozenset(measured.table), mode=measured.decision, start=facts, unlabelled=len(extra))
    plan.estimates.update({"total_budget_seconds": budget, "setup_seconds": budget - remaining,
                           "timing_seconds": measured.seconds_spent, "mode_timings": measured.mode_rows(),
                           "device": str(resolve_device(config.device, DistEnv())), "threads": torch.get_num_threads()})
    planned = apply_plan(config, plan)
    # fit's budget clock is the authority on time: it re-times steps and fixes the step count, but it
    # stops at `steps` if that comes first -- so hand it a ceiling, not the estimate (unless user-set)
    steps = planned.steps if "steps" in user else max(10 * planned.steps, 1000)
    return replace(planned, steps=steps, budget_seconds=remaining, plan=plan.to_dict()), plan


def preview_plan(config: TrainConfig, overrides: Mapping[str, Any], *,
                 log: Callable[[str], object] | None = None,
                 max_timing_seconds: float | None = None) -> Plan:
    """`unetkit plan`: the same plan, without training."""
    return plan_training(config, overrides, log=log, max_timing_seconds=max_timing_seconds)[1]


def pretrain_first(config: TrainConfig, plan: Plan, unlabelled: str | Path | None, *,
                   log: Callable[[str], object] | None = print) -> TrainConfig:
    """R16: when the plan spends part of the budget on self-supervised pretraining, run it (on the
    unlabelled images and the training images, with the planned architecture, patch and batch) and
    return the config that fine-tunes from its encoder (`out_dir/encoder.safetensors`) in the rest of
    the budget; else `config` as it is."""
    seconds = float(plan.estimates.get("pretrain_seconds", 0.0))
    if not seconds or unlabelled is None:
        return config
    started = time.perf_counter()
    data = load_training_data(config.data, progress=False)  # the same split as fit's
    files = image_list(unlabelled)
    out = Path(config.out_dir) / PRETRAINED_NAME
    pretrain(PretrainConfig(out=str(out), objective=plan.value("plan.pretrain_objective"), budget_seconds=seconds,
                            base_width=config.model.base_width, depth=config.model.depth, norm=config.model.norm,
                            input_norm=config.model.input_norm,
                            patch_size=config.data.patch_size, batch_size=config.data.batch_size,
                            resolution=config.data.resolution, seed=config.seed, progress=config.progress),
             images=files, extra=[s.image for s in data.train], log=log)
    left = max(1.0, config.budget_seconds - (time.perf_counter() - started))
    return replace(config, budget_seconds=left, **{"finetune.pretrained": str(out)})
