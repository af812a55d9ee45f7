"""DRIVE: does the distilled BatchNorm student keep the teacher's gain? One command:

    .venv/bin/python benchmarks/distill_drive.py --data /work/shared/data/drive --budget 10m

Three `unetkit train` runs on the 15/5 split (train 21-35, validate 36-40), started so that the
arms that are compared share the machine's load:

- distilled: `--budget B --distill on`: the teacher (`--teacher`: the student's network with
  InstanceNorm, the default, or 1.5x wider) on half the budget, then the
  BatchNorm student learning from it on the other half (from its cached TTA probabilities: the
  default `distill.targets`);
- plain B: `--budget B --distill off`, started with it (what a user gets without distillation);
- plain B/2: `--budget B/2 --distill off`, started when the student's steps start (the teacher
  trained, its probabilities cached), for the time left, so it runs beside the student: the plain
  student at the distilled student's own training time.

Every arm trains the network and compute mode that `unetkit plan` chooses for the distilled run's
budget (`pinned.json`), so the arms differ only in how they learn (a shorter budget alone would plan
a smaller network for the plain B/2 run).

Scores are the validation Dice of vessels (FOV; the best checkpoint's, as fit selects), each from
the same `validate`. Retention = (student - plain B/2) / (teacher - plain B/2): the share of the
teacher's gain over a plain student that the student keeps at the student's inference cost (same
network); reported for the teacher's network alone and for the teacher as it teaches (its TTA views
averaged, the probabilities the student learns from). The end-to-end comparison is student vs plain B. Also checks that `unetkit evaluate`
(calibration + the gated postprocessing) is no worse than the raw probabilities at 0.5 (F1 on the
validation images; they are the gate's tuning images, so this checks the gate's adoption, not a
held-out gain). Appends to docs/benchmarks.md with the command, CPU and load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from drive import binary_scores, load_split, machine  # noqa: E402
from report import append_markdown, threads_env  # noqa: E402

VAL_KEYS = ["36", "37", "38", "39", "40"]


PINNED = ("model.base_width", "model.depth", "data.patch_size", "data.batch_size", "precision", "memory_format")


def start(train_dir: Path, budget_s: float, distill: str, out: Path, threads: int,
          config: Path | None = None, steps: int | None = None, val_keys: Sequence[str] = VAL_KEYS) -> subprocess.Popen:
    length = ["--steps", str(steps)] if steps else ["--budget", f"{budget_s:.0f}s"]
    cmd = [sys.executable, "-m", "unetkit", "train", str(train_dir), *length, "--out", str(out),
           "--quiet", "--val-keys", ",".join(val_keys), "--distill", distill,
           *(["--config", str(config)] if config else [])]
    env = threads_env(threads)
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, stdout=(out / "stdout.txt").open("w"), stderr=subprocess.STDOUT, env=env)


# with --steps the arms train without a budget, so without a plan: they take the whole plan but these
UNPLANNED = ("steps", "val_every", "budget_seconds", "distill.mode", "ensemble_folds")


def pinned_config(train_dir: Path, budget_s: float, out: Path, threads: int, steps: int | None = None,
                  teacher: str = "instance", val_keys: Sequence[str] = VAL_KEYS) -> Path:
    """The network and compute mode `unetkit plan` chooses for the distilled run's budget, as a
    TrainConfig JSON every arm trains with: the arms differ in how they learn, not in what they are.
    With `steps`, every planned setting (loss, augmentation, optimizer...) and that many steps.
    `teacher`: the distilled run's lever (`distill.teacher`); the plain runs ignore it."""
    out.mkdir(parents=True, exist_ok=True)
    plan_json = out / "plan.json"
    subprocess.run([sys.executable, "-m", "unetkit", "plan", str(train_dir), "--budget", f"{budget_s:.0f}s",
                    "--val-keys", ",".join(val_keys), "--distill", "on", "--json", str(plan_json)], check=True,
                   stdout=subprocess.DEVNULL, env=threads_env(threads))
    chosen = {c["key"]: c["value"] for c in json.loads(plan_json.read_text())["choices"]}
    keys = [k for k in chosen if not k.startswith("plan.") and k not in UNPLANNED] if steps else list(PINNED)
    config: dict = {}
    for key in keys:
        section, _, name = key.rpartition(".")
        (config.setdefault(section, {}) if section else config)[name] = chosen[key]
    config["ensemble_folds"] = 1  # one network per arm (a pinned model can make R12 plan an ensemble)
    config["distill"] = {"teacher": teacher}
    if steps:
        config.update(steps=steps, val_every=max(1, steps // 5))
    path = out / "pinned.json"
    path.write_text(json.dumps(config, indent=2))
    return path


LEVERS = {"instance": "InstanceNorm", "wider": "1.5x wider BatchNorm"}  # distill.teacher, as the heading names it


def retention(student: float, plain: float, lead: float) -> float:
    """The share of the teacher's lead over the plain student (`lead - plain`) the student kept; NaN when the
    teacher is not ahead (retention measures a gain: there is none to keep)."""
    return (student - plain) / (lead - plain) if lead > plain else float("nan")


def retention_sentence(student: float, plain: float, lead: float, what: str) -> str:
    """The retention of `what` (the teacher's network, or the teacher as it teaches) as the entry states it."""
    if lead > plain:
        return (f"Retention of {what}: (student - plain beside it) / (teacher - plain beside it) = ({student:.4f} - "
                f"{plain:.4f}) / ({lead:.4f} - {plain:.4f}) = **{retention(student, plain, lead):.2f}** (target >= 0.70).")
    return (f"Retention of {what}: **not defined** -- the teacher ({lead:.4f}) is not ahead of the plain student "
            f"beside it ({plain:.4f}), so there is no gain to keep.")


def wait(proc: subprocess.Popen, out: Path) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"unetkit train failed in {out}:\n{(out / 'stdout.txt').read_text()[-3000:]}")


def raw_probabilities(path: Path, images: list[np.ndarray]) -> list[np.ndarray]:
    """Vessel probabilities (calibrated, no postprocessing), eager torch: what `predict` writes."""
    from unetkit.artifact import load_artifact
    from unetkit.config import TileConfig
    from unetkit.inference.backends import make_predictor
    from unetkit.inference.predict import predict_image

    art = load_artifact(path)
    predictor = make_predictor(art, "torch")
    return [predict_image(predictor, im, TileConfig(tile_size=tuple(art.meta.patch_size)))[-1] for im in images]


def steps_of(meta) -> int:
    return int(meta.lineage.get("steps", 0))


def train_arms(train_dir: Path, budget: float, out: Path, threads: int, steps: int | None = None,
               teacher: str = "instance", val_keys: Sequence[str] = VAL_KEYS) -> tuple[list, float]:
    """The three runs (see the module docstring) on the pinned network; load averages at start,
    student start, end; the plain-beside-the-student run's budget. With `steps`, two runs: the
    distilled one (teacher and student `steps` each) and the plain one of `steps`, beside each other."""
    config = pinned_config(train_dir, budget, out, threads, steps, teacher, val_keys)
    loads = [os.getloadavg()]
    t0 = time.perf_counter()
    distilled = start(train_dir, budget, "on", out / "distilled", threads, config, steps, val_keys)
    plain = start(train_dir, budget, "off", out / "plain", threads, config, steps, val_keys)
    student_log = out / "distilled" / "metrics.jsonl"  # the student's own log: it starts after the targets
    while not (student_log.exists() and student_log.stat().st_size) and distilled.poll() is None:
        time.sleep(2)
    loads.append(os.getloadavg())
    half = max(60.0, budget - (time.perf_counter() - t0))  # what is left of the budget: the student's time
    arms = [(distilled, out / "distilled"), (plain, out / "plain")]
    if not steps:
        arms.append((start(train_dir, half, "off", out / "plain-half", threads, config, val_keys=val_keys),
                     out / "plain-half"))
    for proc, folder in arms:
        wait(proc, folder)
    loads.append(os.getloadavg())
    (out / "runs.json").write_text(json.dumps({"loads": loads, "half": half, "steps": steps,
                                               "pinned": json.loads(config.read_text())}))
    return loads, half


def main() -> None:
    from unetkit.artifact import read_meta
    from unetkit.config import parse_duration
    from unetkit.evaluation.evaluate import evaluate_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="DRIVE root (holding training/)")
    ap.add_argument("--budget", default="10m", help="the distilled run's and the plain run's total budget")
    ap.add_argument("--steps", type=int, default=None,
                    help="equal steps instead of a budget: the teacher, the student and one plain run train this many "
                         "steps each, with the plan of --budget (what distillation hands on, the budget split aside)")
    ap.add_argument("--teacher", default="instance", choices=sorted(LEVERS),
                    help="the teacher's lever (distill.teacher): the student's network with InstanceNorm, or 1.5x wider")
    ap.add_argument("--threads", type=int, default=1, help="OMP threads per run (the runs share the cores)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-distill")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--reuse", type=Path, default=None, help="score the finished runs in this folder instead of training")
    args = ap.parse_args()
    data = args.data if (args.data / "training").is_dir() else args.data.parent
    train_dir = data / "training"
    budget = parse_duration(args.budget)
    if args.reuse:
        out = args.reuse
        saved = json.loads((out / "runs.json").read_text())
        loads, half, pinned = saved["loads"], saved["half"], saved.get("pinned", {})
        args.steps = saved.get("steps")
    else:
        out = args.out / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        loads, half = train_arms(train_dir, budget, out, args.threads, args.steps, args.teacher)
        pinned = json.loads((out / "pinned.json").read_text())

    # with equal steps, the plain run is the plain student beside the distilled one
    folders = {"distilled": "distilled", "plain": "plain", "plain-half": "plain" if args.steps else "plain-half"}
    metas = {name: read_meta(out / folder / "model.unetkit") for name, folder in folders.items()}
    record = metas["distilled"].metrics["distillation"]
    teacher = record["teacher"]["mean_dice_foreground"]
    student = record["student"]["mean_dice_foreground"]
    p_half = metas["plain-half"].metrics["mean_dice_foreground"]
    p_full = metas["plain"].metrics["mean_dice_foreground"]
    taught = record["teacher"].get("targets", {})
    # the teacher as it teaches: its cached probabilities (TTA views averaged) are what the student learns from
    teaching = taught.get("as_it_teaches", {}).get("mean_dice_foreground")


    val = load_split(train_dir, VAL_KEYS)
    truth = np.concatenate([(s.labels == 1).ravel() for s in val])
    fov = np.concatenate([(s.labels != 255).ravel() for s in val])
    checks = []
    for name in ("distilled", "plain"):  # the artifacts a user would get
        path = out / name / "model.unetkit"
        raw = binary_scores(np.concatenate([p.ravel() for p in raw_probabilities(path, [s.image for s in val])]),
                            truth, fov)
        ev = evaluate_model(path, train_dir, keys=VAL_KEYS, backend="torch", progress=False, distances=False,
                            topology=False)
        vessel = next(r for r in ev["per_class"] if r["class"] != ev["per_class"][0]["class"])
        tuning = metas[name].metrics.get("postprocess_tuning", {})
        checks.append((name, raw["f1"], raw["auc"], vessel["dice"], metas[name].tta, metas[name].postprocess,
                       tuning.get("gate", {}).get("reason", "-"), metas[name].temperature))

    def steps(name: str) -> int:
        return steps_of(metas[name])

    lines = [
        f"## DRIVE distillation at {f'{args.steps} steps each (the plan of {args.budget})' if args.steps else args.budget}: "
        f"{LEVERS[pinned.get('distill', {}).get('teacher', 'instance')]} teacher -> BatchNorm student "
        f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python benchmarks/distill_drive.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}; {args.threads} thread(s) per run, the runs side by side (shared with other "
        f"users' jobs); load average (1/5/15 min) at the start {loads[0][0]:.2f}/{loads[0][1]:.2f}/{loads[0][2]:.2f}, "
        f"when the student started {loads[1][0]:.2f}/{loads[1][1]:.2f}/{loads[1][2]:.2f}, at the end "
        f"{loads[2][0]:.2f}/{loads[2][1]:.2f}/{loads[2][2]:.2f}.  ",
        f"Split: train 21-35, validate 36-40 (FOV, vessel Dice of the best checkpoint, as fit selects). Runs: `{out}`.  ",
        f"Every arm pinned to the plan's network and mode for the budget: `{json.dumps(pinned)}`.",
        "",
        "| arm | network (inference cost) | training | steps | validation Dice |",
        "| --- | --- | --- | --- | --- |",
        f"| teacher (in the distilled run) | {record['teacher']['model']} ({record['teacher'].get('mode', 'as the student')}) "
        f"| {record['teacher']['seconds'] / 60:.1f} min "
        f"| {record['teacher']['steps']} | {teacher:.4f} |",
        *([f"| teacher as it teaches ({taught.get('views')} TTA views averaged, cached once in "
            f"{taught.get('seconds', 0):.0f} s) | - | - | - | {teaching:.4f} |"] if teaching is not None else []),
        f"| distilled student | {record['student']['model']} | "
        f"{'after the teacher' if args.steps else 'the rest of ' + args.budget} | {steps('distilled')} | {student:.4f} |",
        *([f"| plain, beside the distilled run | {record['student']['model']} | the same steps | {steps('plain')} | "
           f"{p_full:.4f} |"] if args.steps else [
            f"| plain, beside the student | {record['student']['model']} | {half / 60:.1f} min | {steps('plain-half')} | "
            f"{p_half:.4f} |",
            f"| plain, whole budget | {record['student']['model']} | {args.budget} | {steps('plain')} | {p_full:.4f} |"]),
        "",
        retention_sentence(student, p_half, teacher, "the teacher's network")
        + (" " + retention_sentence(student, p_half, teaching, "the teacher as it teaches") if teaching is not None else "")
        + f" Teaching: {taught.get('kind', 'online')}." + f" End to end, the distilled student vs the plain run of the same budget: {student - p_full:+.4f}.",
        "",
        "`unetkit evaluate` (as the artifact predicts: calibration, TTA where the gate adopted it, gated "
        "postprocessing) vs the raw probabilities at 0.5 without TTA, on the validation "
        "images (the gate's own tuning images):",
        "",
        "| arm | F1 raw @ 0.5 | AUC | evaluate Dice | TTA | postprocessing stored | temperature | gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, f1, auc, dice, tta, post, reason, temp in checks:
        lines.append(f"| {name} | {f1:.4f} | {auc:.4f} | {dice:.4f} | {'on' if tta else 'off'} | {post or 'none'} "
                     f"| {temp:.3f} | {reason} |")
    text = "\n".join(lines) + "\n"
    append_markdown(args.benchmarks, text)
    (out / "results.json").write_text(json.dumps({"teacher": teacher, "student": student, "plain_half": p_half,
                                                   "plain": p_full, "retention": retention(student, p_half, teacher), "teaching": teaching,
                                                   "retention_teaching": retention(student, p_half, teaching)
                                                   if teaching is not None else None, "loads": loads,
                                                   "checks": checks}, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
