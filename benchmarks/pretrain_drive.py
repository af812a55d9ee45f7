"""DRIVE with 5 labelled images: training from scratch vs self-supervised pretraining + fine-tuning, equal budget.

    python benchmarks/pretrain_drive.py --data /work/shared/data/drive --budget 10m

Labelled: keys 21-25 (`--labelled`), scored on 36-40 (`--val`, FOV pixels, vessel = positive). The
pretrained arms pretrain the encoder (`unetkit pretrain`, one arm per `--objectives`) on the images
of the 15 training images outside the validation split (21-35; the labels of 26-35 are never read),
for `--share` of the budget, then fine-tune on the 5 (`unetkit train --pretrained`) in the rest. The
scratch arm trains on the 5 for the whole budget (`unetkit train --budget`). Every arm uses the
architecture the scratch plan chooses (`unetkit plan` first, pinned by a config file), and the arms
run at the same time (`--parallel`, the default: one thread each, so they share the machine alike)
or one after the other. Two more arms answer what any use of the unlabelled images could add:
`--oracle` trains on them with their real labels (the ceiling), `--self-train SHARE` labels them with a
teacher trained on the labelled ones for SHARE of the budget (its prediction at 0.5), then trains a
student, started from the teacher, on both (the pseudo-labelling step is not charged to the budget).
Scores: F1 (vessel Dice at probability 0.5), AUC ROC; appended to docs/benchmarks.md with the command,
the CPU and the load average.

Nothing is copied: a manifest CSV and a folder of symbolic links in --out point at DRIVE's files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from drive import binary_scores, load_split, unetkit_probabilities  # noqa: E402
from report import publish, threads_env  # noqa: E402

NOT_PRETRAINED = ("scratch", "oracle", "self-training")  # the arms without an encoder file


def keys(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        out += [str(k) for k in range(int(a), int(b or a) + 1)]
    return out


def cpu_name() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def write_manifest(train_dir: Path, labelled: list[str], val: list[str], path: Path,
                   images: Path | None = None, pseudo: tuple[list[str], Path] | None = None) -> Path:
    """A manifest of DRIVE's labelled and validation keys; `images`: a folder of other images for the
    same keys (`K_training.png`, e.g. the green channel), DRIVE's own otherwise; `pseudo`: more training
    keys and the folder of their pseudo-labels (`K_pseudo.png`, 0 / 255 as DRIVE's)."""
    rows = ["image,mask,roi,key,split"]
    for split, ks in (("train", labelled), ("val", val)):
        for k in ks:
            image = images / f"{k}_training.png" if images is not None else train_dir / "images" / f"{k}_training.tif"
            rows.append(f"{image},{train_dir / '1st_manual' / f'{k}_manual1.gif'},"
                        f"{train_dir / 'mask' / f'{k}_training_mask.gif'},{k},{split}")
    for k in (pseudo[0] if pseudo else []):
        rows.append(f"{train_dir / 'images' / f'{k}_training.tif'},{pseudo[1] / f'{k}_pseudo.png'},"
                    f"{train_dir / 'mask' / f'{k}_training_mask.gif'},{k},train")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def link_images(train_dir: Path, ks: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in ks:
        link = folder / f"{k}_training.tif"
        if not link.exists():
            link.symlink_to(train_dir / "images" / f"{k}_training.tif")
    return folder


def unetkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "unetkit", *args]


def pseudo_labels(artifact: Path, train_dir: Path, ks: list[str], folder: Path) -> None:
    """The self-training arm's labels for images without any: what the teacher `artifact` predicts for each
    key, as `unetkit predict` computes it (its own TTA choice), thresholded at 0.5 and written 0 / 255
    (`K_pseudo.png`)."""
    from unetkit.data.io import read_image, write_png

    folder.mkdir(parents=True, exist_ok=True)
    images = [read_image(train_dir / "images" / f"{k}_training.tif") for k in ks]
    for k, p in zip(ks, unetkit_probabilities(artifact, images), strict=True):
        write_png(folder / f"{k}_pseudo.png", np.where(p >= 0.5, 255, 0).astype(np.uint8))


def setup(args: argparse.Namespace, manifest_name: str, run: Path | None = None) -> tuple[Path, float, Path, Path]:
    """(DRIVE's training folder, the budget in seconds, this run's folder, its manifest of the labelled
    and validation keys) from the common arguments; `run`: an earlier run's folder, whose manifest is kept."""
    from unetkit.config import parse_duration

    data = args.data if (args.data / "training").is_dir() else args.data.parent
    train_dir = data / "training"
    if run is not None:
        return train_dir, parse_duration(args.budget), run, run / manifest_name
    out = args.out / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    manifest = write_manifest(train_dir, keys(args.labelled), keys(args.val), out / manifest_name)
    return train_dir, parse_duration(args.budget), out, manifest


def run_arms(arms: dict[str, list[list[str]]], out: Path, parallel: bool) -> dict[str, float]:
    """Run each arm's commands one after the other (log: OUT/NAME.log), the arms at the same time with one
    thread each (`parallel`) or one after the other; wall seconds per arm. A failed arm stops the benchmark."""
    env = threads_env(1) if parallel else dict(os.environ)

    def start(name: str) -> subprocess.Popen:
        script = " && ".join(" ".join(f"'{a}'" for a in cmd) for cmd in arms[name])
        log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(["bash", "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env)

    walls: dict[str, float] = {}
    t0 = time.perf_counter()
    if parallel:
        procs = {name: start(name) for name in arms}
        for name, p in procs.items():
            if p.wait() != 0:
                raise SystemExit(f"{name} failed: see {out / f'{name}.log'}")
            walls[name] = time.perf_counter() - t0
    else:
        for name in arms:
            t1 = time.perf_counter()
            if start(name).wait() != 0:
                raise SystemExit(f"{name} failed: see {out / f'{name}.log'}")
            walls[name] = time.perf_counter() - t1
    return walls


def main() -> None:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="DRIVE root (holding training/)")
    ap.add_argument("--budget", default="10m", help="total budget of every arm")
    ap.add_argument("--share", type=float, default=0.5, help="of the budget spent pretraining")
    ap.add_argument("--objectives", default="mim,denoise",
                    help="one pretrained arm per entry: OBJECTIVE or OBJECTIVE/network (`unetkit pretrain --keep network`: "
                         "the decoder pretrained too)")
    ap.add_argument("--labelled", default="21-25")
    ap.add_argument("--val", default="36-40")
    ap.add_argument("--unlabelled", default="21-35", help="images pretrained on (their labels are not used)")
    ap.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--same-recipe", action="store_true",
                    help="also, per objective, an arm that fine-tunes with the scratch plan's recipe (patch, batch, "
                         "learning rate; no encoder freeze, one rate for all): the start is the only difference")
    ap.add_argument("--self-train", type=float, default=0.0, metavar="SHARE",
                    help="also a self-training arm: a teacher trained on the labelled images for SHARE of the budget "
                         "labels the other --unlabelled images (its prediction at 0.5), and the student, started "
                         "from the teacher (--init), trains on both in the rest")
    ap.add_argument("--oracle", action="store_true",
                    help="also an arm trained on every --unlabelled image with its real labels, the whole budget: "
                         "the ceiling of anything the unlabelled images can add")
    ap.add_argument("--out", type=Path, default=Path("/tmp/unetkit-pretrain-drive"))
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    train_dir, budget, out, manifest = setup(args, "drive5.csv")
    unlabelled = link_images(train_dir, keys(args.unlabelled), out / "unlabelled")
    load_before = os.getloadavg()

    # the scratch plan's architecture, pinned for every arm
    subprocess.run(unetkit("plan", str(manifest), "--budget", args.budget, "--json", str(out / "plan.json")),
                   check=True, capture_output=True, text=True)
    plan = {c["key"]: c["value"] for c in json.loads((out / "plan.json").read_text())["choices"]}
    width, depth, norm = plan["model.base_width"], plan["model.depth"], plan["model.norm"]
    patch, batch = plan["data.patch_size"], plan["data.batch_size"]
    pinned = out / "pinned.json"
    pinned.write_text(json.dumps({"model": {"base_width": width, "depth": depth, "norm": norm}}))

    arms: dict[str, list[list[str]]] = {"scratch": [unetkit("train", str(manifest), "--budget", f"{budget:.0f}s",
                                                            "--config", str(pinned), "--out", str(out / "scratch"),
                                                            "--quiet")]}
    pre_s, tune_s = args.share * budget, (1 - args.share) * budget
    for entry in [o.strip() for o in args.objectives.split(",") if o.strip()]:
        objective, _, keep = entry.partition("/")
        arm = objective + (f"-{keep}" if keep else "")
        enc = out / arm / "encoder.safetensors"
        def pretrain(enc: Path, objective: str = objective, keep: str = keep or "encoder") -> list[str]:
            return unetkit("pretrain", str(unlabelled), "--budget", f"{pre_s:.0f}s", "--objective", objective,
                           "--width", str(width), "--depth", str(depth), "--norm", norm, "--patch", str(patch[0]),
                           "--batch", str(batch), "--keep", keep, "-o", str(enc), "--quiet")

        arms[arm] = [
            pretrain(enc),
            unetkit("train", str(manifest), "--budget", f"{tune_s:.0f}s", "--pretrained", str(enc), "--config",
                    str(pinned), "--out", str(out / arm / "run"), "--quiet")]
        if args.same_recipe:  # R15's protection of the start (rates x0.5 and x0.25, freeze, half the steps) off
            recipe = out / "scratch-recipe.json"
            recipe.write_text(json.dumps({
                "model": {"base_width": width, "depth": depth, "norm": norm},
                "data": {"patch_size": list(patch), "batch_size": batch}, "optim": {"lr": plan["optim.lr"]},
                "finetune": {"encoder_lr_ratio": 1.0, "freeze_encoder_steps": 0}}))
            same = out / f"{arm}-same-recipe"
            arms[f"{arm}-same-recipe"] = [
                pretrain(same / "encoder.safetensors"),
                unetkit("train", str(manifest), "--budget", f"{tune_s:.0f}s", "--pretrained",
                        str(same / "encoder.safetensors"), "--config", str(recipe), "--out", str(same / "run"), "--quiet")]

    others = [k for k in keys(args.unlabelled) if k not in keys(args.labelled)]
    if args.oracle:
        every = write_manifest(train_dir, keys(args.labelled) + others, keys(args.val), out / "oracle.csv")
        arms["oracle"] = [unetkit("train", str(every), "--budget", f"{budget:.0f}s", "--config", str(pinned),
                                  "--out", str(out / "oracle" / "run"), "--quiet")]
    if args.self_train:
        arm = out / "self-training"
        pseudo = write_manifest(train_dir, keys(args.labelled), keys(args.val), arm / "pseudo.csv",
                                pseudo=(others, arm / "labels"))
        arms["self-training"] = [
            unetkit("train", str(manifest), "--budget", f"{args.self_train * budget:.0f}s", "--config", str(pinned),
                    "--out", str(arm / "teacher"), "--quiet"),
            [sys.executable, __file__, "pseudo-labels", str(arm / "teacher" / "model.unetkit"), str(train_dir),
             ",".join(others), str(arm / "labels")],
            unetkit("train", str(pseudo), "--budget", f"{(1 - args.self_train) * budget:.0f}s", "--init",
                    str(arm / "teacher" / "model.unetkit"), "--config", str(pinned), "--out", str(arm / "run"),
                    "--quiet")]

    walls = run_arms(arms, out, args.parallel)
    load_after = os.getloadavg()

    val = load_split(train_dir, keys(args.val))
    truth = np.concatenate([(s.labels == 1).ravel() for s in val])
    fov = np.concatenate([(s.labels != 255).ravel() for s in val])
    from unetkit.artifact import read_meta

    results = {}
    for name in arms:
        artifact = out / ("scratch" if name == "scratch" else f"{name}/run") / "model.unetkit"
        probs = unetkit_probabilities(artifact, [s.image for s in val])
        meta = read_meta(artifact)
        pre = {}
        if name not in NOT_PRETRAINED:
            from unetkit.models.unet_encoder import read_unet_encoder

            pre = read_unet_encoder(out / name / "encoder.safetensors")[1]["pretraining"]
        results[name] = {**binary_scores(np.concatenate([p.ravel() for p in probs]), truth, fov),
                         "wall_seconds": walls[name], "steps": meta.lineage.get("steps"), "pretraining": pre,
                         "patch": list(meta.patch_size), "batch": meta.train_config["data"]["batch_size"],
                         **run_facts(artifact.parent / "metrics.jsonl")}
    (out / "results.json").write_text(json.dumps(results, indent=2))

    ssl = [n for n in arms if n not in NOT_PRETRAINED]
    how = []
    if ssl:
        how.append(f"the pretrained arms pretrained on the images of {args.unlabelled} (labels unused) for "
                   f"{args.share:.0%} of the budget, then fine-tuned on the labelled ones")
    if args.oracle:
        how.append(f"the oracle trained on {args.unlabelled} with their real labels")
    if args.self_train:
        how.append(f"the self-training arm's teacher trained on the labelled ones for {args.self_train:.0%} of the "
                   f"budget and labelled {','.join(others)} (its prediction at 0.5), then the student, started from "
                   "it (`--init`), trained on both in the rest")
    title = ("Self-supervised pretraining on DRIVE" if ssl else
             "DRIVE: what unlabelled images can add") + f" with 5 labelled images, {args.budget} per arm"
    lines = [f"## {title} ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"Command: `python benchmarks/pretrain_drive.py {' '.join(sys.argv[1:])}`  ",
             f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}; load average "
             f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (a shared machine); arms "
             f"{'in parallel, one thread each' if args.parallel else 'one after the other'}.  ",
             f"Labelled {args.labelled}, scored on {args.val} (FOV pixels, vessel = positive); "
             + "; ".join(how or ["scratch only"]) + f". Architecture of the scratch plan for every arm: w{width} "
             f"d{depth} {norm} norm (its patch and batch, {patch[0]}x{patch[1]} b{batch}, pretrain; each arm's own "
             f"timing plans its training's, below). Run folder `{out}`.", "",
             "| arm | F1 (Dice @ 0.5) | AUC ROC | fine-tuning steps | pretraining steps (loss first -> last) | wall clock |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        pre = r["pretraining"]
        pre_text = f"{pre['steps']} ({pre['loss_first']:.3f} -> {pre['loss_last']:.3f})" if pre else "-"
        label = ("scratch (whole budget)" if name == "scratch" else
                 f"oracle: the labels of {args.unlabelled} too (whole budget)" if name == "oracle" else
                 f"self-training: teacher on the labelled {args.self_train:.0%}, student on its pseudo-labels too"
                 if name == "self-training" else
                 f"{name.removesuffix('-same-recipe')} pretraining + fine-tuning with the scratch plan's recipe"
                 if name.endswith("-same-recipe") else f"{name} pretraining + fine-tuning (R15's recipe)")
        lines.append(f"| {label} | {r['f1']:.4f} | {r['auc']:.4f} | {r['steps']} | {pre_text} | "
                     f"{r['wall_seconds'] / 60:.1f} min |")
    lines += ["", "Each arm as its own plan trained it, and its validation Dice (the selection metric, on the scored "
              "images) along the way (`metrics.jsonl`): the per-step comparison that tells a better start from more steps.",
              "", "| arm | patch, batch | mode | s/step | validation Dice at step |", "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        curve = "; ".join(f"{step}: {dice:.3f}" for step, dice in spaced(r["curve"], 8))
        lines.append(f"| {name} | {r['patch'][0]}x{r['patch'][1]}, b{r['batch']} | {r['mode']} | {r['seconds_per_step']:.2f} | {curve} |")
    lines.append("")
    publish(args.benchmarks, lines)


def run_facts(log: Path) -> dict:
    """The compute mode, median seconds per step and validation curve [(step, Dice)] of a run's log."""
    from unetkit.training.runlog import read_log

    events = read_log(log)
    start = next((e for e in events if e.get("event") == "start"), {})
    per_step = [e["seconds_per_step"] for e in events if e.get("event") == "budget" and "seconds_per_step" in e]
    curve = [(e["step"], e["mean_dice_foreground"]) for e in events
             if e.get("event") == "val" and e.get("mean_dice_foreground") is not None]
    return {"mode": start.get("mode", "?"), "seconds_per_step": float(np.median(per_step)) if per_step else float("nan"),
            "curve": curve}


def spaced(points: list, n: int) -> list:
    """At most `n` of `points`, evenly spread, the last always included."""
    if len(points) <= n:
        return points
    picks = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in picks]


if __name__ == "__main__":
    if sys.argv[1:2] == ["pseudo-labels"]:  # a step of the self-training arm: MODEL TRAIN_DIR KEYS FOLDER
        pseudo_labels(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(","), Path(sys.argv[5]))
    else:
        main()
