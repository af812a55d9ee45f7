"""How fast this machine trains: seconds per optimizer step for candidate (model, patch, batch).

A **throughput model** is any callable `throughput(candidate) -> seconds per step`. The planner
(`unetkit.planning.rules.make_plan`) only ever calls it, so the same planning rules run on timings
measured here (`measure_throughput`, the candidate timing of `unetkit train --budget`), on a
FLOPs-based cost model (`simulated_throughput`, for tests and for machines described by their
speed: a slow 2-core CPU, a 32-core CPU, a GPU), or on a table the user supplies.

Timing is bounded: candidates are timed cheapest first (two warm-up steps, then `timed_steps`
steps, median), each only when its predicted cost fits in what is left of `max_seconds`; once a
candidate is too slow to reach the planner's step target (`stop_when`), larger ones are not timed
(they can only be slower). Candidates not timed get the FLOPs-based extrapolation
`seconds = overhead + train_flops / rate`, with `rate` and `overhead` fitted on the timed ones.

Compute modes (fp32 / bf16 autocast, each NCHW or channels_last, `unetkit.training.modes`) race
inside the same bound: the first rungs are timed in every mode, interleaved step by step on the same
batches; a mode that is unhealthy or `HOPELESS_RATIO` (2.5x) slower than the fastest leaves the
race at once, one `DROP_RATIO` (1.3x) slower on two rungs in a row leaves it then, and when the time
left cannot pay for every mode on the next rung, only the leader goes on. Why: emulated bf16 (3-4x
slower) drops out on the cheapest rung at the cost of a few small steps, while a mode whose fixed
cost shows on a tiny rung (channels_last's layout changes: 1.7x slower than fp32+cl on w8 d3 96x96 b2
on an AMD EPYC with AVX512-BF16, yet the fastest at w32 d4) gets a second, larger rung; on a CPU with
AMX the close modes keep racing onto the larger rungs, where the difference that matters for the
plan shows; a mode is never chosen from a rung it was not timed on. Within a probe a mode far slower
than the fastest (`unetkit.training.precision.GIVE_UP_RATIO`: emulated bf16 on a large rung, 11-22x)
stops after two steps, and the time saved times the modes the first estimate left out.
The timings of the chosen mode are the throughput model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from unetkit.config import AugmentConfig, LossConfig, ModelConfig, replace
from unetkit.errors import ConfigError
from unetkit.training.modes import FP32, ComputeMode
from unetkit.training.precision import (
    PROBE_WARMUP_STEPS,
    ModeDecision,
    Probe,
    choose_mode,
    health_problems,
    measure_modes,
)


@dataclass(frozen=True)
class Candidate:
    """One point of the search: U-Net width and depth, patch (h, w) and batch size, and the fraction
    of the native resolution it trains at (the patch is in those pixels; a step costs the same)."""

    base_width: int
    depth: int
    patch: tuple[int, int]
    batch: int
    resolution: float = 1.0

    @property
    def pixels_per_step(self) -> int:
        return self.patch[0] * self.patch[1] * self.batch

    def label(self) -> str:
        at = f" at {self.resolution:g}x" if self.resolution != 1.0 else ""
        return f"w{self.base_width} d{self.depth} {self.patch[0]}x{self.patch[1]} b{self.batch}{at}"


ThroughputModel = Callable[[Candidate], float]


def forward_flops_per_pixel(base_width: int, depth: int, in_channels: int = 3, out_channels: int = 2,
                            max_width: int = 512) -> float:
    """Forward FLOPs per input pixel of a plain U-Net (closed form, instant, no model built).

    Level l runs at 1/4**l of the pixels with c_l = min(base_width * 2**l, max_width) channels; its
    encoder and decoder 3x3 convolutions and up-sampling add up to ~36 c_l**2 multiply-adds per
    pixel (within ~15 % of `unetkit.models.flops.count_flops` for widths 8-64, depths 2-5)."""
    macs = 9.0 * (in_channels * base_width) + out_channels * base_width
    for level in range(depth + 1):
        c = min(base_width * 2**level, max_width)
        macs += 36.0 * c * c / 4**level
    return 2.0 * macs


def train_flops(c: Candidate, in_channels: int = 3, out_channels: int = 2) -> float:
    """FLOPs of one training step: forward x 3 (forward + backward), convolutions scale with area."""
    return 3.0 * forward_flops_per_pixel(c.base_width, c.depth, in_channels, out_channels) * c.pixels_per_step


def simulated_throughput(gflops_per_second: float, overhead_seconds: float = 0.005, *, in_channels: int = 3,
                         out_channels: int = 2) -> ThroughputModel:
    """A machine described by its sustained training speed: seconds = overhead + FLOPs / rate."""

    def seconds_per_step(c: Candidate) -> float:
        return overhead_seconds + train_flops(c, in_channels, out_channels) / (gflops_per_second * 1e9)

    return seconds_per_step


@dataclass
class MeasuredThroughput:
    """Timed candidates in the chosen compute mode, plus the FLOPs extrapolation for the others."""

    in_channels: int
    out_channels: int
    table: dict[Candidate, float] = field(default_factory=dict)  # seconds/step in `decision.mode`
    seconds_spent: float = 0.0
    decision: ModeDecision | None = None  # the compute mode the table was timed in, and why
    by_mode: dict[str, dict[Candidate, float]] = field(default_factory=dict)  # every mode's timings

    def rate_and_overhead(self) -> tuple[float, float]:
        """FLOP/s and fixed seconds per step fitted on the timed candidates (least squares, overhead >= 0)."""
        points = [(train_flops(c, self.in_channels, self.out_channels), s) for c, s in self.table.items()]
        if not points:
            return 20e9, 0.01  # nothing timed: a modest CPU
        if len(points) == 1:
            flops, seconds = points[0]
            return flops / max(seconds, 1e-6), 0.0
        n = len(points)
        mx = sum(f for f, _ in points) / n
        my = sum(s for _, s in points) / n
        var = sum((f - mx) ** 2 for f, _ in points)
        slope = sum((f - mx) * (s - my) for f, s in points) / var if var > 0 else 0.0
        overhead = my - slope * mx
        if slope <= 0 or overhead < 0:  # noisy timings: fall back to the slowest observed rate
            return min(f / s for f, s in points if s > 0), 0.0
        return 1.0 / slope, overhead

    def __call__(self, c: Candidate) -> float:
        if c in self.table:
            return self.table[c]
        rate, overhead = self.rate_and_overhead()
        return overhead + train_flops(c, self.in_channels, self.out_channels) / rate

    def as_rows(self) -> list[dict[str, float | str]]:
        return [{"candidate": c.label(), "seconds_per_step": s} for c, s in self.table.items()]

    def mode_rows(self) -> list[dict[str, Any]]:
        """Seconds per step of every mode on each candidate timed in more than one mode."""
        timed = {c for t in self.by_mode.values() for c in t}
        rows = []
        for c in sorted(timed, key=lambda c: train_flops(c, self.in_channels, self.out_channels)):
            times = {name: t[c] for name, t in self.by_mode.items() if c in t}
            if len(times) > 1:
                rows.append({"candidate": c.label(), "seconds_per_step": times})
        return rows


WARMUP_STEPS = PROBE_WARMUP_STEPS  # untimed steps before timing a fresh model (allocator, page-ins)
DROP_RATIO = 1.3  # a mode this much slower than the fastest on two rungs in a row is not timed on larger ones
HOPELESS_RATIO = 2.5  # ... this much slower on one rung (emulated bf16): not timed on larger rungs
Probe_ = Callable[[Candidate, Sequence[ComputeMode]], dict[str, Probe]]


def _race_after(last: tuple[Candidate, dict[str, Probe]], timed: list[ComputeMode], unpaid: list[ComputeMode],
                dropped: dict[str, str], probe: Probe_, left: float, timed_steps: int,
                result: MeasuredThroughput) -> tuple[dict[str, Probe], str, list[ComputeMode]] | None:
    """The modes `unpaid` on the rung last timed (in the modes `timed`), one at a time while the time
    left pays for one more at fp32's measured speed there (else the fastest timed mode's). Before any
    timing the race is costed at a modest CPU's speed, which keeps a single expensive rung (a patch and
    batch set by the user) in fp32 alone, or lets the first modes in `modes` order in and leaves the
    last out; once measured (and an emulated mode given up after its second step, `GIVE_UP_RATIO`) the
    others often fit. Their losses are compared with fp32's probe on the same seeded batches
    (`health_problems`). None when none fitted."""
    c, probes = last
    base = probes.get(FP32.name) or min(probes.values(), key=lambda p: p.seconds)
    each = base.seconds * (timed_steps + WARMUP_STEPS) * 1.5 + 0.05
    started, raced = time.perf_counter(), dict(probes)
    for m in unpaid:
        if each > left - (time.perf_counter() - started):
            break
        raced |= probe(c, [m])
        dropped.pop(m.name, None)
    if len(raced) == len(probes):
        return None
    for name in raced.keys() - probes.keys():
        if not raced[name].problem:
            result.by_mode[name][c] = raced[name].seconds
    return raced, c.label(), [*timed, *(m for m in unpaid if m.name in raced)]


def time_candidate(c: Candidate, modes: Sequence[ComputeMode], *, in_channels: int, out_channels: int,
                   model: ModelConfig, loss: LossConfig, augment: AugmentConfig, device: torch.device,
                   timed_steps: int = 3, warmup_steps: int = WARMUP_STEPS) -> dict[str, Probe]:
    """Each mode's median seconds of `timed_steps` real training steps (after `warmup_steps`) on
    random data, the modes interleaved step by step on the same batches (`probe_modes`).

    Two warm-up steps: the first steps of a fresh model grow the allocator and page in buffers, and
    timing them (measured: 605 ms instead of 200 ms for w16 d4 128x128 b8) misranks the ladder."""
    cfg = replace(model, base_width=c.base_width, depth=c.depth, in_channels=in_channels, out_channels=out_channels)
    return measure_modes(cfg, modes, patch=c.patch, batch_size=c.batch, loss=loss,
                         augment=augment if augment.enabled else None, device=device,
                         warmup_steps=warmup_steps, timed_steps=timed_steps)


def measure_throughput(candidates: Sequence[Candidate], *, in_channels: int, out_channels: int, max_seconds: float,
                       model: ModelConfig | None = None, loss: LossConfig | None = None,
                       augment: AugmentConfig | None = None, device: str | torch.device = "cpu",
                       modes: Sequence[ComputeMode] = (FP32,), timed_steps: int = 3,
                       stop_when: Callable[[Candidate, float], bool] | None = None,
                       log: Callable[[str], object] | None = None, probe: Probe_ | None = None) -> MeasuredThroughput:
    """Time `candidates` (cheapest first) in the compute `modes` within `max_seconds` of wall clock.

    The modes race up the ladder: each rung is timed in every mode still in the race; after it, a
    mode leaves the race when it is unhealthy (`unetkit.training.precision.health_problems`) or
    `HOPELESS_RATIO` slower than the fastest healthy mode there, or `DROP_RATIO` slower on this rung
    and the one before, and when the next rung in every
    remaining mode would not fit in the time left, only the fastest that fit continue (the ladder
    in the leading mode; on the first rung, costed at a modest CPU's speed, the modes in `modes`
    order, fp32 first: a budget too small to measure keeps fp32; the modes that estimate left out are
    timed afterwards on the last rung, as far as the time left pays for them at fp32's measured speed
    there, `_race_after`: all of them when the first mode ran alone, those never timed on any rung when
    others raced, as on a pinned model's one rung). The chosen mode is the fastest healthy one on the
    largest rung timed in more than one mode; the table is its timings. `probe(candidate, modes)`
    replaces the real timing (tests)."""
    started = time.perf_counter()
    device = torch.device(device)
    modes = list(modes)
    result = MeasuredThroughput(in_channels, out_channels, by_mode={m.name: {} for m in modes})
    per_mode = {m.name: MeasuredThroughput(in_channels, out_channels, table=result.by_mode[m.name]) for m in modes}
    live, dropped = list(modes), {}
    strikes: dict[str, int] = {}  # rungs in a row on which a mode was DROP_RATIO slower than the leader
    deciding: tuple[dict[str, Probe], str, list[ComputeMode]] | None = None  # the last rung timed in 2+ modes
    deciding_rung: Candidate | None = None
    alone: tuple[Candidate, dict[str, Probe]] | None = None  # the last rung timed in the first mode only
    unpaid: list[ComputeMode] = []  # modes left out for the timing budget alone, not for their speed or health
    if probe is None:
        def probe(c: Candidate, racing: Sequence[ComputeMode]) -> dict[str, Probe]:
            return time_candidate(c, racing, in_channels=in_channels, out_channels=out_channels,
                                  model=model or ModelConfig(), loss=loss or LossConfig(),
                                  augment=augment or AugmentConfig(), device=device, timed_steps=timed_steps)

    def cost(c: Candidate, racing: Sequence[ComputeMode]) -> float:  # steps + model build, with a margin
        return sum(per_mode[m.name](c) * (timed_steps + WARMUP_STEPS) * 1.5 + 0.05 for m in racing)

    for c in sorted(candidates, key=lambda c: train_flops(c, in_channels, out_channels)):
        left = max_seconds - (time.perf_counter() - started)
        timed_any = any(result.by_mode.values())
        if left <= 0 or (not timed_any and left < 0.05):
            break
        racing = list(live)  # the leading modes the time left pays for (at least one on the first rung)
        while len(racing) > 1 and cost(c, racing) > left:
            racing.pop()
        if timed_any and cost(c, racing) > left:
            break
        for m in live[len(racing):]:
            dropped[m.name] = ("larger rungs timed in the leading mode(s) only (timing budget)" if timed_any
                               else "not timed: the timing budget left no room")
            unpaid.append(m)
        live = racing
        probes = probe(c, live)
        problems = {name: f"{why} on {c.label()}" for name, why in health_problems(probes).items()}
        healthy = {name: p for name, p in probes.items() if name not in problems}
        if len(probes) > 1:
            deciding, deciding_rung = (probes, c.label(), live), c
        elif not problems:
            alone = (c, probes)
        elif not healthy:
            raise ConfigError(f"training in {live[0].name} fails on {c.label()}: {problems[live[0].name]}")
        for name, p in healthy.items():
            result.by_mode[name][c] = p.seconds
        leader = min(healthy, key=lambda name: healthy[name].seconds)
        if log:
            times = ", ".join(f"{name} {p.seconds * 1000:.1f}" + ("" if name in healthy else " (unhealthy)")
                              for name, p in probes.items())
            log(f"timing candidates: {c.label():<26} {times} ms/step" if len(probes) > 1 else
                f"timing candidates: {c.label():<26} {healthy[leader].seconds * 1000:8.1f} ms/step")
        dropped |= problems
        for name, p in healthy.items():
            ratio = p.seconds / healthy[leader].seconds
            strikes[name] = strikes.get(name, 0) + 1 if ratio > DROP_RATIO else 0
            if ratio > HOPELESS_RATIO or strikes[name] >= 2:
                dropped[name] = f"{ratio:.1f}x slower than {leader} on {c.label()}"
        live = sorted((m for m in live if m.name not in dropped), key=lambda m: healthy[m.name].seconds)
        if stop_when is not None and stop_when(c, healthy[leader].seconds):
            break
    left = max_seconds - (time.perf_counter() - started)
    if deciding is None and alone is not None and unpaid:
        deciding = _race_after(alone, [modes[0]], unpaid, dropped, probe, left, timed_steps, result)
    elif deciding is not None and deciding_rung is not None:  # modes never timed on any rung, for time alone
        never = [m for m in unpaid if not result.by_mode[m.name]]
        raced = never and _race_after((deciding_rung, deciding[0]), deciding[2], never, dropped, probe, left,
                                      timed_steps, result)
        deciding = raced or deciding
    if deciding is not None:  # its fastest healthy mode; the reason says where the others went
        result.decision = choose_mode(*deciding, dropped)
    elif len(modes) > 1:  # only the first mode was timed
        first = modes[0].name
        timed = ", ".join(f"{c.label()} {s * 1000:.0f} ms" for c, s in result.by_mode[first].items())
        result.decision = ModeDecision(modes[0], f"{first} ({timed}): the timing budget ({max_seconds:.1f} s) left "
                                       "no room to time the other modes",
                                       {first: next(iter(result.by_mode[first].values()), 0.0) * 1000}, dropped)
    else:
        result.decision = ModeDecision(modes[0], f"the only mode the config allows on {device.type}: {modes[0].name}")
    result.table = result.by_mode[result.decision.mode.name]
    result.seconds_spent = time.perf_counter() - started
    return result
