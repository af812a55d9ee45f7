"""CamVid: does a distilled student keep its teacher's lead where there are many classes? One command:

    .venv/bin/python benchmarks/distill_camvid.py --data /work/shared/data/camvid --budget 45m --steps 3000

DRIVE's distilled students kept none of their teachers' lead (`distill_drive.py`, docs/benchmarks.md);
the literature's gains are mostly on many-class data, where the teacher's probabilities say which
classes a pixel is confused between (dark knowledge) and one-hot labels do not. This runs
`distill_drive.py`'s equal-steps protocol on the CamVid training split as `camvid.py` prepares it
(train on the other sequences, validate on the held-out `--val-prefix` frames, void ignored): every
arm trains the plan of `--budget` at one thread (`unetkit plan --distill on`), pinned; two runs side
by side, one thread each: `--distill on` (the teacher, `--teacher` lever, then the student, `--steps`
each) and the plain student of `--steps`.

Retention = (student - plain) / (teacher - plain) in the selection metric fit records on the
validation frames (mean foreground Dice, the score the teacher's record carries), for the teacher's
network and for the teacher as it teaches (its TTA views averaged). The student and the plain run
are also scored as `unetkit predict` runs them on the held-out frames: mIoU over the 11 classes
(`camvid.py`'s scoring). Appends to docs/benchmarks.md with the command, CPU and load averages.

`--arms W:T,...` sweeps the distillation weight and temperature against one teacher instead: the
teacher is `--teacher-model` (a trained artifact), or trained first as a plain run of the lever's
network (the pinned plan, or `--pinned`, with the lever applied, `--steps`, alone at two threads); then one student
per W:T (`unetkit train --distill-from TEACHER`, distill.weight W, distill.temperature T) and the
plain student, all side by side at one thread each, `--steps` each. The teacher's validation score is
its own run's record on the same frames.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from camvid import NAMES, predicted_scores, prepare  # noqa: E402
from distill_drive import (  # noqa: E402
    LEVERS,
    pinned_config,
    retention,
    retention_sentence,
    start,
    steps_of,
    train_arms,
    wait,
)
from drive import load_split, machine  # noqa: E402
from report import append_markdown  # noqa: E402


def publish(benchmarks: Path, out: Path, lines: list[str], predicted: dict, results: dict) -> None:
    """The entry (`lines` + the per-class IoU table of `predicted`) appended to `benchmarks` and printed;
    `results` into `out/results.json`."""
    names = NAMES.split(",")
    lines = [*lines, "", "Per-class IoU as predicted (held-out frames):", "",
             "| arm | " + " | ".join(names) + " |", "| --- | " + " | ".join("---" for _ in names) + " |",
             *[f"| {name} | " + " | ".join(f"{v:.3f}" for v in scored["iou"]) + " |" for name, scored in predicted.items()]]
    text = "\n".join(lines) + "\n"
    append_markdown(benchmarks, text)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(text)


def parse_arms(text: str) -> list[tuple[float, float]]:
    """"0.5:2,0.9:4" -> [(0.5, 2.0), (0.9, 4.0)]: (distillation weight, temperature) per student."""
    arms = []
    for item in text.split(","):
        weight, _, temperature = item.strip().partition(":")
        arms.append((float(weight), float(temperature or 2.0)))
    return arms


def sweep(args: argparse.Namespace, folder: Path, keys: list[str], val_keys: list[str], out: Path) -> None:
    """The `--arms` protocol (module docstring): one teacher, a student per weight:temperature, a plain run."""
    import os

    from unetkit.artifact import read_meta
    from unetkit.config import ModelConfig, parse_duration
    from unetkit.training.distill import teacher_model
    from unetkit.training.loop import SELECTION_METRIC

    arms = parse_arms(args.arms)
    out.mkdir(parents=True, exist_ok=True)
    pinned = json.loads((args.pinned or pinned_config(folder, parse_duration(args.budget), out, 1, args.steps,
                                                      args.teacher, val_keys)).read_text())
    pinned["distill"] = {"mode": "off"}
    teacher = args.teacher_model
    if teacher is None:  # the lever's network, pinned alike, trained alone
        lever = teacher_model(ModelConfig(**pinned["model"]), args.teacher)
        config = out / "teacher.json"
        config.write_text(json.dumps({**pinned, "model": {**pinned["model"], "base_width": lever.base_width,
                                                          "norm": lever.norm}}))
        wait(start(folder, 0, "off", out / "teacher", 2, config, args.steps, val_keys), out / "teacher")
        teacher = out / "teacher" / "model.unetkit"
    loads = [os.getloadavg()]
    runs = {"plain": (None, None), **{f"w{w:g} T{t:g}": (w, t) for w, t in arms}}
    folders = {name: out / name.replace(" ", "-") for name in runs}
    procs = []
    for name, (weight, temperature) in runs.items():
        config = out / f"{folders[name].name}.json"  # not with_suffix: "w0.5-T2" has a dot
        distill = ({"mode": "on", "teacher_artifact": str(teacher), "weight": weight, "temperature": temperature}
                   if weight is not None else {"mode": "off"})
        config.write_text(json.dumps({**pinned, "distill": distill}))
        procs.append((start(folder, 0, distill["mode"], folders[name], 1, config, args.steps, val_keys), folders[name]))
    for proc, folder_out in procs:
        wait(proc, folder_out)
    loads.append(os.getloadavg())
    models = {"teacher": teacher, **{name: folders[name] / "model.unetkit" for name in runs}}
    metas = {name: read_meta(models[name]) for name in runs}
    teacher_meta = read_meta(teacher)
    lead = teacher_meta.metrics[SELECTION_METRIC]
    plain = metas["plain"].metrics[SELECTION_METRIC]
    taught = metas[next(iter(runs.keys() - {"plain"}))].metrics["distillation"]["teacher"]
    teaching = taught.get("targets", {}).get("as_it_teaches", {}).get(SELECTION_METRIC)
    val = load_split(folder, val_keys)
    predicted = {name: predicted_scores(path, val) for name, path in models.items()}
    t_model = teacher_meta.model
    lines = [
        f"## CamVid distillation sweep at {args.steps} steps each (the one-thread plan of {args.budget}): "
        f"teacher artifact w{t_model.base_width} d{t_model.depth} {t_model.norm} -> BatchNorm students, weight / T "
        f"{', '.join(f'{w:g} / {t:g}' for w, t in arms)} ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python benchmarks/distill_camvid.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}; the students and the plain run side by side, one thread each; load average "
        f"(1/5/15 min) at their start {'/'.join(f'{v:.2f}' for v in loads[0])}, at the end "
        f"{'/'.join(f'{v:.2f}' for v in loads[1])}.  ",
        f"Train on the {len(keys) - len(val_keys)} frames of the other sequences, validate on the {len(val_keys)} frames "
        f"of {args.val_prefix} (void ignored). Runs: `{out}`; teacher `{teacher}` (w{t_model.base_width} d{t_model.depth} "
        f"{t_model.norm}, {steps_of(teacher_meta)} steps).  ",
        f"Every arm pinned to the plan: `{json.dumps(pinned)}`.",
        "",
        f"| arm | distillation weight / T | steps | validation {SELECTION_METRIC} (fit's record) | retention | "
        "held-out mIoU as predicted | pixel acc. |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| teacher | - | {steps_of(teacher_meta)} | {lead:.4f} | - | {predicted['teacher']['miou']:.4f} | "
        f"{predicted['teacher']['pixel_accuracy']:.4f} |",
        *([f"| teacher as it teaches ({taught['targets'].get('views')} views) | - | - | {teaching:.4f} | - | - | - |"]
          if teaching is not None else []),
        *[f"| {name} | {'-' if w is None else f'{w:g} / {t:g}'} | {steps_of(metas[name])} | "
          f"{metas[name].metrics[SELECTION_METRIC]:.4f} | "
          f"{'-' if w is None else f'{retention(metas[name].metrics[SELECTION_METRIC], plain, lead):.2f}'} | "
          f"{predicted[name]['miou']:.4f} | {predicted[name]['pixel_accuracy']:.4f} |"
          for name, (w, t) in runs.items()],
        "",
        "Retention = (student - plain) / (teacher - plain) on the validation record (target >= 0.70).",
    ]
    publish(args.benchmarks, out, lines, predicted, {
        "teacher": lead, "teaching": teaching, "plain": plain,
        "students": {n: metas[n].metrics[SELECTION_METRIC] for n in runs}, "predicted": predicted, "loads": loads})


def main() -> None:
    from unetkit.artifact import read_meta
    from unetkit.config import parse_duration
    from unetkit.training.loop import SELECTION_METRIC

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="CamVid release root (holding train/, trainannot/)")
    ap.add_argument("--budget", default="45m", help="the budget whose one-thread plan every arm trains")
    ap.add_argument("--steps", type=int, default=3000, help="the teacher's, the student's and the plain run's steps")
    ap.add_argument("--teacher", default="wider", choices=sorted(LEVERS),
                    help="the teacher's lever (distill.teacher): 1.5x wider, or the student's network with InstanceNorm")
    ap.add_argument("--val-prefix", default="0006R0", help="comma-separated sequence prefixes held out")
    ap.add_argument("--arms", default="", metavar="W:T,...",
                    help="sweep: one student per distillation weight:temperature, from one teacher (see above)")
    ap.add_argument("--teacher-model", type=Path, default=None,
                    help="with --arms: the teacher artifact (default: train it first, a plain run of the lever's net)")
    ap.add_argument("--pinned", type=Path, default=None,
                    help="with --arms: pin every arm to this TrainConfig JSON (e.g. an earlier run's pinned.json) "
                         "instead of planning --budget now")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-distill-camvid")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()

    folder = prepare(args.data, args.work)
    prefixes = tuple(p.strip() + "_" for p in args.val_prefix.split(",") if p.strip())
    keys = sorted(p.stem for p in (args.data / "train").glob("*.png"))
    val_keys = [k for k in keys if k.startswith(prefixes)]
    out = args.work / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    if args.arms:
        return sweep(args, folder, keys, val_keys, out)
    loads, _ = train_arms(folder, parse_duration(args.budget), out, 1, args.steps, args.teacher, val_keys)
    pinned = json.loads((out / "pinned.json").read_text())

    metas = {name: read_meta(out / name / "model.unetkit") for name in ("distilled", "plain")}
    record = metas["distilled"].metrics["distillation"]
    teacher = record["teacher"][SELECTION_METRIC]
    taught = record["teacher"].get("targets", {})
    teaching = taught.get("as_it_teaches", {}).get(SELECTION_METRIC)
    student = record["student"][SELECTION_METRIC]
    plain = metas["plain"].metrics[SELECTION_METRIC]


    val = load_split(folder, val_keys)
    predicted = {name: predicted_scores(out / name / "model.unetkit", val) for name in metas}
    lever = LEVERS[args.teacher]
    lines = [
        f"## CamVid distillation at {args.steps} steps each (the one-thread plan of {args.budget}): {lever} teacher "
        f"-> BatchNorm student ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python benchmarks/distill_camvid.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}; one thread per run, the two runs side by side; load average (1/5/15 min) at the start "
        f"{'/'.join(f'{v:.2f}' for v in loads[0])}, when the student started {'/'.join(f'{v:.2f}' for v in loads[1])}, "
        f"at the end {'/'.join(f'{v:.2f}' for v in loads[2])}.  ",
        f"Train on the {len(keys) - len(val_keys)} frames of the other sequences, validate on the {len(val_keys)} frames "
        f"of {args.val_prefix} (void ignored). Runs: `{out}`.  ",
        f"Every arm pinned to the plan: `{json.dumps(pinned)}`.",
        "",
        f"| arm | network | steps | validation {SELECTION_METRIC} (fit's record) | held-out mIoU as predicted | "
        "pixel acc. |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| teacher (in the distilled run) | {record['teacher']['model']} ({record['teacher'].get('mode', '-')}), "
        f"{record['teacher']['seconds'] / 60:.1f} min | {record['teacher']['steps']} | {teacher:.4f} | - | - |",
        *([f"| teacher as it teaches ({taught.get('views')} TTA views averaged, cached in {taught.get('seconds', 0):.0f} s)"
           f" | - | - | {teaching:.4f} | - | - |"] if teaching is not None else []),
        *[f"| {name} | {record['student']['model']} | {steps_of(metas[name])} | "
          f"{student if name == 'distilled' else plain:.4f} | {predicted[name]['miou']:.4f} | "
          f"{predicted[name]['pixel_accuracy']:.4f} |" for name in ("distilled", "plain")],
        "",
        " ".join([retention_sentence(student, plain, teacher, "the teacher's network"),
                  *([retention_sentence(student, plain, teaching, "the teacher as it teaches")] if teaching else []),
                  f"Distillation weight {record['weight']}, temperature {record['temperature']}."]),
    ]
    publish(args.benchmarks, out, lines, predicted, {"teacher": teacher, "teaching": teaching, "student": student,
                                                     "plain": plain, "predicted": predicted, "loads": loads})


if __name__ == "__main__":
    main()
