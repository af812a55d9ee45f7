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
from distill_drive import LEVERS, retention_sentence, steps_of, train_arms  # noqa: E402
from drive import load_split, machine  # noqa: E402
from report import append_markdown  # noqa: E402


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
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-distill-camvid")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()

    folder = prepare(args.data, args.work)
    prefixes = tuple(p.strip() + "_" for p in args.val_prefix.split(",") if p.strip())
    keys = sorted(p.stem for p in (args.data / "train").glob("*.png"))
    val_keys = [k for k in keys if k.startswith(prefixes)]
    out = args.work / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
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
    names = NAMES.split(",")
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
        "",
        "Per-class IoU as predicted (held-out frames):",
        "",
        "| arm | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
        *[f"| {name} | " + " | ".join(f"{v:.3f}" for v in predicted[name]["iou"]) + " |" for name in predicted],
    ]
    text = "\n".join(lines) + "\n"
    append_markdown(args.benchmarks, text)
    (out / "results.json").write_text(json.dumps({"teacher": teacher, "teaching": teaching, "student": student,
                                                   "plain": plain, "predicted": predicted, "loads": loads}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
