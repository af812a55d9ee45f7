"""CamVid road scenes: `unetkit train --budget` (the auto-plan, no other flag) for two or more source
trees side by side (the current rules and a baseline commit's), held-out sequences, one command:

    .venv/bin/python benchmarks/camvid.py --data /work/shared/data/camvid --budget 10m \
        --arm new=src --arm old=/tmp/base/src

The training split's frames are grouped by sequence (the key's prefix before `_`); the sequences in
`--val-prefix` (default `0006R0`, 101 of the 367 frames) are the validation split, held out whole
because neighbouring frames are near-duplicates. Every arm trains at the same time as the others
(one subprocess each, `PYTHONPATH=<arm's src>`, one thread each when there are several), so they
share the machine's load alike; then each artifact is scored here on the held-out frames:
class-average IoU over the 11 classes and global pixel accuracy (void, label 11, ignored),
per-class IoU. Each arm is scored as `unetkit predict` runs it: at the resolution it trained at
(`data.resolution`, rule R18), its probabilities resized to the native frame, with the TTA and the
postprocessing its training adopted. (Until 2026-12-05 the arms were scored without their TTA and
postprocessing: the plain arg-max at the artifact's tiling.) `--scales 0.75,1,1.25` adds a row per arm scored
by multi-scale inference at those factors of the artifact's resolution (`unetkit predict --resolutions`;
an arm whose training adopted multi-scale, `metrics.multiscale`, is scored with its own in its own row).

`--ssl SHARE` instead compares training from scratch with self-supervised pretraining: the scratch
plan's architecture (`unetkit plan` at one thread, as the arms train) is pinned for both arms; "scratch"
trains for the whole budget, the other arm (named for `--ssl-objective`, default R16's `contrastive`)
pretrains that encoder (`unetkit pretrain`, at the plan's resolution) on the training frames'
images (labels unused; the held-out sequence is not shown) for SHARE of the budget, then fine-tunes
(`unetkit train --pretrained`) in the rest. The data folder is linked (never copied)
into `--work` with the release's list file, and described once with `unetkit init-dataset --ignore
11 --names ...`. Appends the table, the plans, the command, the machine and the load to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from drive import artifact_probabilities, load_split, machine  # noqa: E402
from report import append_markdown, threads_env, write_results  # noqa: E402

NAMES = "sky,building,pole,road,pavement,tree,signsymbol,fence,car,pedestrian,bicyclist"
VOID = 11


def prepare(data: Path, work: Path) -> Path:
    """`work/camvid`: links to the release's train/, trainannot/ and train.txt, plus its dataset JSON."""
    folder = work / "camvid"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "trainannot", "train.txt"):
        link = folder / name
        if not link.exists():
            link.symlink_to((data / name).resolve())
    if not (folder / "unetkit-dataset.json").exists():
        subprocess.run([sys.executable, "-m", "unetkit", "init-dataset", str(folder), "--ignore", str(VOID),
                        "--names", NAMES], check=True, capture_output=True)
    return folder


def confusion(pred: np.ndarray, truth: np.ndarray, k: int) -> np.ndarray:
    keep = truth < k  # void (11, or the ignore index 255 the dataset JSON maps it to) is left out
    return np.bincount(truth[keep].astype(np.int64) * k + pred[keep], minlength=k * k).reshape(k, k)


def scores(matrix: np.ndarray) -> dict[str, object]:
    tp = np.diag(matrix).astype(np.float64)
    iou = tp / np.maximum(matrix.sum(0) + matrix.sum(1) - tp, 1)
    return {"miou": float(iou.mean()), "pixel_accuracy": float(tp.sum() / max(matrix.sum(), 1)),
            "iou": [float(v) for v in iou]}


def predicted_scores(model: Path, val: list, scales: tuple[float, ...] = (1.0,)) -> dict[str, object]:
    """mIoU, pixel accuracy and per-class IoU of the artifact `model` on the loaded frames `val`, as
    `unetkit predict` runs it: its tiling, resolution and TTA, then its postprocessing; with `scales`
    (`--scales`), by multi-scale inference (`drive.artifact_probabilities`)."""
    from unetkit.artifact import load_artifact
    from unetkit.inference.files import labels_from_probabilities

    art = load_artifact(model)
    k = len(NAMES.split(","))
    probs = artifact_probabilities(art, [s.image for s in val], scales=scales)
    return scores(sum(confusion(labels_from_probabilities(p, art), s.labels, k) for p, s in zip(probs, val, strict=True)))


