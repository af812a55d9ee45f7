"""Fine-tuning from a trained artifact vs training from scratch, on DRIVE with few labels: time to quality.

    python benchmarks/finetune_transfer.py --source MODEL.unetkit --data /work/shared/data/drive --budget 10m

`--source` is a model trained on *other* data with RGB images (e.g. the CamVid road-scene model of
`benchmarks/camvid.py`; DRIVE's own models would leak its labels). `--gray` trains and scores on
DRIVE's green channel alone (the channel where vessels contrast most, written as 8-bit PNGs into the
run folder, never beside the data), for a one-channel source such as an ISBI 2012 EM model:

    python benchmarks/finetune_transfer.py --source ISBI_MODEL.unetkit --gray --data /work/shared/data/drive

Two arms train on the labelled DRIVE images (`--labelled`, default 21-25) for the same budget and are scored on 36-40 (FOV pixels,
vessel = positive, F1 = Dice at 0.5 and AUC ROC):

- scratch: `unetkit train --budget B --config ARCH` with the source's architecture pinned (width,
  depth, normalization), so that the start is the only difference;
- fine-tune: `unetkit train --budget B --init SOURCE` (the planner's R15 for a transfer: new head,
  encoder frozen for 10 % of the steps, scratch's step target and learning rate).

`--control` adds a third arm that separates the start from R15's recipe:

- random start: `unetkit train --budget B --init RANDOM`, where RANDOM is the source artifact with
  freshly initialized weights (same architecture, classes and fingerprint, so the planner makes the
  same R15 choices): the fine-tune arm's recipe without what the source learned.

`--variant NAME=CONFIG.json` (repeatable) adds a fine-tune arm from the source with that partial
TrainConfig pinned (e.g. `{"finetune": {"encoder_lr_ratio": 1.0}}`): a recipe choice measured beside
the plan's.

The arms run at the same time, one thread each (`--parallel`, the default), so they share the
machine alike. Time to quality: each run's validation F1 (on the validation split, 36-40) against
wall-clock minutes from its metrics.jsonl, drawn in one PNG in docs/ and listed in the table.
Appended to docs/benchmarks.md with the command, the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from drive import binary_scores, load_split, plot_curves, unetkit_curve, unetkit_probabilities  # noqa: E402
from pretrain_drive import cpu_name, keys, run_arms, setup, unetkit, write_manifest  # noqa: E402
from report import publish  # noqa: E402


def first_reaching(curve: list[tuple[float, float]], level: float) -> float | None:
    return next((m for m, f in curve if f >= level), None)


def green_channel(train_dir: Path, ks: list[str], folder: Path) -> Path:
    """DRIVE's images of `ks` as one-channel 8-bit PNGs of their green channel, in `folder`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for k in ks:
        rgb = np.asarray(Image.open(train_dir / "images" / f"{k}_training.tif").convert("RGB"))
        Image.fromarray(rgb[..., 1]).save(folder / f"{k}_training.png")
    return folder


def write_random_start(source: Path, path: Path, seed: int = 0) -> Path:
    """The source artifact with its weights replaced by a fresh initialization (seeded)."""
    import torch

    from unetkit.artifact import read_meta, save_artifact
    from unetkit.models.factory import build_model

    meta = read_meta(source)
    torch.manual_seed(seed)
    return save_artifact(path, build_model(meta.model), meta)


