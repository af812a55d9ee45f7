"""ISBI 2012 EM membranes: `unetkit train --budget` (the auto-plan, no other flag), one command:

    .venv/bin/python benchmarks/isbi.py --data /work/shared/data/isbi2012 --budget 30m
    .venv/bin/python benchmarks/isbi.py --data /work/shared/data/isbi2012 --model RUN/model.unetkit

Trains on slices 00-24, validates on 25-29 and reports, on those 5 slices: pixel error, the
foreground-restricted adapted Rand error (`unetkit.metrics.topology.adapted_rand_error` on the
connected components of the cell-interior class, 4-connectivity), and the membrane F1, for the
labels `unetkit predict` writes (the artifact's tiling, TTA choice and postprocessing, tuned by
training on the validation split, R13) and for the plain arg-max of the probabilities. `--model`
scores an artifact trained earlier (with `--keys-val` its validation slices) instead of training;
with `--tta-views V`, as `unetkit predict --tta-views V` runs it, timing the prediction.
Appends the figures, the plan, the command and the machine to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from drive import artifact_probabilities, load_split, machine, train_unetkit  # noqa: E402
from report import append_markdown, config_notes, write_results  # noqa: E402


def scores(pred_interior: list[np.ndarray], truth_interior: list[np.ndarray]) -> dict[str, float]:
    from unetkit.metrics.topology import adapted_rand_error

    p = np.concatenate([x.ravel() for x in pred_interior])
    t = np.concatenate([x.ravel() for x in truth_interior])
    tp, fp, fn = np.sum(~p & ~t), np.sum(~p & t), np.sum(p & ~t)  # membrane = positive
    rand = [adapted_rand_error(a, b)[0] for a, b in zip(pred_interior, truth_interior, strict=True)]
    return {"pixel_error": float(np.mean(p != t)), "rand_error": float(np.nanmean(rand)),
            "membrane_f1": float(2 * tp / max(2 * tp + fp + fn, 1)), "rand_per_slice": [float(r) for r in rand]}


def held_out_tuning(art, probs: list[np.ndarray], labels: list[np.ndarray], interior: int,
                    dice_guard: float | None = None, steps: list | None = None) -> dict[str, Any]:
    """Training tuned the postprocessing on the scored slices (they are its validation split, as the
    issue asks). This re-tunes it, for the same metric, once per slice on the other slices only and
    scores the slice it left out: a held-out figure for the postprocessing step. `dice_guard`: the
    search's (None: the one training's search ran under, `metrics.postprocess_tuning.dice_guard`, e.g.
    `train --dice-guard`; else the search's default); `steps`: the search's (None: all of them);
    `params` lists each fold's choice."""
    from unetkit.inference.postprocess import apply_postprocess
    from unetkit.tuning.postprocess import tune_postprocess

    record = art.meta.metrics.get("postprocess_tuning", {})
    metric = record.get("metric", "rand")
    if dice_guard is None:
        dice_guard = record.get("dice_guard")
    masks, chosen = [], []
    for i in range(len(probs)):
        rest = [j for j in range(len(probs)) if j != i]
        params, _ = tune_postprocess([probs[j] for j in rest], [labels[j] for j in rest], metric=metric,
                                     ignore_index=art.meta.ignore_index, dice_guard=dice_guard, steps=steps)
        chosen.append(params)
        masks.append(apply_postprocess(probs[i], params) == interior)
    return {**scores(masks, [x == interior for x in labels]), "params": chosen}


