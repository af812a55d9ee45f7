"""ISBI 2012: what the "rand" postprocessing search's Dice guard costs and buys, held out.

    .venv/bin/python benchmarks/rand_guard.py --data ../shared/data/isbi2012 \\
        --model RUN/model.unetkit [--model RUN2/model.unetkit] [--guards 0.005,0.01,0.02,1]

Tuning for the object score ("rand", R13) may give up at most `RAND_DICE_GUARD` (0.005) of pooled
Dice; a looser guard lets the search lower the interior threshold further (thinner membranes: fewer
false splits, more pixels wrong). For each artifact (its own tiling, TTA and calibration, as
`unetkit predict`), the validation slices are predicted once and, for each guard, the search is
re-run once per slice on the other slices and scored on the slice it left out
(`isbi.held_out_tuning`): adapted Rand error, pixel error and membrane F1 of the held-out labels,
and the thresholds the folds chose. Appends the table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from drive import artifact_probabilities, load_split, machine  # noqa: E402
from isbi import held_out_tuning  # noqa: E402
from report import publish  # noqa: E402

from unetkit.artifact import load_artifact  # noqa: E402
from unetkit.tuning.postprocess import RAND_DICE_GUARD  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="ISBI 2012 root (holding train/)")
    ap.add_argument("--model", required=True, type=Path, action="append", help="an ISBI artifact (repeatable)")
    ap.add_argument("--guards", default=f"{RAND_DICE_GUARD},0.01,0.02,1",
                    help="comma-separated Dice guards (1: no guard)")
    ap.add_argument("--keys-val", default="25,26,27,28,29")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    train_dir = args.data / "train" if (args.data / "train").is_dir() else args.data
    keys = [k.strip() for k in args.keys_val.split(",") if k.strip()]
    guards = [float(g) for g in args.guards.split(",")]
    val = load_split(train_dir, keys)
    lines = [f"## ISBI 2012: the rand search's Dice guard, held out ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
             "", f"Command: `python benchmarks/rand_guard.py {' '.join(sys.argv[1:])}`  ", f"Machine: {machine()}  ",
             f"Each slice of {','.join(keys)} scored with the postprocessing tuned on the other four (default guard "
             f"{RAND_DICE_GUARD}).", "",
             "| model | Dice guard | adapted Rand error | pixel error | membrane F1 | thresholds of the folds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for model in args.model:
        art = load_artifact(model)
        interior = len(art.meta.class_names) - 1
        probs = artifact_probabilities(art, [s.image for s in val])
        for guard in guards:
            r = held_out_tuning(art, probs, [s.labels for s in val], interior, dice_guard=guard)
            thresholds = ", ".join(str(p.get("threshold", "-")) for p in r["params"])
            lines.append(f"| `{model.parent.name}` | {guard:g} | {r['rand_error']:.4f} | {r['pixel_error']:.4f} "
                         f"| {r['membrane_f1']:.4f} | {thresholds} |")
    publish(args.benchmarks, lines + [""])


if __name__ == "__main__":
    main()
