"""DRIVE levers at equal steps: which planned choice moves held-out F1 / AUC, two runs at a time.

    .venv/bin/python benchmarks/drive_ablation.py --data ../shared/data/drive --variants base,instance

Every variant is the 10-minute plan's rung (w16 d4, 128x128 patches, batch 8, the plan's loss,
sampling and augmentation) trained for a fixed number of steps (`--steps`, default 1600) with
`unetkit train --config C.json --no-plan` on keys 21-35, validated on 36-40, one thread per run and
two runs side by side (a fixed step count makes the comparison independent of the machine's load).
Variants change one thing:

    base       the plan's choices
    no-cldice  loss.cldice 0
    uniform    data.rare_oversample 0 (no foreground-centred patches)
    instance   model.norm instance (nnU-Net's and MONAI's default)
    ema        optim.ema_decay 1 - 10/steps (validate and keep a moving average of the weights)
    dropout    model.dropout 0.1 (channel dropout between the two convs of every block; free at inference)
    rotate     augment.rotate_degrees 15 + scale 0.85-1.15 (the resampling augmentation R7 turns off
               for thin structures)
    fp32       compute in fp32, NCHW (`unetkit train --precision fp32`)
    bf16       bf16 autocast + channels_last (the mode the planner picks where bf16 is native and fastest)
    clahe      CLAHE (skimage equalize_adapthist, clip 0.01) on every image, in a temporary copy
               of the data outside the project
    <name>@<seed> any of the above with another seed

`--norm-cost` also times BatchNorm against InstanceNorm inference (ONNX Runtime fp32 and int8).

Scored like benchmarks/drive.py (FOV pixels, F1 at 0.5, AUC), plain and with 8-fold TTA; the
ratio of predicted to true vessel pixels shows over-/under-segmentation. Appends a table to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from drive import binary_scores, load_split, machine  # noqa: E402
from report import append_markdown, median_seconds, threads_env  # noqa: E402

VAL_KEYS = ["36", "37", "38", "39", "40"]
BASE = {
    "data": {"val_keys": VAL_KEYS, "patch_size": [128, 128], "batch_size": 8, "rare_oversample": 0.5},
    "augment": {"p": 0.5, "rotate_degrees": 0.0, "scale": [1.0, 1.0], "elastic_alpha": 0.0},
    "model": {"base_width": 16, "depth": 4, "norm": "batch"},
    "loss": {"ce": 1.0, "dice": 1.0, "cldice": 0.5, "dice_include_background": False},
    "optim": {"lr": 1e-3, "warmup_steps": 50},
    "val_every": 200, "tune_postprocess": "off", "calibrate": False, "progress": False,
}
CHANGES = {
    "base": {}, "clahe": {},
    "no-cldice": {"loss": {"cldice": 0.0}},
    "uniform": {"data": {"rare_oversample": 0.0}},
    "instance": {"model": {"norm": "instance"}},
    "dropout": {"model": {"dropout": 0.1}},
    "rotate": {"augment": {"rotate_degrees": 15.0, "scale": [0.85, 1.15]}},
    "ema": {},  # optim.ema_decay 1 - 10 / steps: averages over the last ~10 % of the steps
    "fp32": {"precision": "fp32", "memory_format": "contiguous"},  # top-level TrainConfig fields
    "bf16": {"precision": "bf16", "memory_format": "channels_last"},
}
EMA_HORIZON = {"ema": 10}


def variant_config(name: str, steps: int) -> dict:
    kind, _, seed = name.partition("@")
    if kind not in CHANGES:
        raise SystemExit(f"unknown variant '{kind}'; choose from {', '.join(CHANGES)} (optionally @seed)")
    cfg = copy.deepcopy(BASE) | {"steps": steps}
    for section, values in CHANGES[kind].items():
        cfg[section] = {**cfg[section], **values} if isinstance(values, dict) else values
    if kind in EMA_HORIZON:
        cfg["optim"] = {**cfg["optim"], "ema_decay": round(1 - EMA_HORIZON[kind] / steps, 6)}
    if seed:
        cfg["seed"] = int(seed)
        cfg["data"] = {**cfg["data"], "seed": int(seed)}
    return cfg


def clahe_copy(train_dir: Path, out: Path) -> Path:
    import tifffile
    from skimage import exposure

    (out / "images").mkdir(parents=True, exist_ok=True)
    for sub in ("1st_manual", "mask"):
        if not (out / sub).exists():
            (out / sub).symlink_to(train_dir / sub)
    for p in sorted((train_dir / "images").glob("*.tif")):
        image = exposure.equalize_adapthist(tifffile.imread(p), clip_limit=0.01)
        tifffile.imwrite(out / "images" / p.name, (image * 255).round().astype(np.uint8))
    return out


def run_variant(name: str, steps: int, train_dir: Path, work: Path) -> dict:
    from unetkit.artifact import load_artifact
    from unetkit.config import TileConfig
    from unetkit.inference.predict import predict_image

    data = clahe_copy(train_dir, work / "clahe") if name.partition("@")[0] == "clahe" else train_dir
    cfg = work / f"{name}.json"
    cfg.write_text(json.dumps(variant_config(name, steps)))
    env = threads_env(1)
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "unetkit", "train", str(data), "--config", str(cfg), "--out",
                          str(work / name), "--quiet", "--no-plan"], capture_output=True, text=True, env=env)
    train_seconds = time.perf_counter() - started
    if run.returncode:
        raise SystemExit(f"{name}: unetkit train failed\n{run.stderr}")
    art = load_artifact(work / name / "model.unetkit")
    val = load_split(data, VAL_KEYS)
    truth = np.concatenate([(s.labels == 1)[s.labels != 255] for s in val])
    out: dict = {"train_seconds": train_seconds}
    for tta in (False, True):
        probs = [predict_image(art, s.image, TileConfig(tile_size=tuple(art.meta.patch_size), tta=tta))[-1]
                 for s in val]
        p = np.concatenate([q[s.labels != 255] for q, s in zip(probs, val, strict=True)])
        scores = binary_scores(p, truth, np.ones_like(truth))
        scores["pred_ratio"] = float((p >= 0.5).mean() / truth.mean())
        out["tta" if tta else "plain"] = scores
    return out


def norm_inference_cost(repeats: int = 5) -> dict[str, dict[str, float]]:
    """Median seconds per batch of 4 x 256^2 for a w32 d4 U-Net with BatchNorm vs InstanceNorm
    (random weights: speed does not depend on them), ONNX Runtime fp32 and int8."""
    import torch

    from unetkit.artifact import Artifact, ArtifactMeta
    from unetkit.config import ModelConfig
    from unetkit.export.onnx import export_graph, onnx_session
    from unetkit.export.quantize import quantize_graph
    from unetkit.models import build_model

    x = np.random.default_rng(0).random((4, 3, 256, 256), dtype=np.float32)
    out = {}
    for norm in ("batch", "instance"):
        cfg = ModelConfig(in_channels=3, out_channels=2, base_width=32, depth=4, norm=norm)
        torch.manual_seed(0)
        meta = ArtifactMeta(model=cfg, class_names=("background", "vessel"), mean=(0.0,) * 3, std=(1.0,) * 3,
                            patch_size=(256, 256))
        fp32 = export_graph(Artifact(meta=meta, state_dict=build_model(cfg).state_dict()))
        out[norm] = {}
        for name, graph in (("ort fp32", fp32), ("ort int8", quantize_graph(fp32, x))):
            session = onnx_session(graph)
            feed = {session.get_inputs()[0].name: x}
            out[norm][name] = median_seconds(lambda s=session, f=feed: s.run(None, f), repeats)[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="DRIVE root (holding training/)")
    ap.add_argument("--variants", default="base,no-cldice,uniform,clahe,instance,instance@1",
                    help="comma-separated; empty: only --norm-cost")
    ap.add_argument("--steps", type=int, default=1600)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--work", type=Path, default=None, help="keep the runs (models) here instead of a temporary folder")
    ap.add_argument("--norm-cost", action="store_true", help="also time BatchNorm vs InstanceNorm inference")
    args = ap.parse_args()
    train_dir = (args.data if (args.data / "training").is_dir() else args.data.parent) / "training"
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    for name in names:
        variant_config(name, args.steps)  # refuse unknown names before training anything
    with tempfile.TemporaryDirectory(prefix="drive-ablation-") as tmp, ThreadPoolExecutor(args.parallel) as pool:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = dict(zip(names, pool.map(lambda n: run_variant(n, args.steps, train_dir, work), names), strict=True))
    lines = [f"## DRIVE levers at equal steps ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Command: `python benchmarks/drive_ablation.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {machine()}; {args.parallel} runs side by side, one thread each.  ",
             f"w16 d4, 128x128, batch 8, {args.steps} steps, trained on 21-35, scored on 36-40 (FOV).", ""]
    if results:
        lines += ["| variant | F1 | AUC | F1 + TTA | AUC + TTA | predicted / true vessel pixels | train wall s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['plain']['f1']:.4f} | {r['plain']['auc']:.4f} | {r['tta']['f1']:.4f} | "
                     f"{r['tta']['auc']:.4f} | {r['plain']['pred_ratio']:.3f} | {r['train_seconds']:.0f} |")
    if args.norm_cost:
        cost = norm_inference_cost()
        lines += ["", "Inference cost of the norm layer (w32 d4, batch 4 x 256x256, median of 5; BatchNorm "
                  "folds into the convs, InstanceNorm cannot):", "", "| norm | ORT fp32 s | ORT int8 s |",
                  "| --- | --- | --- |"]
        lines += [f"| {norm} | {t['ort fp32']:.3f} | {t['ort int8']:.3f} |" for norm, t in cost.items()]
    text = "\n".join(lines + [""])
    append_markdown(args.benchmarks, text)
    print(text)


if __name__ == "__main__":
    main()
