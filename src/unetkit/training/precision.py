"""Choosing the compute mode by measurement: probe steps per mode, a health check, the fastest healthy.

`probe_modes` trains one copy of the same freshly initialised model per mode on the same random
batches, step by step interleaved (a change in machine load hits every mode alike), and records the
median seconds per timed step and the loss of every step; a mode far slower than the fastest
(`GIVE_UP_RATIO`, emulated bf16) stops after two steps. `health_problems` rejects a mode whose
loss or gradients are not finite, or whose loss leaves the fp32 probe's on the same batches by more
than `LOSS_TOLERANCE` (10 % of the fp32 loss at any probe step: bf16 rounding moves a loss by well
under 1 %, a broken mode by much more). `choose_mode` takes the fastest healthy mode and says why,
with the measured milliseconds of every mode. So a CPU without native bf16 (emulated, slower)
keeps fp32, and a CPU with AMX takes bf16 because it measured faster, not because of its name.

The planner (`unetkit.planning.throughput`) races the modes over its candidate rungs; `fit` with
`precision: auto` and no plan calls `decide_mode` (a few steps per mode on the real model) when
the run is long enough for the measurement to pay off (`worth_measuring`).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unetkit.config import AugmentConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig, replace
from unetkit.data.transforms import Augmenter, context_window
from unetkit.errors import ConfigError
from unetkit.losses.losses import SegmentationLoss
from unetkit.models import build_model
from unetkit.training.loop import train_step
from unetkit.training.modes import FP32, ComputeMode, candidate_modes, mode_by_name, native_bf16
from unetkit.training.optim import build_optimizer

LOSS_TOLERANCE = 0.10  # a mode's probe loss may differ from fp32's by this fraction of it
# a mode whose mean probe step after its first took this much longer than the fastest mode's stops there
# (fp32, the health reference, never does): emulated bf16 on a CPU without it ran 11-22x slower than
# fp32 on w16 d4 128x128 b8 (AMD EPYC Zen 3), 80 s for its five steps of a 30-minute budget's probe
GIVE_UP_RATIO = 5.0
PROBE_WARMUP_STEPS = 2  # untimed steps (allocator growth, first page-ins, oneDNN kernel creation)
PROBE_TIMED_STEPS = 3
# without a plan, auto measures when the run has this many steps (or a budget): the probe, about
# 4 modes x 5 steps, is then <= 2 % of the run; shorter runs stay fp32
MEASURE_MIN_STEPS = 1000


@dataclass(frozen=True)
class Probe:
    """One mode's probe: median seconds per timed step, the loss of every step, what went wrong."""

    seconds: float
    losses: tuple[float, ...]
    problem: str = ""  # non-finite loss or gradients


@dataclass(frozen=True)
class ModeDecision:
    """The chosen mode, why, and the measurements behind it (stored in the plan / the run log)."""

    mode: ComputeMode
    reason: str
    ms_per_step: dict[str, float] = field(default_factory=dict)  # mode name -> ms on the deciding probe
    rejected: dict[str, str] = field(default_factory=dict)  # mode name -> why it was not chosen

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode.name, "precision": self.mode.precision, "memory_format": self.mode.memory_format,
                "reason": self.reason, "ms_per_step": dict(self.ms_per_step), "rejected": dict(self.rejected)}


def probe_modes(model: nn.Module, modes: Sequence[ComputeMode], batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                *, loss_fn: nn.Module, device: torch.device, warmup_steps: int = PROBE_WARMUP_STEPS,
                timed_steps: int = PROBE_TIMED_STEPS, grad_clip: float = 12.0) -> dict[str, Probe]:
    """Each mode trains its own copy of `model` (same weights) on `batch(i)`, interleaved per step.

    `batch(i)` gives step i's (images, labels) on `device`; its time is added to every mode's step.
    A mode (not fp32) whose mean step after its first took `GIVE_UP_RATIO` times the fastest mode's
    stops: its seconds are the median of the steps it ran, warm-up included when it ran no timed step."""
    nets = {m.name: m.prepare(copy.deepcopy(model).to(device)) for m in modes}
    optimizers = {name: build_optimizer(net, OptimConfig()) for name, net in nets.items()}
    every: dict[str, list[float]] = {m.name: [] for m in modes}  # seconds of each step run, warm-up first
    losses: dict[str, list[float]] = {m.name: [] for m in modes}
    problems: dict[str, str] = {}
    stopped: set[str] = set()
    for i in range(warmup_steps + timed_steps):
        t0 = time.perf_counter()
        x, y = batch(i)
        prep = time.perf_counter() - t0
        for m in modes:
            if m.name in problems or m.name in stopped:
                continue
            t0 = time.perf_counter()
            try:
                terms = train_step(nets[m.name], x, y, loss_fn=loss_fn, optimizer=optimizers[m.name], mode=m,
                                   scaler=None, grad_clip=grad_clip, step=i)
            except ConfigError:  # train_step refuses a non-finite loss
                problems[m.name] = f"non-finite loss at probe step {i + 1}"
                continue
            if device.type == "cuda":
                torch.cuda.synchronize()
            losses[m.name].append(terms["loss"])
            if not math.isfinite(terms["grad_norm"]):
                problems[m.name] = f"non-finite gradients at probe step {i + 1}"
            every[m.name].append(time.perf_counter() - t0 + prep)
        # judged from the second step on, without the first: a fresh model's first step is slow in any mode
        # (channels_last's layout reorders: 5x fp32's on a tiny model under load)
        stopped |= too_slow({name: statistics.fmean(t[1:]) for name, t in every.items()
                             if name not in problems and len(t) > 1})
    return {m.name: Probe(statistics.median(every[m.name][warmup_steps:] or every[m.name]) if every[m.name] else math.inf,
                          tuple(losses[m.name]), problems.get(m.name, "")) for m in modes}


