"""The planning rules of two source trees side by side, on the fingerprints of real data sets, one command:

    .venv/bin/python benchmarks/plan_rules.py --arm old=/tmp/base/src --arm new=src \
        --data drive=/work/shared/data/drive/training:5 --data isbi=/work/shared/data/isbi2012/train:5 \
        --data camvid=runs/bench-camvid/camvid:101

Each data set's fingerprint is computed once (with this tree's `unetkit.data.fingerprint.summarize`,
cached as JSON in `--cache`), then every arm plans it (a subprocess with `PYTHONPATH=<arm's src>`)
for the same simulated machine (`--gflops`, the planner tests' 2-core CPU) and budgets, with the
given number of validation images. No training: this shows which choices a rule change moves on
which data set (a change that moves nothing cannot help or hurt there), the training arms
(`benchmarks/camvid.py`, `drive.py`, `isbi.py`) measure what the moved choices are worth.
Appends the table of the choices that differ to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from functools import reduce
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import append_markdown  # noqa: E402

KEYS = ("model.base_width", "model.depth", "data.resolution", "data.patch_size", "data.batch_size", "model.norm", "loss.dice",
        "loss.lovasz", "loss.lovasz_sample", "loss.cldice", "loss.class_weights", "data.rare_oversample",
        "augment.rotate_degrees", "augment.scale", "augment.flip_vertical", "augment.rot90", "augment.brightness",
        "steps")


def fingerprint_of(folder: Path, cache: Path) -> Path:
    path = cache / (folder.resolve().as_posix().strip("/").replace("/", "_") + ".json")
    if not path.exists():
        from unetkit.data.atomic import atomic_write
        from unetkit.data.dataset import load_samples
        from unetkit.data.fingerprint import summarize
        from unetkit.data.pairing import pair_samples
        from unetkit.data.spec import load_spec

        spec = load_spec(folder)
        summary = summarize(load_samples(pair_samples(spec), spec, progress=False), spec.class_names)
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(summary).encode())
    return path


def child(fingerprints: dict[str, tuple[str, int]], budgets: list[float], gflops: float) -> None:
    """Runs under an arm's source tree: its plans as JSON on stdout."""
    from unetkit.config import TrainConfig
    from unetkit.planning import apply_plan
    from unetkit.planning.rules import make_plan
    from unetkit.planning.throughput import simulated_throughput

    plans = {}
    for name, (path, n_val) in fingerprints.items():
        fp = json.loads(Path(path).read_text())
        for budget in budgets:
            plan = make_plan(fp, simulated_throughput(gflops, 0.01), budget, {}, n_val=n_val)
            config = apply_plan(TrainConfig(), plan)  # a setting the plan leaves alone has the config's default
            plans[f"{name} {budget / 60:g} min"] = {k: reduce(getattr, k.split("."), config) for k in KEYS}
    print(json.dumps(plans))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=SRC")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=FOLDER:N_VAL")
    ap.add_argument("--budget", action="append", type=float, default=[], help="minutes (default 10 and 60)")
    ap.add_argument("--gflops", type=float, default=40.0, help="the simulated machine's training speed")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "fingerprints")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    budgets = [60.0 * b for b in (args.budget or [10.0, 60.0])]
    if args.child:
        child(json.loads(args.child), budgets, args.gflops)
        return
    fingerprints = {}
    for item in args.data:
        name, rest = item.split("=", 1)
        folder, _, n_val = rest.rpartition(":")
        fingerprints[name] = (str(fingerprint_of(Path(folder), args.cache)), int(n_val))
    plans = {}
    for item in args.arm:
        name, src = item.split("=", 1)
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
        cmd = [sys.executable, __file__, "--child", json.dumps(fingerprints), "--gflops", str(args.gflops)]
        cmd += [f"--budget={b / 60:g}" for b in budgets]
        plans[name] = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
    arms = list(plans)
    rows = [f"| data set, budget | setting | {' | '.join(arms)} |", "| --- | --- |" + " --- |" * len(arms)]
    for case in plans[arms[0]]:
        differing = [k for k in KEYS if len({json.dumps(plans[a][case][k]) for a in arms}) > 1]
        for key in differing or ["(all)"]:
            values = [json.dumps(plans[a][case][key]) if key in KEYS else "same plan" for a in arms]
            rows.append(f"| {case} | {key} | {' | '.join(values)} |")
    text = "\n".join([
        f"## Planning rules side by side ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
        f"Command: `python benchmarks/plan_rules.py {' '.join(sys.argv[1:])}`  ",
        f"Simulated machine: {args.gflops:g} GFLOP/s + 10 ms/step (no training; the choices each arm's rules make "
        "on the real fingerprints). Only settings that differ are listed.", "", *rows, ""])
    append_markdown(args.benchmarks, text)
    print(text)


if __name__ == "__main__":
    main()