def parse_scales(text: str) -> tuple[float, ...]:
    """`--scales`: comma-separated factors of an artifact's own resolution, e.g. 0.75,1,1.25."""
    try:
        scales = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.75,1,1.25, got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive factors such as 0.75,1,1.25, got {text!r}")
    return scales


def steps_done(run: Path) -> int:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return max((int(e.get("step", 0)) for e in events), default=0)


def ssl_arms(folder: Path, data: Path, keys: list[str], val_keys: list[str], budget: str, share: float,
             out: Path, objective: str) -> dict[str, list[list[str]]]:
    """--ssl: the commands of the scratch and the pretrained arm, the scratch plan's architecture pinned, the
    encoder pretrained at the plan's resolution (R18's scale, which fine-tuning trains at)."""
    from unetkit.config import parse_duration

    unetkit = [sys.executable, "-m", "unetkit"]
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([*unetkit, "plan", str(folder), "--budget", budget, "--val-keys", ",".join(val_keys),
                    "--json", str(out / "plan.json")], check=True, capture_output=True, text=True,
                   env=threads_env(1))  # the arms' one thread: the plan they would make
    plan = {c["key"]: c["value"] for c in json.loads((out / "plan.json").read_text())["choices"]}
    arch = {"base_width": plan["model.base_width"], "depth": plan["model.depth"], "norm": plan["model.norm"]}
    # one network in both arms: a pinned architecture otherwise lets R12 / R17 add an ensemble or a teacher
    (out / "pinned.json").write_text(json.dumps({"model": arch, "ensemble_folds": 1, "distill": {"mode": "off"}}))
    images = out / "unlabelled"  # the training frames' images only: the held-out sequence stays unseen
    images.mkdir(exist_ok=True)
    for k in keys:
        if k not in val_keys and not (images / f"{k}.png").exists():
            (images / f"{k}.png").symlink_to((data / "train" / f"{k}.png").resolve())
    seconds = parse_duration(budget)
    train = [*unetkit, "train", str(folder), "--val-keys", ",".join(val_keys), "--config", str(out / "pinned.json"),
             "--quiet"]
    encoder = out / f"{objective}-encoder.safetensors"
    patch, batch = plan["data.patch_size"], plan["data.batch_size"]
    return {
        "scratch": [[*train, "--budget", f"{seconds:.0f}s", "--out", str(out / "scratch")]],
        objective: [[*unetkit, "pretrain", str(images), "--budget", f"{share * seconds:.0f}s", "--objective", objective,
                 "--width", str(arch["base_width"]), "--depth", str(arch["depth"]), "--norm", arch["norm"],
                 "--patch", str(patch[0]), "--batch", str(batch), "--resolution", str(plan.get("data.resolution", 1.0)),
                 "-o", str(encoder), "--quiet"],
                [*train, "--budget", f"{(1 - share) * seconds:.0f}s", "--pretrained", str(encoder),
                 "--out", str(out / objective)]],
    }


