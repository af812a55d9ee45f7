"""Training step time per compute mode: fp32, fp32 + channels_last, bf16 autocast, bf16 + channels_last.

The DRIVE plan's models (unetkit `unet`, BatchNorm, depth 4, widths 16 and 32), 128x128 patches,
batch 8, AdamW, the DRIVE plan's loss (CE + foreground Dice + clDice 0.5; `--loss ce` for plain
cross-entropy), through unetkit's own `train_step` and `ComputeMode` -- the code `unetkit train`
runs. Each mode trains its own copy of the same initial weights on the same batches; the modes are
timed in alternation (`--steps` steps per mode per repeat, after `--warmup` steps), so a change of
machine load hits every mode alike; the figure is the median over `--repeats` of the mean step time.
Random batches by default; `--data DIR` takes real patches from a data folder (e.g.
../shared/data/drive), normalised as training does. Reports seconds per step, the ratio vs fp32,
and the final probe loss of each mode (a sanity check: bf16 should track fp32), with the CPU model
and its relevant flags from `lscpu`.

A mode name ending in `+compile` (e.g. `fp32+compile`, `fp32+cl+compile`) runs that mode on
`torch.compile(model)` (inductor, its default settings): is compiling the training step worth its
compile time on this CPU? Each mode's warm-up seconds are reported, which for a compiled mode is
the compilation.

    .venv/bin/python benchmarks/train_precision.py [--widths 16,32] [--repeats 5] [--data ../shared/data/drive] \\
        [--append docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from report import append_markdown

from unetkit.config import DataConfig, LossConfig, ModelConfig, OptimConfig
from unetkit.losses.losses import SegmentationLoss
from unetkit.models import build_model
from unetkit.runtime import keep_freed_memory
from unetkit.training.loop import train_step
from unetkit.training.modes import ComputeMode, mode_by_name, native_bf16
from unetkit.training.optim import build_optimizer

MODES = ("fp32", "fp32+cl", "bf16", "bf16+cl")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> tuple[str, str]:
    """(CPU model name, its flags relevant to bf16/int8) from lscpu, else /proc/cpuinfo."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name", platform.processor() or "unknown CPU")
    flags = set(fields.get("flags", "").split())
    return model, " ".join(f for f in FLAGS if f in flags) or "none of " + ", ".join(FLAGS)


def batches(args, in_channels: int = 3, out_channels: int = 2):
    """Step i's (images, labels): real normalised patches with --data, else random."""
    if args.data:
        from unetkit.training.prepare import load_training_data

        data = load_training_data(DataConfig(data=args.data, patch_size=(args.patch, args.patch),
                                             batch_size=args.batch))
        sampler = data.patch_sampler(DataConfig(data=args.data, patch_size=(args.patch, args.patch),
                                                batch_size=args.batch), np.random.default_rng(0))
        mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        std = torch.tensor(data.std).view(1, -1, 1, 1)
        cache = [sampler.next_batch() for _ in range(8)]
        return lambda i: ((cache[i % 8][0] - mean) / std, cache[i % 8][1]), data.in_channels, len(data.class_names)
    gen = torch.Generator().manual_seed(0)
    cache = [(torch.randn(args.batch, in_channels, args.patch, args.patch, generator=gen),
              torch.randint(0, out_channels, (args.batch, args.patch, args.patch), generator=gen)) for _ in range(8)]
    return lambda i: cache[i % 8], in_channels, out_channels


