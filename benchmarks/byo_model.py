"""A user's own network through unetkit: MONAI BasicUNet vs the built-in U-Net, same data, steps and path.

Both are trained by `unetkit.training.fit.fit` (BasicUNet passed as `model=`, registered for reloading
through a plugin in the entry-point group `unetkit.models`, written to a temporary folder as an installed
package), then each artifact goes the same way: reloaded, tiled torch inference on the DRIVE validation
images (F1 on FOV pixels), ONNX export (parity gate: max |probability difference| vs torch), ONNX
Runtime tiled inference, and the framework-free serving core (`Service.segment`). The figures: labels
that ONNX and serving give vs torch's (agreement), F1, seconds per training step and per served image.
Appends to docs/benchmarks.md.

    nice -n -15 .venv/bin/python benchmarks/byo_model.py --data /work/shared/data/drive/training --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import append_markdown

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_CODE = '''
from monai.networks.nets import BasicUNet


def build_basicunet(cfg):
    net = BasicUNet(spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                    **cfg.options)
    net.size_multiple = 16
    return net
'''
FEATURES = [16, 16, 32, 64, 128, 16]  # BasicUNet's widths at the built-in w16 d4 U-Net's levels (its blocks are lighter)


def install_plugin(root: Path) -> None:
    (root / "bench_byo_plugin").mkdir(parents=True)
    (root / "bench_byo_plugin" / "__init__.py").write_text(PLUGIN_CODE)
    info = root / "bench_byo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-byo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[unetkit.models]\nbasicunet = bench_byo_plugin:build_basicunet\n")
    sys.path.insert(0, str(root))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return platform.processor() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "unknown CPU")


def data_shape(data: Path) -> tuple[int, int]:
    """(image channels, classes) of a data folder, as training resolves them."""
    from unetkit.data.io import read_image
    from unetkit.data.pairing import pair_samples
    from unetkit.data.spec import load_spec

    spec = load_spec(data)
    return read_image(pair_samples(spec)[0].image).shape[0], len(spec.classes)


def seconds_per_step(out_dir: Path) -> float:
    events = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"]
    return (train[-1]["time"] - train[0]["time"]) / max(1, train[-1]["step"] - train[0]["step"])


def f1(labels: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    valid = truth != 255
    p, t = labels[valid] == 1, truth[valid] == 1
    return int(np.sum(p & t)), int(np.sum(p & ~t)), int(np.sum(~p & t))


def measure(path: Path, data: Path, val_keys: list[str], work: Path) -> dict:
    from dataclasses import replace

    from unetkit.config import ExportConfig, ServeConfig, TileConfig
    from unetkit.evaluation.labelled import load_labelled
    from unetkit.export.onnx import export_artifact
    from unetkit.inference.backends import OnnxPredictor
    from unetkit.inference.predict import predict_image, predict_tiled
    from unetkit.models import count_parameters
    from unetkit.serve.service import Service

    artifact, samples = load_labelled(path, data, val_keys, progress=False)
    result = export_artifact(artifact, work / f"{path.parent.name}.onnx", ExportConfig())
    onnx = OnnxPredictor(result.model_path, output="probabilities")
    tile = TileConfig(tile_size=tuple(artifact.meta.patch_size), activation="none")
    service = Service.from_artifact(artifact, ServeConfig(max_wait_ms=0.0))
    counts, agree_onnx, agree_serve, serve_seconds = np.zeros(3), [], [], []
    try:
        for s in samples:
            torch_labels = predict_image(artifact, s.image).argmax(0)
            onnx_labels = predict_tiled(onnx, s.image, replace(tile)).argmax(0)
            t0 = time.perf_counter()
            served = service.segment(s.image)
            serve_seconds.append(time.perf_counter() - t0)
            counts += f1(torch_labels, s.labels)
            agree_onnx.append(float(np.mean(onnx_labels == torch_labels)))
            agree_serve.append(float(np.mean(served.labels == torch_labels)))
    finally:
        service.close()
    tp, fp, fn = counts
    return {"params": count_parameters(artifact.build_model()), "f1": 2 * tp / max(1, 2 * tp + fp + fn),
            "parity": result.max_abs_diff, "agree_onnx": min(agree_onnx), "agree_serve": min(agree_serve),
            "serve_s": statistics.median(serve_seconds), "temperature": artifact.meta.temperature}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="DRIVE training folder (images, 1st_manual, mask)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--keys-val", default="36,37,38,39,40")
    ap.add_argument("--val-every", type=int, default=0, help="steps between validations (0: only at the end)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()

    import torch

    from unetkit.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
    from unetkit.inference.backends import machine_id
    from unetkit.training.fit import fit

    val_keys = [k for k in args.keys_val.split(",") if k]
    load_before = os.getloadavg()[0]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        install_plugin(work / "site")
        from monai.networks.nets import BasicUNet

        base = TrainConfig(data=DataConfig(data=str(args.data), val_keys=tuple(val_keys), patch_size=(args.patch, args.patch),
                                           batch_size=args.batch), augment=AugmentConfig(), steps=args.steps,
                           val_every=args.val_every or args.steps, precision="fp32", memory_format="contiguous",
                           progress=False)
        channels, classes = data_shape(args.data)
        runs = {
            "built-in U-Net (w16 d4)": (ModelConfig(base_width=16, depth=4), None),
            "MONAI BasicUNet via fit(model=...)": (ModelConfig(arch="basicunet", options={"features": FEATURES}), "monai"),
        }
        for name, (model_cfg, kind) in runs.items():
            out = work / name.split()[0].lower().replace("-", "")
            cfg = TrainConfig(**{**base.__dict__, "model": model_cfg, "out_dir": str(out)})
            torch.manual_seed(0)
            net = BasicUNet(spatial_dims=2, in_channels=channels, out_channels=classes, features=FEATURES) if kind else None
            t0 = time.perf_counter()
            path = fit(cfg, model=net)
            wall = time.perf_counter() - t0
            rows[name] = measure(path, args.data, val_keys, work) | {"step_s": seconds_per_step(out), "wall": wall}
            print(name, rows[name], flush=True)
    load_after = os.getloadavg()[0]
    lines = [
        f"## Bring your own model: MONAI BasicUNet through fit, export and serving vs the built-in U-Net "
        f"({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)",
        "",
        f"Command: `nice -n -15 .venv/bin/python benchmarks/byo_model.py --data {args.data} --steps {args.steps} "
        f"--patch {args.patch} --batch {args.batch} --keys-val {args.keys_val}`",
        f"Machine: {cpu_name()} ({machine_id()}), Python {platform.python_version()}; load average {load_before:.1f} before, "
        f"{load_after:.1f} after (a shared machine: step times are slower than on an idle one, and the same for both).",
        f"Data {args.data}: validated on {','.join(val_keys)} (ROI only), trained on the other images; "
        f"{args.steps} steps, patch {args.patch}, batch {args.batch}, fp32, same seed and augmentation.",
        "",
        "| model | params | s/step | val F1 (torch, tiled) | ONNX parity max abs p diff | labels ONNX = torch | labels served = torch | served s/image | temperature |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['params']:,} | {r['step_s']:.3f} | {r['f1']:.4f} | {r['parity']:.2e} | "
                     f"{r['agree_onnx']:.6f} | {r['agree_serve']:.6f} | {r['serve_s']:.2f} | {r['temperature']:.3f} |")
    lines += ["", "Agreement columns: the lowest per-image fraction of identical labels. Parity: the export gate's "
              "figure (random and image-like tiles, odd sizes included).", ""]
    append_markdown(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