def main() -> None:
    from unetkit.artifact import read_meta

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, type=Path, help="a model artifact trained on other data (RGB, or "
                    "one channel with --gray)")
    ap.add_argument("--gray", action="store_true", help="DRIVE's green channel alone, for a one-channel source")
    ap.add_argument("--data", required=True, type=Path, help="DRIVE root (holding training/)")
    ap.add_argument("--budget", default="10m", help="budget of each arm")
    ap.add_argument("--labelled", default="21-25")
    ap.add_argument("--val", default="36-40")
    ap.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", type=Path, default=Path("/tmp/unetkit-finetune-transfer"))
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--control", action="store_true",
                    help="also fine-tune from the source's architecture with random weights (R15's recipe, no "
                         "learned start), to separate the start from the recipe")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=CONFIG.json",
                    help="a fine-tune arm from the source with this partial TrainConfig pinned (repeatable)")
    ap.add_argument("--score", type=Path, default=None, metavar="RUN_FOLDER",
                    help="score the arms of an earlier run folder (OUT/STAMP) without training them again")
    args = ap.parse_args()
    train_dir, budget, out, manifest = setup(args, "drive.csv", run=args.score)
    if args.gray and args.score is None:
        gray = green_channel(train_dir, keys(args.labelled) + keys(args.val), out / "green")
        manifest = write_manifest(train_dir, keys(args.labelled), keys(args.val), manifest, images=gray)
    source = read_meta(args.source)
    arch = {"base_width": source.model.base_width, "depth": source.model.depth, "norm": source.model.norm}
    pinned = out / "arch.json"
    pinned.write_text(json.dumps({"model": arch}))

    def train(name: str, *options: str) -> list[list[str]]:
        """One arm: `unetkit train` on the manifest for the budget, into OUT/NAME."""
        return [unetkit("train", str(manifest), "--budget", f"{budget:.0f}s", *options, "--out", str(out / name),
                        "--quiet")]

    arms = {"scratch": train("scratch", "--config", str(pinned)),
            "fine-tune": train("fine-tune", "--init", str(args.source))}
    if args.control:
        random_start = out / "random-start.unetkit"
        if args.score is None:
            write_random_start(args.source, random_start)
        arms["random-start"] = train("random-start", "--init", str(random_start))
    if any("=" not in v for v in args.variant):
        ap.error("--variant: expected NAME=CONFIG.json")
    variants = dict(v.split("=", 1) for v in args.variant)
    for name, config in variants.items():
        arms[name] = train(name, "--init", str(args.source), "--config", config)
    if args.score is None:
        load_before = os.getloadavg()
        walls = run_arms(arms, out, args.parallel)
        load_after = os.getloadavg()
        (out / "walls.json").write_text(json.dumps({"walls": walls, "load": [load_before, load_after]}))
    else:  # the earlier run's record; a run from before walls.json: from its manifest to each arm's last log line
        saved = json.loads((out / "walls.json").read_text()) if (out / "walls.json").exists() else {
            "walls": {name: (out / f"{name}.log").stat().st_mtime - manifest.stat().st_mtime for name in arms},
            "load": None}
        walls, (load_before, load_after) = saved["walls"], saved["load"] or (None, None)

    val = load_split(train_dir, keys(args.val))
    truth = np.concatenate([(s.labels == 1).ravel() for s in val])
    fov = np.concatenate([(s.labels != 255).ravel() for s in val])
    results, curves = {}, {}
    for name in arms:
        run = out / name
        probs = unetkit_probabilities(run / "model.unetkit", [s.image[1:2] if args.gray else s.image for s in val])
        meta = read_meta(run / "model.unetkit")
        curves[name] = unetkit_curve(run)
        results[name] = {**binary_scores(np.concatenate([p.ravel() for p in probs]), truth, fov),
                         "wall_seconds": walls[name], "steps": meta.lineage.get("steps"),
                         "parent": meta.lineage.get("parent_sha256", ""), "curve": curves[name]}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    png = ROOT / "docs" / f"finetune-time-to-quality-{out.name}.png"
    labels = {"scratch": "scratch (source's architecture)", "fine-tune": f"fine-tuned from {args.source.name}",
              "random-start": "random weights, fine-tuned with R15's recipe",
              **{name: f"fine-tuned, {name} ({Path(config).name})" for name, config in variants.items()}}
    plot_curves({labels[name]: curves[name] for name in arms},
                png, f"DRIVE{' green channel' if args.gray else ''}, {len(keys(args.labelled))} labelled images, "
                f"{args.budget} each",
                xlabel="wall-clock minutes (validations included)", ylabel="vessel F1 (Dice @ 0.5), validation")

    load_text = (f"{load_before[0]:.1f} before, {load_after[0]:.1f} after" if load_before is not None
                 else "not recorded (a run from before walls.json, scored with --score)")
    best_scratch = max((f for _, f in curves["scratch"]), default=0.0)
    reach = first_reaching(curves["fine-tune"], best_scratch)
    lines = [f"## Fine-tuning from another data set's model vs scratch, DRIVE{' (green channel)' if args.gray else ''} "
             f"with {len(keys(args.labelled))} labelled "
             f"images, {args.budget} per arm ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Command: `python benchmarks/finetune_transfer.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}; load average "
             f"{load_text}; arms {'in parallel, one thread each' if args.parallel else 'one after the other'}.  ",
             f"Source: `{args.source}` ({source.name}; w{arch['base_width']} d{arch['depth']} {arch['norm']} norm, "
             f"{len(source.class_names)} classes: {', '.join(source.class_names[:6])}{', ...' if len(source.class_names) > 6 else ''}). "
             f"Labelled {args.labelled}, scored on {args.val} (FOV pixels, vessel = positive). Run folder `{out}`; "
             f"curves `docs/{png.name}`.", "",
             "| arm | F1 (Dice @ 0.5) | AUC ROC | steps | best validation F1 (at minute) | wall clock |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        best = max(r["curve"], key=lambda c: c[1], default=(float("nan"), float("nan")))
        lines.append(f"| {name} | {r['f1']:.4f} | {r['auc']:.4f} | {r['steps']} | {best[1]:.4f} ({best[0]:.1f}) | "
                     f"{r['wall_seconds'] / 60:.1f} min |")
    lines += ["", "Validation F1 by minute (time to quality):", "",
              "| arm | " + " | ".join(f"{m:.1f} min" for m, _ in curves["fine-tune"]) + " |",
              "| --- |" + " --- |" * len(curves["fine-tune"])]
    for name in arms:
        lines.append(f"| {name} | " + " | ".join(f"{f:.3f} @ {m:.1f}" for m, f in curves[name]) + " |")
    lines.append("")
    lines.append(f"The fine-tuned run reached scratch's best validation F1 ({best_scratch:.4f}) "
                 + (f"at minute {reach:.1f}." if reach is not None else "at no validation of its run."))
    lines.append("")
    publish(args.benchmarks, lines)


if __name__ == "__main__":
    main()