def time_modes(width: int, args) -> dict[str, tuple[float, float, float]]:
    """Mode -> (median seconds per step, last loss, warm-up seconds)."""
    batch, in_channels, out_channels = batches(args)
    torch.manual_seed(0)
    base = build_model(ModelConfig(base_width=width, depth=args.depth, norm=args.norm, in_channels=in_channels,
                                   out_channels=out_channels))
    loss = (LossConfig(ce=1.0, dice=0.0) if args.loss == "ce"
            else LossConfig(ce=1.0, dice=1.0, cldice=0.5, dice_include_background=False))
    loss_fn = SegmentationLoss(loss)
    modes: dict[str, ComputeMode] = {name: mode_by_name(name.removesuffix("+compile")) for name in args.modes}
    nets = {name: m.prepare(copy.deepcopy(base)) for name, m in modes.items()}
    optimizers = {name: build_optimizer(net, OptimConfig()) for name, net in nets.items()}
    nets = {name: torch.compile(net) if name.endswith("+compile") else net for name, net in nets.items()}
    counters = dict.fromkeys(modes, 0)
    last = dict.fromkeys(modes, float("nan"))

    def steps(name: str, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = batch(counters[name])
            terms = train_step(nets[name], x, y, loss_fn=loss_fn, optimizer=optimizers[name], mode=modes[name],
                               scaler=None, grad_clip=12.0, step=counters[name])
            counters[name] += 1
            last[name] = terms["loss"]
        return (time.perf_counter() - t0) / n

    warmup = {name: steps(name, args.warmup) * args.warmup for name in modes}
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name in modes:  # alternation: load changes hit every mode alike
            seconds[name].append(steps(name, args.steps))
    return {name: (statistics.median(seconds[name]), last[name], warmup[name]) for name in modes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="16,32", help="base widths of the U-Nets")
    parser.add_argument("--depth", type=int, default=4, help="down-sampling steps of the U-Nets")
    parser.add_argument("--norm", default="batch", choices=("batch", "instance", "group"),
                        help="normalization layers of the U-Nets (the plan's R9 choice)")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--loss", choices=("plan", "ce"), default="plan")
    parser.add_argument("--data", default=None, help="take real patches from this data folder")
    parser.add_argument("--append", default=None, help="append a section to this markdown file")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    keep_freed_memory()  # as unetkit train does on a CPU
    cpu, flags = cpu_description()
    load_before = os.getloadavg()[0]
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        results = time_modes(width, args)
        fp32 = results.get("fp32", (float("nan"),))[0]
        for name, (seconds, loss, warm) in results.items():
            rows.append((f"w{width} d{args.depth}", name, seconds, fp32 / seconds, loss, warm))
            print(f"w{width} d{args.depth}  {name:<8} {seconds * 1000:8.1f} ms/step  {fp32 / seconds:5.2f}x fp32  "
                  f"loss {loss:.4f}  warm-up {warm:.1f} s", flush=True)
    load_after = os.getloadavg()[0]
    if args.append:
        command = "python benchmarks/train_precision.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        busy = max(load_before, load_after) > 0.5
        lines = [
            f"## Training step time per compute mode ({time.strftime('%Y-%m-%d')})", "",
            f"`{command}`", "",
            f"Machine: {cpu}; flags: {flags}; oneDNN native bf16: {native_bf16()}; {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.platform()}; load average "
            f"{load_before:.1f} / {load_after:.1f}" + (" - machine shared with other jobs, figures are noisy" if busy
                                                       else "") + ".",
            f"Model: unetkit unet depth {args.depth} {args.norm} norm, {args.patch}x{args.patch}, batch {args.batch}, AdamW, "
            f"loss {'CE' if args.loss == 'ce' else 'CE + foreground Dice + clDice 0.5 (the DRIVE plan)'}; "
            f"{'real patches from ' + args.data if args.data else 'random batches'}; median of {args.repeats} "
            f"alternating rounds of {args.steps} steps after {args.warmup} warm-up steps.", "",
            "| model | mode | s/step | vs fp32 | last loss | warm-up s |", "| --- | --- | ---: | ---: | ---: | ---: |",
            *[f"| {m} | {name} | {s:.3f} | {r:.2f}x | {loss:.4f} | {w:.1f} |" for m, name, s, r, loss, w in rows],
        ]
        print(f"appended to {append_markdown(args.append, chr(10).join(lines))}")


if __name__ == "__main__":
    main()
