"""Streaming inference on a gigapixel BigTIFF: peak memory and throughput vs the in-memory path.

Generates a --size x --size RGB tiled BigTIFF under /tmp tile by tile (tifffile consuming a
generator, so generation stays in bounded memory), runs `predict_stream` on it in a child process
and `predict_tiled` on a 4096x4096 in-memory image in another, each reporting its wall time and
peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`). Targets: streaming peak RSS < 1.5 GB,
streaming MP/s within 10% of in-memory. The model is small on purpose (default: a random-weight
unetkit UNet, base width 8, depth 3, ONNX Runtime): the figure is about the engine's overhead and
memory, not the network. Files are deleted afterwards. Appends to docs/benchmarks.md.

    .venv/bin/python benchmarks/gigapixel.py [--size 40000] [--model M] [--width 8] [--tile 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from report import append_markdown


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


def small_artifact(path: Path, width: int) -> Path:
    import torch

    from unetkit.artifact import ArtifactMeta, save_artifact
    from unetkit.config import ModelConfig
    from unetkit.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=3, out_channels=2, base_width=width, depth=3)
    meta = ArtifactMeta(model=cfg, class_names=("background", "foreground"), mean=(128.0,) * 3, std=(60.0,) * 3,
                        patch_size=(256, 256))
    return save_artifact(path, build_model(cfg).eval(), meta)


def child(mode: str, model: str, source: str, out: str, tile: int, backend: str) -> None:
    warnings.simplefilter("ignore")
    from unetkit.artifact import load_artifact
    from unetkit.config import TileConfig
    from unetkit.inference.backends import make_predictor
    from unetkit.inference.predict import predict_tiled
    from unetkit.inference.streaming import predict_stream

    predictor = make_predictor(load_artifact(model), backend)
    config = TileConfig(tile_size=(tile, tile))
    predictor(np.zeros((config.batch_size, 3, tile, tile), np.float32))  # warm-up outside the timing
    start = time.perf_counter()
    if mode == "stream":
        predict_stream(predictor, source, out, config)
        import tifffile

        pixels = int(np.prod(tifffile.TiffFile(source).series[0].shape[:2]))
    else:
        image = np.random.default_rng(0).uniform(0, 255, (3, 4096, 4096)).astype(np.float32)
        start = time.perf_counter()
        predict_tiled(predictor, image, config)
        pixels = 4096 * 4096
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "pixels": pixels, "peak_rss": rss}))


def run_child(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=40000)
    parser.add_argument("--model", default=None, help="artifact (default: random UNet base --width, depth 3)")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--child", nargs=5, metavar=("MODE", "MODEL", "SOURCE", "OUT", "TILE"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if args.child:
        mode, model, source, out, tile = args.child
        return child(mode, model, source, out, int(tile), args.backend)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="unetkit-gigapixel-", dir="/tmp") as tmp:
        tmpdir = Path(tmp)
        model = args.model or str(small_artifact(tmpdir / "small.unetkit", args.width))
        image = tmpdir / "big.tif"
        start = time.perf_counter()
        generate(image, args.size)
        t_gen = time.perf_counter() - start
        mem = run_child("memory", model, "-", "-", str(args.tile), "--backend", args.backend)
        stream = run_child("stream", model, str(image), str(tmpdir / "labels.tif"), str(args.tile), "--backend", args.backend)
    load_after = os.getloadavg()[0]
    mp_mem, mp_stream = mem["pixels"] / mem["seconds"] / 1e6, stream["pixels"] / stream["seconds"] / 1e6
    from unetkit.inference.backends import machine_id

    text = "\n".join([
        f"\n## Gigapixel streaming ({time.strftime('%Y-%m-%d %H:%M')})\n",
        f"`.venv/bin/python {' '.join(['benchmarks/gigapixel.py', *sys.argv[1:]])}`\n",
        f"Machine: {machine_id()}, {platform.platform()}. Load average (1 min) {load_before:.2f} before / "
        f"{load_after:.2f} after{' - machine shared with other jobs, figures are noisy' if max(load_before, load_after) > 0.5 else ''}.\n",
        f"Model: {args.model or f'random unetkit UNet base {args.width}, depth 3'}, backend {args.backend}, tile "
        f"{args.tile}, overlap 0.25, Gaussian; {args.size}x{args.size} RGB tiled BigTIFF (generated in {t_gen:.0f} s).\n",
        "| path | image | seconds | MP/s | peak RSS |", "|---|---|---|---|---|",
        f"| predict_tiled (in memory) | 4096x4096 | {mem['seconds']:.1f} | {mp_mem:.2f} | {mem['peak_rss'] / 2**30:.2f} GiB |",
        f"| predict_stream (BigTIFF -> tiled BigTIFF labels) | {args.size}x{args.size} | {stream['seconds']:.1f} | "
        f"{mp_stream:.2f} | {stream['peak_rss'] / 2**30:.2f} GiB |",
        f"\nStreaming at {100 * mp_stream / mp_mem:.0f}% of the in-memory throughput (target >= 90%), peak RSS "
        f"{stream['peak_rss'] / 2**30:.2f} GiB (target < 1.5 GB).\n",
    ])
    print(text)
    append_markdown(args.out, text)


if __name__ == "__main__":
    main()