def too_slow(step_seconds: dict[str, float]) -> set[str]:
    """The modes (fp32 never) whose mean probe step took `GIVE_UP_RATIO` times the fastest mode's."""
    if len(step_seconds) < 2:
        return set()
    fastest = min(step_seconds.values())
    return {name for name, s in step_seconds.items() if name != FP32.name and s > GIVE_UP_RATIO * fastest}


def health_problems(probes: dict[str, Probe], reference: str = FP32.name) -> dict[str, str]:
    """Mode name -> why it is unhealthy: non-finite values, or a loss that left the fp32 probe's."""
    problems = {name: p.problem for name, p in probes.items() if p.problem}
    for name, p in probes.items():
        bad = next((i for i, v in enumerate(p.losses) if not math.isfinite(v)), None)
        if name not in problems and bad is not None:
            problems[name] = f"non-finite loss {p.losses[bad]} at probe step {bad + 1}"
    ref = probes.get(reference)
    if ref is None or ref.problem:
        return problems
    for name, p in probes.items():
        if name == reference or name in problems:
            continue
        for i, (a, b) in enumerate(zip(p.losses, ref.losses, strict=False)):
            if abs(a - b) > LOSS_TOLERANCE * abs(b):
                problems[name] = (f"loss {a:.4g} vs fp32 {b:.4g} at probe step {i + 1} "
                                  f"(more than {LOSS_TOLERANCE:.0%} apart)")
                break
    return problems


def choose_mode(probes: dict[str, Probe], where: str, modes: Sequence[ComputeMode],
                dropped: dict[str, str] | None = None) -> ModeDecision:
    """The fastest healthy mode of `probes` (measured on `where`); `dropped`: modes left out earlier."""
    rejected = dict(dropped or {}) | health_problems(probes)
    healthy = {name: p for name, p in probes.items() if name not in rejected}
    if not healthy:
        raise ConfigError(f"no compute mode trains on {where}: " + "; ".join(f"{k}: {v}" for k, v in rejected.items()))
    best = min(healthy, key=lambda name: healthy[name].seconds)
    ms = {name: p.seconds * 1000 for name, p in probes.items() if math.isfinite(p.seconds)}
    timed = ", ".join(f"{name} {v:.0f} ms" for name, v in ms.items())
    reason = f"fastest healthy mode on {where}: {timed}" if len(probes) > 1 else f"the only mode allowed ({timed})"
    if rejected:  # modes left out for the same reason named together
        why: dict[str, list[str]] = {}
        for name, text in rejected.items():
            why.setdefault(text, []).append(name)
        reason += "; not chosen: " + "; ".join(f"{', '.join(names)} ({text})" for text, names in why.items())
    by_name = {m.name: m for m in modes}
    return ModeDecision(by_name[best], reason, ms, rejected)


def random_batches(in_channels: int, out_channels: int, patch: Sequence[int], batch_size: int,
                   device: torch.device, augment: AugmentConfig | None = None,
                   seed: int = 0) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """Random (images, labels) batches on `device`, augmented as training will be (its cost counts:
    each patch warped out of its `context_window`)."""
    gen = torch.Generator().manual_seed(seed)
    augmenter = Augmenter(augment, seed=seed) if augment is not None and augment.enabled else None
    patch = (int(patch[0]), int(patch[1]))
    window = context_window(augment, patch) if augment is not None else patch  # the patch when it is off

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn((batch_size, in_channels, *window), generator=gen).to(device)
        y = torch.randint(0, out_channels, (batch_size, *window), generator=gen).to(device)
        return augmenter(x, y, patch) if augmenter is not None else (x, y)

    return batch