def main() -> None:
    from unetkit.config import PRETRAIN_OBJECTIVES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="CamVid release root (holding train/, trainannot/)")
    ap.add_argument("--budget", default="10m")
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=SRC[,CONFIG]",
                    help="a source tree to train with (its `src` folder), optionally with a partial TrainConfig "
                         "JSON whose choices the plan keeps; repeat for side-by-side arms")
    ap.add_argument("--val-prefix", default="0006R0", help="comma-separated sequence prefixes held out")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-camvid")
    ap.add_argument("--score", type=Path, default=None, metavar="RUN_FOLDER",
                    help="score the arms of an earlier run folder (WORK/STAMP, one sub-folder per arm) without training")
    ap.add_argument("--ssl", type=float, default=None, metavar="SHARE",
                    help="scratch vs self-supervised pretraining for SHARE of the budget + fine-tuning")
    ap.add_argument("--ssl-objective", default="contrastive", choices=PRETRAIN_OBJECTIVES,
                    help="the pretraining objective of --ssl (default: R16's)")
    ap.add_argument("--scales", type=parse_scales, default=None, metavar="S1,S2,...",
                    help="also score each arm by multi-scale inference: the frame at each factor of the artifact's "
                         "own resolution (its factor times S must stay <= 1), probabilities averaged; rows 'ARM @S'")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    arms = dict(a.split("=", 1) for a in args.arm) or {"current": str(ROOT / "src")}
    folder = prepare(args.data, args.work)
    prefixes = tuple(p.strip() + "_" for p in args.val_prefix.split(",") if p.strip())
    keys = sorted(p.stem for p in (args.data / "train").glob("*.png"))
    val_keys = [k for k in keys if k.startswith(prefixes)]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    commands: dict[str, list[list[str]]] = {}  # --ssl: each arm's commands, run one after the other
    if args.ssl is not None:
        commands = ssl_arms(folder, args.data, keys, val_keys, args.budget, args.ssl, args.work / stamp,
                             args.ssl_objective)
        arms = {name: f"{ROOT / 'src'} ({name})" for name in commands}
    load_before = os.getloadavg()
    runs, procs = {}, {}
    walls: dict[str, float | None] = {}
    given: dict[str, str] = {}  # arm -> the --config file it was given
    if args.score is not None:  # re-score: the arms are the run folder's sub-folders
        stamp = args.score.name
        runs = {d.name: d for d in sorted(args.score.iterdir()) if (d / "model.unetkit").is_file()}
        arms = {name: "(earlier run)" for name in runs}
        walls = {name: None for name in runs}
    t0 = time.perf_counter()
    if args.score is None:
        for name, arm in arms.items():  # all arms at once: the same load for each
            src, _, config = arm.partition(",")
            runs[name] = args.work / stamp / name
            if config:
                given[name] = config
            if name in commands:
                script = " && ".join(" ".join(f"'{a}'" for a in cmd) for cmd in commands[name])
                procs[name] = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, env=threads_env(1, PYTHONPATH=str(ROOT / "src")))
                continue
            path = str(Path(src).resolve())  # side by side: one thread each
            env = threads_env(1, PYTHONPATH=path) if len(arms) > 1 else {**os.environ, "PYTHONPATH": path}
            cmd = [sys.executable, "-m", "unetkit", "train", str(folder), "--budget", args.budget, "--out",
                   str(runs[name]), "--quiet", "--val-keys", ",".join(val_keys)] + (["--config", config] if config else [])
            procs[name] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, proc in procs.items():
        output = proc.communicate()[0]
        walls[name] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"arm {name}: unetkit train failed:\n{output}")
    load_after = os.getloadavg()

    from unetkit.artifact import read_meta

    val = load_split(folder, val_keys)
    results = {}
    for name, run in runs.items():
        chosen = {c["key"]: c["value"] for c in read_meta(run / "model.unetkit").plan.get("choices", [])}
        results[name] = {**predicted_scores(run / "model.unetkit", val), "steps": steps_done(run),
                         "wall_seconds": walls[name], "plan": chosen, "src": arms[name]}
        write_results(run, results[name], rescored=args.score is not None)
        if args.scales:
            label = ",".join(f"{v:g}" for v in args.scales)
            results[f"{name} @{label}"] = {**results[name], **predicted_scores(run / "model.unetkit", val, args.scales)}
    names = NAMES.split(",")
    rows = ["| arm | plan | steps | mIoU | pixel acc. | " + " | ".join(names) + " |",
            "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for name, r in results.items():
        p = r["plan"]
        at = f" at {p['data.resolution']}x" if p.get("data.resolution", 1.0) != 1.0 else ""
        plan = (f"w{p.get('model.base_width')} d{p.get('model.depth')} {p.get('data.patch_size')} "
                f"b{p.get('data.batch_size')}{at}, clDice {p.get('loss.cldice')}, rot {p.get('augment.rotate_degrees')}, "
                f"scale {p.get('augment.scale')}")
        rows.append(f"| {name} | {plan} | {r['steps']} | {r['miou']:.4f} | {r['pixel_accuracy']:.4f} | "
                    + " | ".join(f"{v:.3f}" for v in r["iou"]) + " |")
    # the configs the arms were given (their paths are scratch): what tells the arms apart where the plan
    # column cannot (a user-set key the plan does not choose, such as `model.bottleneck`)
    configs = [f"Arm `{name}` config: `{json.dumps(json.loads(Path(config).read_text()))}`  "
               for name, config in given.items()]
    now = datetime.now(timezone.utc)
    what = (f"`unetkit train --budget {args.budget}`, arms side by side" if args.score is None
            else f"the arms of `{args.score}` re-scored")
    text = "\n".join([
        f"## CamVid, {what} ({now:%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python benchmarks/camvid.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)  ",
        f"Train on the {len(keys) - len(val_keys)} frames of the other sequences, scored on the {len(val_keys)} held-out "
        f"frames of {', '.join(p.rstrip('_') for p in prefixes)} (class IoU over 11 classes, void ignored; each arm as "
        f"`unetkit predict` runs it){'; the arms trained concurrently' if args.score is None else ''}; run folder "
        f"`{args.work / stamp}`.  ",
        *configs,
        "",
        *rows,
        "",
    ])
    append_markdown(args.benchmarks, text)
    print(text)


if __name__ == "__main__":
    main()
