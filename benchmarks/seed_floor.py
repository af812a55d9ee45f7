"""ISBI 2012: what the watershed split's seed-size floor (`watershed_min_seed`, R13) buys, in and out of sample.

    .venv/bin/python benchmarks/seed_floor.py --data ../shared/data/isbi2012 \\
        --model RUN/model.unetkit [--model RUN2/model.unetkit ...]

For each artifact (its own tiling, TTA and calibration, as `unetkit predict`) the validation slices
are predicted once; the "rand" postprocessing search is then run twice -- as unetkit runs it (the
split starts at `DEFAULT_MIN_SEED` px and the floor is searched after the threshold) and without the
floor (every seed kept, no floor step: the search before it) -- each tuned on all the scored slices
(what training stores) and once per slice on the other slices, scored on the slice it left out
(`isbi.held_out_tuning`). Reports the adapted Rand error of the interior components per arm, the
per-slice errors and the floors chosen; appends the table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from drive import artifact_probabilities, load_split, machine  # noqa: E402
from isbi import held_out_tuning, scores  # noqa: E402
from report import publish  # noqa: E402

import unetkit.tuning.postprocess as search  # noqa: E402
from unetkit.artifact import load_artifact  # noqa: E402
from unetkit.inference.postprocess import apply_postprocess  # noqa: E402


def arm(art, probs, labels, interior, floor: bool) -> dict:
    """In-sample and held-out scores of the search with or without the seed floor."""
    steps = [s for s in search.candidate_steps(probs[0].shape[0], metric="rand")
             if floor or s[0] != "watershed_min_seed"]
    default = search.DEFAULT_MIN_SEED
    search.DEFAULT_MIN_SEED = default if floor else 0
    try:
        params, _ = search.tune_postprocess(probs, labels, metric="rand", ignore_index=art.meta.ignore_index,
                                            steps=steps)
        inside = scores([apply_postprocess(p, params) == interior for p in probs], [t == interior for t in labels])
        held = held_out_tuning(art, probs, labels, interior, steps=steps)
    finally:
        search.DEFAULT_MIN_SEED = default
    return {"params": params, "in": inside, "held": held}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="ISBI 2012 root (holding train/)")
    ap.add_argument("--model", required=True, type=Path, action="append", help="an ISBI artifact (repeatable)")
    ap.add_argument("--keys-val", default="25,26,27,28,29")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    train_dir = args.data / "train" if (args.data / "train").is_dir() else args.data
    keys = [k.strip() for k in args.keys_val.split(",") if k.strip()]
    val = load_split(train_dir, keys)
    labels = [s.labels for s in val]
    lines = [f"## ISBI 2012: the watershed seed-size floor, in and out of sample "
             f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
             "", f"Command: `python benchmarks/seed_floor.py {' '.join(sys.argv[1:])}`  ", f"Machine: {machine()}  ",
             f"Adapted Rand error of the interior components on {','.join(keys)}: the search tuned on all of them "
             "(what training stores), and each slice with the search tuned on the other four (held out).", "",
             "| model | search | Rand error, tuned on all | per slice | held out | per slice (held out) | floor chosen |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    totals: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for model in args.model:
        art = load_artifact(model)
        interior = len(art.meta.class_names) - 1
        probs = artifact_probabilities(art, [s.image for s in val])
        for floor in (False, True):
            r = arm(art, probs, labels, interior, floor)
            totals[floor].append((r["in"]["rand_error"], r["held"]["rand_error"]))
            chosen = r["params"].get("watershed_min_seed", [0, 0])[interior] if floor else "-"
            lines.append(
                f"| `{model.parent.name}` | {'with the floor' if floor else 'no floor'} | {r['in']['rand_error']:.4f} "
                f"| {' '.join(f'{e:.3f}' for e in r['in']['rand_per_slice'])} | {r['held']['rand_error']:.4f} "
                f"| {' '.join(f'{e:.3f}' for e in r['held']['rand_per_slice'])} | {chosen} |")
            print(lines[-1], flush=True)
    for floor in (False, True):
        m = np.mean(totals[floor], axis=0)
        lines.append(f"| mean of {len(args.model)} | {'with the floor' if floor else 'no floor'} | {m[0]:.4f} | "
                     f"| {m[1]:.4f} | | |")
    publish(args.benchmarks, lines + [""])


if __name__ == "__main__":
    main()