def measure_modes(model: ModelConfig, modes: Sequence[ComputeMode], *, patch: Sequence[int], batch_size: int,
                  loss: LossConfig, augment: AugmentConfig | None, device: torch.device,
                  warmup_steps: int = PROBE_WARMUP_STEPS, timed_steps: int = PROBE_TIMED_STEPS,
                  network: nn.Module | None = None) -> dict[str, Probe]:
    """`probe_modes` on a fresh `model` (global RNG untouched), or a copy of the user's `network`
    (`fit(model=...)`), and random data of this shape."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = copy.deepcopy(network) if network is not None else build_model(model)
    loss_fn = SegmentationLoss(loss).to(device)
    batches = random_batches(model.in_channels, model.out_channels, patch, batch_size, device, augment)
    return probe_modes(net, modes, batches, loss_fn=loss_fn, device=device, warmup_steps=warmup_steps,
                       timed_steps=timed_steps)


def worth_measuring(config: TrainConfig) -> bool:
    """Without a plan: measure when the run is long (a budget, or >= MEASURE_MIN_STEPS steps)."""
    return config.budget_seconds > 0 or config.steps >= MEASURE_MIN_STEPS


def decide_mode(config: TrainConfig, device: torch.device, network: nn.Module | None = None) -> ModeDecision:
    """The mode for `config` (model resolved from the data) on `device` when no plan chose one."""
    modes = candidate_modes(config.precision, config.memory_format, device)
    if len(modes) == 1:
        return ModeDecision(modes[0], "set in the config" if "auto" not in (config.precision, config.memory_format)
                            else f"the only mode auto allows on {device.type}")
    if not worth_measuring(config):
        fixed = [m for m in modes if m.precision == "fp32" and not m.channels_last] or modes[:1]
        return ModeDecision(fixed[0], f"not measured: a run of {config.steps} steps is too short for a probe "
                            f"of ~{len(modes) * (PROBE_WARMUP_STEPS + PROBE_TIMED_STEPS)} steps to pay off "
                            f"(< {MEASURE_MIN_STEPS} steps, no budget)")
    probes = measure_modes(config.model, modes, patch=config.data.patch_size, batch_size=config.data.batch_size,
                           loss=config.loss, augment=config.augment, device=device, network=network)
    return choose_mode(probes, f"this model ({config.data.patch_size[0]}x{config.data.patch_size[1]}, "
                       f"batch {config.data.batch_size})", modes)


def apply_mode(config: TrainConfig, mode: ComputeMode) -> TrainConfig:
    """`config` with the chosen mode written in (concrete values: a resume repeats them)."""
    return replace(config, precision=mode.precision, memory_format=mode.memory_format)


def config_mode(config: TrainConfig, device: torch.device) -> ComputeMode:
    """The mode of a config whose precision and memory format are concrete (see `decide_mode`)."""
    if "auto" in (config.precision, config.memory_format):
        raise ConfigError("precision/memory_format 'auto' must be decided before the step loop (decide_mode)")
    return mode_by_name(config.precision + ("+cl" if config.memory_format == "channels_last" else ""), device)


def check_available(precision: str, device: torch.device, model: ModelConfig, loss: LossConfig,
                    network: nn.Module | None = None) -> None:
    """Refuse `precision: bf16` on a CPU without native bf16, naming what is available and the
    measured slowdown of the emulation (a few steps of this model at 64x64, batch 2)."""
    if precision != "bf16" or device.type != "cpu" or native_bf16():
        return
    bf16 = ComputeMode("bf16")
    probes = measure_modes(model, [FP32, bf16], patch=(64, 64), batch_size=2, loss=loss, augment=None,
                           device=device, warmup_steps=1, timed_steps=2, network=network)
    slow = probes[bf16.name].seconds / max(probes[FP32.name].seconds, 1e-9)
    raise ConfigError(
        f"precision bf16: this CPU has no native bf16 (oneDNN: no AVX512-BF16 or AMX); available: fp32 "
        f"(or auto, which measures); bf16 would be emulated in software, measured {slow:.1f}x the fp32 step time "
        f"({probes[bf16.name].seconds * 1000:.0f} vs {probes[FP32.name].seconds * 1000:.0f} ms, this model at "
        f"64x64, batch 2)")
