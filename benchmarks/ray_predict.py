"""Batch prediction on Ray vs the local path, on the same cores: images/s and MP/s.

Writes --images RGB PNGs of --size² under /tmp, makes a random-weight unetkit UNet of the DRIVE
plan's configuration (base 16, depth 4: `benchmarks/configs/drive_foundation.json`; the time does
not depend on the weights' values) and predicts the folder, median of --repeats runs each, the
configurations interleaved so that a load change hits them alike:

- local: `unetkit.inference.files.predict_files` in a child process, the backend on all cores;
- ray 1x2: `predict_files_ray` with one worker of two threads (a Ray started on this machine with
  the machine's cores, as `unetkit predict --engine ray` without --address does);
- ray 2x1: two workers of one thread each.

Each timing covers the whole call (loading the model, making and warming the predictors, all
inputs, writing the masks); Ray's own start (`ray.init`) is timed apart. Overhead target: Ray 1x2
within 10 % of local. Appends to docs/benchmarks.md (`--out` elsewhere for a trial run).

    .venv/bin/python benchmarks/ray_predict.py [--images 16] [--size 384] [--backend onnx] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from gigapixel import small_artifact
from report import append_markdown


def child(mode: str, model: str, folder: str, out: str, backend: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    if mode == "local":
        from unetkit.artifact import load_artifact
        from unetkit.inference.backends import make_predictor
        from unetkit.inference.files import predict_files

        start = time.perf_counter()
        predictor = make_predictor(load_artifact(model), backend)  # what predict_files does first, timed apart
        predictor(np.zeros((4, 3, 256, 256), np.float32))
        setup = time.perf_counter() - start
        start = time.perf_counter()
        predict_files(model, [folder], out, backend=backend, progress=False)
        print(json.dumps({"seconds": time.perf_counter() - start, "setup": setup}))
        return
    import ray

    from unetkit.inference.distributed import predict_files_ray

    workers, threads = (int(v) for v in mode.split("x"))
    start = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    started = time.perf_counter() - start
    start = time.perf_counter()
    report = predict_files_ray(model, [folder], out, backend=backend, workers=workers, threads=threads, progress=False)
    seconds = time.perf_counter() - start
    nodes = {name: {"backend": n.backend, "tasks": n.tasks, "seconds": n.seconds} for name, n in report.nodes.items()}
    ray.shutdown()
    print(json.dumps({"seconds": seconds, "setup": report.startup, "ray_init": started, "nodes": nodes}))


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=5, metavar=("MODE", "MODEL", "FOLDER", "OUT", "BACKEND"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    from unetkit.data.io import write_png
    from unetkit.inference.backends import machine_id

    load_before = os.getloadavg()[0]
    modes = ["local", "1x2", "2x1"]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="unetkit-ray-", dir="/tmp") as tmp:
        tmpdir = Path(tmp)
        model = str(small_artifact(tmpdir / "drive_w16_d4.unetkit", 16, 4))
        folder = tmpdir / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            write_png(folder / f"im{i:03d}.png", rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
        for r in range(args.repeats):
            for mode in modes if r % 2 == 0 else modes[::-1]:
                out = tmpdir / f"out-{mode}"
                shutil.rmtree(out, ignore_errors=True)
                runs[mode].append(run_child(mode, model, str(folder), str(out), args.backend))
                assert len(list(out.glob("*_mask.png"))) == args.images
    load_after = os.getloadavg()[0]
    pixels = args.images * args.size**2
    med = {m: statistics.median(r["seconds"] for r in runs[m]) for m in modes}
    work = {m: statistics.median(r["seconds"] - r["setup"] for r in runs[m]) for m in modes}
    names = {"local": "local (`predict_files`, backend on 2 threads)", "1x2": "Ray, 1 worker x 2 threads",
             "2x1": "Ray, 2 workers x 1 thread"}
    listed = {m: ", ".join(f"{r['seconds']:.1f}" for r in runs[m]) for m in modes}
    rows = [f"| {names[m]} | {med[m]:.2f} | {listed[m]} | {med[m] - work[m]:.1f} | {args.images / work[m]:.3f} | "
            f"{pixels / work[m] / 1e6:.3f} | {work['local'] / work[m]:.2f}x |" for m in modes]
    ray_init = statistics.median(r["ray_init"] for m in modes[1:] for r in runs[m])
    last = runs["2x1"][-1]["nodes"]
    text = "\n".join([
        f"\n## Batch prediction on Ray vs local ({time.strftime('%Y-%m-%d %H:%M')})\n",
        f"`.venv/bin/python {' '.join(['benchmarks/ray_predict.py', *sys.argv[1:]])}`\n",
        f"Machine: {machine_id()}, {platform.platform()}, {os.cpu_count()} cores. Load average (1 min) {load_before:.2f} "
        f"before / {load_after:.2f} after{' - machine shared with other jobs, figures are noisy' if max(load_before, load_after) > 0.5 else ''}.\n",
        f"Model: random unetkit UNet base 16, depth 4 (the DRIVE plan's network), backend {args.backend}; {args.images} RGB "
        f"PNGs of {args.size}x{args.size}; each time covers model load, predictor warm-up, all inputs and writing the "
        f"masks; median of {args.repeats} runs, configurations interleaved. Ray's own start (`ray.init`, not in the "
        f"times): {ray_init:.1f} s.\n",
        "Set-up: loading the model and making and warming the predictor(s) (local: timed apart in the same child; Ray: "
        "until every worker answered, `DistributedReport.startup`); images/s and MP/s are over the time after it.\n",
        "| path | seconds (median, whole call) | runs | of which set-up | images/s | MP/s | vs local |",
        "|---|---|---|---|---|---|---|", *rows,
        f"\nRay 1x2 overhead at equal cores once started: {100 * (work['1x2'] / work['local'] - 1):+.1f}% (target <= +10%), "
        f"whole call {100 * (med['1x2'] / med['local'] - 1):+.1f}%; two one-thread workers vs one two-thread worker: "
        f"{work['1x2'] / work['2x1']:.2f}x once started. Last 2x1 run per node: "
        + "; ".join(f"{k}: {v['backend']}, {v['tasks']} tasks, {v['seconds']:.1f} s in tasks" for k, v in last.items()) + ".\n",
    ])
    print(text)
    append_markdown(args.out, text)


if __name__ == "__main__":
    main()
