"""Where an exported graph spends its time: ONNX Runtime's per-node kernel times, summed per op type.

    .venv/bin/python benchmarks/onnx_profile.py runs/m/model.onnx runs/m/model.int8.onnx [--tile 256 --batch 4]

Each graph (from `unetkit export`, with or without `--int8`) runs one batch of random tiles in raw
intensity units, 3 warm-up and --runs timed runs with ONNX Runtime's profiler on; prints the wall
time per batch and, per op type, the mean kernel milliseconds per run, their share, and the nodes.
Used for the int8 analysis in docs/benchmarks.md; appends nothing.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def profile(path: Path, batch: np.ndarray, runs: int, threads: int) -> tuple[float, list[tuple[str, float, int]]]:
    """(seconds per batch, [(op type, ms per run, nodes per run)] sorted by time)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="unetkit-profile-")) / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: batch}
    warmup = 3
    for _ in range(warmup):
        session.run(None, feed)
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
    seconds = (time.perf_counter() - start) / runs
    events = json.loads(Path(session.end_profiling()).read_text())
    total: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    calls = warmup + runs
    return seconds, [(op, us / calls / 1e3, nodes[op] // calls) for op, us in total.most_common()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="exported .onnx files")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    batch = np.random.default_rng(0).uniform(0, 255, (args.batch, args.channels, args.tile, args.tile)).astype(np.float32)
    for path in args.models:
        seconds, rows = profile(path, batch, args.runs, args.threads)
        kernel = sum(ms for _, ms, _ in rows)
        print(f"{path}: {seconds * 1e3:.1f} ms per batch of {args.batch} x {args.tile}^2")
        for op, ms, n in rows:
            if ms >= 0.005 * kernel:
                print(f"  {op:<22}{ms:9.2f} ms {100 * ms / kernel:6.1f} %  {n} node(s)")


if __name__ == "__main__":
    main()