def main() -> None:
    from unetkit.config import TTA_VIEWS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="ISBI 2012 root (holding train/)")
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--keys-val", default="25,26,27,28,29")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-isbi")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--config", type=Path, default=None,
                    help="a partial TrainConfig JSON passed to `unetkit train --config` (pins choices of the plan)")
    ap.add_argument("--model", type=Path, default=None,
                    help="score this artifact (validated on --keys-val) instead of training one")
    ap.add_argument("--tta-views", default=None, choices=TTA_VIEWS,
                    help="with --model: score it as `unetkit predict --tta-views V` runs it (TTA on, those views)")
    args = ap.parse_args()
    if args.tta_views and args.model is None:
        raise SystemExit("--tta-views scores an artifact: give --model")
    train_dir = args.data / "train" if (args.data / "train").is_dir() else args.data
    val_keys = [k.strip() for k in args.keys_val.split(",") if k.strip()]
    if args.model is None:
        out = args.out / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        seconds, stdout = train_unetkit(train_dir, args.budget, val_keys, out, args.config)
        print(stdout)
        model = out / "model.unetkit"
    else:
        model, seconds = args.model, None
        out = model.parent
    from unetkit.artifact import load_artifact, read_meta
    from unetkit.inference.files import labels_from_probabilities

    art = load_artifact(model)
    interior = len(art.meta.class_names) - 1  # 255 = cell interior: the last class
    val = load_split(train_dir, val_keys)
    t0 = time.perf_counter()  # as `unetkit predict`: its tiling and TTA (or --tta-views)
    probs = artifact_probabilities(art, [s.image for s in val], views=args.tta_views)
    predict_seconds = time.perf_counter() - t0
    truth = [s.labels == interior for s in val]
    result = {**scores([labels_from_probabilities(p, art) == interior for p in probs], truth), "seconds": seconds,
              "predict_seconds": predict_seconds, "tta_views": args.tta_views,
              "postprocess": art.meta.postprocess, "tta": art.meta.tta,
              "argmax": scores([p.argmax(0) == interior for p in probs], truth),
              "held_out": held_out_tuning(art, probs, [s.labels for s in val], interior)}
    config_heading, config_plan = config_notes(args.config)  # the --config file, read once
    tta_label = f"on, {args.tta_views} views" if args.tta_views else "on" if art.meta.tta else "off"
    chosen = {c["key"]: c["value"] for c in read_meta(model).plan.get("choices", [])}
    what = (f"`unetkit train --budget {args.budget}`{config_heading}" if args.model is None
            else f"scoring `{model}`" + (f" with `--tta-views {args.tta_views}`" if args.tta_views else ""))
    text = "\n".join([
        f"## ISBI 2012, {what} ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python benchmarks/isbi.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {machine()}  ",
        f"Train slices 00-24, scored on {','.join(val_keys)}; plan: width {chosen.get('model.base_width')}, depth "
        f"{chosen.get('model.depth')}, patch {chosen.get('data.patch_size')}, batch {chosen.get('data.batch_size')}, "
        f"planned steps {chosen.get('steps')}; run folder `{out}`"
        f"{config_plan}.",
        "",
        "| labels | pixel error | adapted Rand error (interior components) | membrane F1 | wall clock |",
        "| --- | --- | --- | --- | --- |",
        f"| `unetkit predict` (TTA {tta_label}, postprocess "
        f"{json.dumps(result['postprocess'])}) | {result['pixel_error']:.4f} | {result['rand_error']:.4f} "
        f"| {result['membrane_f1']:.4f} | {'-' if seconds is None else f'{seconds / 60:.1f} min'} |",
        f"| postprocessing re-tuned leaving the scored slice out | {result['held_out']['pixel_error']:.4f} "
        f"| {result['held_out']['rand_error']:.4f} | {result['held_out']['membrane_f1']:.4f} | |",
        f"| arg-max of the probabilities | {result['argmax']['pixel_error']:.4f} | {result['argmax']['rand_error']:.4f} "
        f"| {result['argmax']['membrane_f1']:.4f} | |",
        "",
        "Rand error per slice (`unetkit predict`): " + ", ".join(
            f"{k}: {r:.3f}" for k, r in zip(val_keys, result["rand_per_slice"], strict=True)),
        "",
        f"Prediction of the {len(val_keys)} slices (tiling, views, one process): {predict_seconds:.1f} s.",
        "",
    ])
    append_markdown(args.benchmarks, text)
    write_results(out, result, rescored=args.model is not None, suffix=f"-{args.tta_views}" if args.tta_views else "")
    print(text)


if __name__ == "__main__":
    main()
