"""Streaming inference on a gigapixel BigTIFF: peak memory and throughput vs the in-memory path.

Generates a --size x --size RGB tiled BigTIFF under /tmp tile by tile (tifffile consuming a
generator, so generation stays in bounded memory), runs `predict_stream` on it in a child process
and `predict_tiled` on a 4096x4096 in-memory image in a child before and another after it (median
of --repeats runs each, so a load change during the long streaming run shows as a gap between the
two), each reporting wall time, CPU time and peak RSS (`ru_maxrss`). Besides MP/s it reports the
op counts that do not depend on load (tiles per megapixel, source rows decoded, label bytes
encoded) and where each path's time went: `predict_stream`'s own `StreamReport` phases, and for
the in-memory path the predictor's share (timed around each call). With `--cli` it also runs what
a user types, `unetkit predict MODEL big.tif --max-memory 1G` (which streams the file by itself:
it is over the memory limit), end to end: start-up, model load and backend, streaming, writing.
Targets: streaming peak RSS < 1.5 GB, streaming MP/s within 10% of in-memory. The default model
is small (a random-weight unetkit UNet, base width 8, depth 3, ONNX Runtime): the figure is then
about the engine's overhead and memory; `--width 16 --depth 4` is the DRIVE plan's network
(`benchmarks/configs/drive_foundation.json`), random weights of that configuration (the time does
not depend on the weights' values). Files are deleted afterwards. Appends to docs/benchmarks.md
(`--out` elsewhere for a trial run).

    .venv/bin/python benchmarks/gigapixel.py [--size 40000] [--model M] [--width 8] [--depth 3] [--tile 256]
                                             [--repeats 3] [--cli]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from report import append_markdown

MEMORY_SIZE = 4096


def generate(path: Path, size: int, tile: int = 512) -> None:
    import tifffile

    def tiles():
        yy, xx = np.mgrid[0:tile, 0:tile].astype(np.float32)
        rng = np.random.default_rng(0)
        for ty in range(0, size, tile):
            for tx in range(0, size, tile):
                base = 128 + 60 * np.sin((xx + tx) / 37.0) * np.cos((yy + ty) / 53.0)
                t = base[..., None] + rng.normal(0, 10, (tile, tile, 3))
                yield np.clip(t, 0, 255).astype(np.uint8)

    tifffile.imwrite(path, data=tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), bigtiff=True,
                     photometric="rgb", compression=None)


def small_artifact(path: Path, width: int, depth: int = 3) -> Path:
    import torch

    from unetkit.artifact import ArtifactMeta, save_artifact
    from unetkit.config import ModelConfig
    from unetkit.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=3, out_channels=2, base_width=width, depth=depth)
    meta = ArtifactMeta(model=cfg, class_names=("background", "foreground"), mean=(128.0,) * 3, std=(60.0,) * 3,
                        patch_size=(256, 256))
    return save_artifact(path, build_model(cfg).eval(), meta)


class TimedPredictor:
    """The predictor, with the tiles it was given and the seconds it took (for the in-memory path)."""

    def __init__(self, predictor) -> None:
        self.predictor, self.tiles, self.seconds = predictor, 0, 0.0

    def __getattr__(self, name: str):
        return getattr(self.predictor, name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = self.predictor(batch)
        self.seconds += time.perf_counter() - start
        self.tiles += len(batch)
        return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(mode: str, model: str, source: str, out: str, tile: int, backend: str, repeats: int) -> None:
    warnings.simplefilter("ignore")
    from unetkit.artifact import load_artifact
    from unetkit.config import TileConfig
    from unetkit.inference.backends import make_predictor
    from unetkit.inference.predict import predict_tiled
    from unetkit.inference.streaming import predict_stream

    predictor = make_predictor(load_artifact(model), backend)
    config = TileConfig(tile_size=(tile, tile))
    predictor(np.zeros((config.batch_size, 3, tile, tile), np.float32))  # warm-up outside the timing
    if mode == "stream":
        import tifffile

        with tifffile.TiffFile(source) as tif:
            height, width = tif.series[0].shape[:2]
        cpu, start = cpu_seconds(), time.perf_counter()
        report = predict_stream(predictor, source, out, config)
        result = {"seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu, "pixels": height * width,
                  "tiles": report.forward_tiles, "phases": report.seconds, "source_rows": report.source_rows,
                  "height": height, "label_bytes": Path(out).stat().st_size}
    else:
        image = np.random.default_rng(0).random((3, MEMORY_SIZE, MEMORY_SIZE), dtype=np.float32)
        image *= 255.0  # float32 throughout: a float64 draw would add 400 MB to this child's peak RSS
        runs = []
        for _ in range(repeats):
            timed = TimedPredictor(predictor)
            cpu, start = cpu_seconds(), time.perf_counter()
            predict_tiled(timed, image, config)
            runs.append({"seconds": time.perf_counter() - start, "cpu": cpu_seconds() - cpu, "forward": timed.seconds,
                         "tiles": timed.tiles})
        median = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        result = {**median, "pixels": MEMORY_SIZE**2, "runs": [round(r["seconds"], 3) for r in runs],
                  "phases": {"forward": median["forward"], "engine": median["seconds"] - median["forward"],
                             "total": median["seconds"]}}
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(result))


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


CLI_WRAPPER = """import json, resource, sys
from unetkit.cli import main
try:
    main()
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "code": code}), file=sys.stderr)
"""


def run_cli(model: str, image: Path, out: Path, backend: str, tile: int) -> dict:
    """`unetkit predict MODEL big.tif` as a user runs it (in a child that reports its own peak RSS)."""
    args = ["predict", model, str(image), "--out", str(out), "--backend", backend, "--tile", str(tile), "--max-memory", "1G"]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CLI_WRAPPER, *args], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    if status["code"] not in (0, None):
        raise SystemExit(f"unetkit predict failed:\n{proc.stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss": status["rss"], "files": sorted(p.name for p in out.iterdir()),
            "command": " ".join(["unetkit", *args[:1], "MODEL", "big.tif", *args[3:4], "OUT", *args[5:]])}


def phase_line(phases: dict[str, float], keys: list[str]) -> str:
    total = phases["total"]
    return ", ".join(f"{k} {100 * phases[k] / total:.1f}%" for k in keys if k in phases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=40000)
    parser.add_argument("--model", default=None, help="artifact (default: random UNet base --width, depth 3)")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time `unetkit predict MODEL big.tif` end to end")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--repeats", type=int, default=3, help="in-memory runs per child (median)")
    parser.add_argument("--child", nargs=5, metavar=("MODE", "MODEL", "SOURCE", "OUT", "TILE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if args.child:
        mode, model, source, out, tile = args.child
        return child(mode, model, source, out, int(tile), args.backend, args.repeats)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="unetkit-gigapixel-", dir="/tmp") as tmp:
        tmpdir = Path(tmp)
        model = args.model or str(small_artifact(tmpdir / "small.unetkit", args.width, args.depth))
        image = tmpdir / "big.tif"
        start = time.perf_counter()
        generate(image, args.size)
        t_gen = time.perf_counter() - start
        common = (str(args.tile), "--backend", args.backend, "--repeats", str(args.repeats))
        before = run_child("memory", model, "-", "-", *common)
        stream = run_child("stream", model, str(image), str(tmpdir / "labels.tif"), *common)
        after = run_child("memory", model, "-", "-", *common)
        cli = run_cli(model, image, tmpdir / "cli", args.backend, args.tile) if args.cli else None
    load_after = os.getloadavg()[0]
    mem_seconds = statistics.mean([before["seconds"], after["seconds"]])
    mp_mem, mp_stream = before["pixels"] / mem_seconds / 1e6, stream["pixels"] / stream["seconds"] / 1e6
    tiles_mp_mem, tiles_mp_stream = before["tiles"] / before["pixels"] * 1e6, stream["tiles"] / stream["pixels"] * 1e6
    ms_tile_mem, ms_tile_stream = 1e3 * mem_seconds / before["tiles"], 1e3 * stream["seconds"] / stream["tiles"]
    from unetkit.inference.backends import machine_id

    gib = 2**30
    text = "\n".join([
        f"\n## Gigapixel streaming ({time.strftime('%Y-%m-%d %H:%M')})\n",
        f"`.venv/bin/python {' '.join(['benchmarks/gigapixel.py', *sys.argv[1:]])}`\n",
        f"Machine: {machine_id()}, {platform.platform()}. Load average (1 min) {load_before:.2f} before / "
        f"{load_after:.2f} after{' - machine shared with other jobs, figures are noisy' if max(load_before, load_after) > 0.5 else ''}.\n",
        f"Model: {args.model or f'random unetkit UNet base {args.width}, depth {args.depth}'}, backend {args.backend}, tile "
        f"{args.tile}, overlap 0.25, Gaussian; {args.size}x{args.size} RGB tiled BigTIFF (generated in {t_gen:.0f} s). "
        f"In memory: median of {args.repeats} runs, in a child before and one after the streaming run.\n",
        "| path | image | seconds | CPU seconds | MP/s | tiles/MP | ms/tile | peak RSS |", "|---|---|---|---|---|---|---|---|",
        *[f"| predict_tiled (in memory), {when} | {MEMORY_SIZE}x{MEMORY_SIZE} | {r['seconds']:.2f} | {r['cpu']:.2f} | "
          f"{r['pixels'] / r['seconds'] / 1e6:.2f} | {tiles_mp_mem:.2f} | {1e3 * r['seconds'] / r['tiles']:.2f} | "
          f"{r['peak_rss'] / gib:.2f} GiB |" for when, r in (("before", before), ("after", after))],
        f"| predict_stream (BigTIFF -> tiled BigTIFF labels) | {args.size}x{args.size} | {stream['seconds']:.1f} | "
        f"{stream['cpu']:.1f} | {mp_stream:.2f} | {tiles_mp_stream:.2f} | {ms_tile_stream:.2f} | {stream['peak_rss'] / gib:.2f} GiB |",
        *([f"| `unetkit predict MODEL big.tif --max-memory 1G` (CLI, end to end: start-up, model load, streaming) | {args.size}x{args.size} | "
           f"{cli['seconds']:.1f} | - | {stream['pixels'] / cli['seconds'] / 1e6:.2f} | - | - | {cli['peak_rss'] / gib:.2f} GiB |"]
          if cli else []),
        f"\nStreaming at {100 * mp_stream / mp_mem:.0f}% of the in-memory throughput in MP/s (target >= 90%), "
        f"{100 * ms_tile_mem / ms_tile_stream:.0f}% per tile (the {args.size}² image needs "
        f"{100 * (tiles_mp_stream / tiles_mp_mem - 1):+.1f}% tiles per pixel: same overlap, other edge remainders); "
        f"peak RSS {stream['peak_rss'] / gib:.2f} GiB (target < 1.5 GB).\n",
        f"Where the time went. Streaming (main thread): {phase_line(stream['phases'], ['read', 'forward', 'blend', 'labels', 'write', 'other'])}; "
        f"the writer thread encoded the label tiles ({stream['label_bytes'] / 2**20:.0f} MiB on disk) in "
        f"{stream['phases']['writer cpu']:.1f} CPU s alongside; {stream['source_rows']} source rows decoded for "
        f"{stream['height']} image rows. In memory (before/after): "
        f"{phase_line(before['phases'], ['forward', 'engine'])} / {phase_line(after['phases'], ['forward', 'engine'])} "
        "(engine: slicing, softmax, blending, normalizing).\n",
        *([f"The CLI run wrote {', '.join(cli['files'])} (`{cli['command']}`).\n"] if cli else []),
    ])
    print(text)
    append_markdown(args.out, text)


if __name__ == "__main__":
    main()
