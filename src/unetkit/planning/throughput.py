"""How fast this machine trains: seconds per optimizer step for candidate (model, patch, batch).

A **throughput model** is any callable `throughput(candidate) -> seconds per step`. The planner
(`unetkit.planning.rules.make_plan`) only ever calls it, so the same planning rules run on timings
measured here (`measure_throughput`, the candidate timing of `unetkit train --budget`), on a
FLOPs-based cost model (`simulated_throughput`, for tests and for machines described by their
speed: a slow 2-core CPU, a 32-core CPU, a GPU), or on a table the user supplies.

Timing is bounded: candidates are timed cheapest first (one warm-up step, then `timed_steps`
steps, median), each only when its predicted cost fits in what is left of `max_seconds`; once a
candidate is too slow to reach the planner's step target (`stop_when`), larger ones are not timed
(they can only be slower). Candidates not timed get the FLOPs-based extrapolation
`seconds = overhead + train_flops / rate`, with `rate` and `overhead` fitted on the timed ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from unetkit.config import AugmentConfig, LossConfig, ModelConfig, OptimConfig, replace
from unetkit.data.transforms import Augmenter
from unetkit.losses.losses import SegmentationLoss
from unetkit.models import build_model
from unetkit.training.loop import Precision, train_step
from unetkit.training.optim import build_optimizer


@dataclass(frozen=True)
class Candidate:
    """One point of the search: U-Net width and depth, patch (h, w) and batch size."""

    base_width: int
    depth: int
    patch: tuple[int, int]
    batch: int

    @property
    def pixels_per_step(self) -> int:
        return self.patch[0] * self.patch[1] * self.batch

    def label(self) -> str:
        return f"w{self.base_width} d{self.depth} {self.patch[0]}x{self.patch[1]} b{self.batch}"


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
    """Timed candidates, plus the FLOPs extrapolation for the others (a throughput model)."""

    in_channels: int
    out_channels: int
    table: dict[Candidate, float] = field(default_factory=dict)
    seconds_spent: float = 0.0

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


WARMUP_STEPS = 2  # untimed steps before timing a fresh model (allocator growth, first page-ins)


def time_candidate(c: Candidate, *, in_channels: int, out_channels: int, model: ModelConfig, loss: LossConfig,
                   augment: AugmentConfig, device: torch.device, timed_steps: int = 3,
                   warmup_steps: int = WARMUP_STEPS) -> float:
    """Median seconds of `timed_steps` real training steps (after `warmup_steps`) on random data.

    Two warm-up steps: the first steps of a fresh model grow the allocator and page in buffers, and
    timing them (measured: 605 ms instead of 200 ms for w16 d4 128x128 b8) misranks the ladder."""
    cfg = replace(model, base_width=c.base_width, depth=c.depth, in_channels=in_channels, out_channels=out_channels)
    net = build_model(cfg).to(device)
    loss_fn = SegmentationLoss(loss).to(device)
    optimizer = build_optimizer(net, OptimConfig())
    augmenter = None
    if augment.enabled:
        augmenter = Augmenter(augment, seed=0)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(timed_steps + warmup_steps):
        images = torch.randn((c.batch, in_channels, *c.patch), generator=gen)
        labels = torch.randint(0, out_channels, (c.batch, *c.patch), generator=gen)
        t0 = time.perf_counter()
        x, y = images.to(device), labels.to(device)
        if augmenter is not None:
            x, y = augmenter(x, y)
        train_step(net, x, y, loss_fn=loss_fn, optimizer=optimizer, precision=Precision(None, False), scaler=None,
                   grad_clip=12.0, step=i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup_steps:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def measure_throughput(candidates: Sequence[Candidate], *, in_channels: int, out_channels: int, max_seconds: float,
                       model: ModelConfig | None = None, loss: LossConfig | None = None,
                       augment: AugmentConfig | None = None, device: str | torch.device = "cpu",
                       timed_steps: int = 3, stop_when: Callable[[Candidate, float], bool] | None = None,
                       log: Callable[[str], object] | None = None) -> MeasuredThroughput:
    """Time `candidates` (cheapest first) within `max_seconds` of wall clock; see the module docstring."""
    started = time.perf_counter()
    result = MeasuredThroughput(in_channels, out_channels)
    device = torch.device(device)
    ordered = sorted(candidates, key=lambda c: train_flops(c, in_channels, out_channels))
    for c in ordered:
        left = max_seconds - (time.perf_counter() - started)
        predicted = result(c) * (timed_steps + WARMUP_STEPS) * 1.5 + 0.05  # steps + model build, with a margin
        if left <= 0 or (result.table and predicted > left) or (not result.table and left < 0.05):
            break
        seconds = time_candidate(c, in_channels=in_channels, out_channels=out_channels, model=model or ModelConfig(),
                                 loss=loss or LossConfig(), augment=augment or AugmentConfig(), device=device,
                                 timed_steps=timed_steps)
        result.table[c] = seconds
        if log:
            log(f"timing candidates: {c.label():<26} {seconds * 1000:8.1f} ms/step")
        if stop_when is not None and stop_when(c, seconds):
            break
    result.seconds_spent = time.perf_counter() - started
    return result
