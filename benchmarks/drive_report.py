"""Trustworthy evaluation on DRIVE: calibrate a COPY of a model, tune its postprocessing, evaluate
before and after, write the HTML reports and append the figures to docs/benchmarks.md.

    .venv/bin/python benchmarks/drive_report.py --model runs/drive/model.unetkit \
        --data ../shared/data/drive/training --keys 36,37,38,39,40 --out bench-drive

The model given is never modified: `calibrate_model(..., out=DIR/model-tuned.unetkit)` writes the
copy, `tune_model_postprocess` updates that copy. Calibration, tuning and evaluation all use the
same validation keys (DRIVE has no labelled test set: hold these keys out of training), so the
"after" figures are optimistic by construction; the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from unetkit.evaluation.evaluate import evaluate_model
from unetkit.evaluation.report import WorstImages, write_report
from unetkit.inference.backends import machine_id
from unetkit.tuning.calibration import calibrate_model
from unetkit.tuning.postprocess import tune_model_postprocess

ROOT = Path(__file__).resolve().parents[1]


def evaluate_with_report(model: Path, data: str, keys: list[str], report: Path, title: str,
                         calibration: dict[str, Any] | None = None) -> tuple[dict[str, Any], float]:
    worst = WorstImages(k=4)
    start = time.perf_counter()
    result = evaluate_model(model, data, keys=keys, on_image=worst, progress=False)
    seconds = time.perf_counter() - start
    write_report(report, result, worst.images(), title=title, calibration=calibration)
    return result, seconds


def fmt(v: Any, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def metrics_rows(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One markdown row per metric: before | after (foreground class rows for the binary task)."""
    fb, fa = before["per_class"][-1], after["per_class"][-1]
    rows = [
        ("mIoU (micro)", before["mean_iou"], after["mean_iou"], 4),
        ("foreground IoU (micro)", fb["iou"], fa["iou"], 4),
        ("foreground Dice (micro)", fb["dice"], fa["dice"], 4),
        ("foreground Dice (macro, per image)", fb.get("dice_macro"), fa.get("dice_macro"), 4),
        ("precision", fb["precision"], fa["precision"], 4),
        ("recall", fb["recall"], fa["recall"], 4),
        ("pixel accuracy", before["pixel_accuracy"], after["pixel_accuracy"], 4),
        ("Boundary IoU (micro)", fb.get("boundary_iou_micro"), fa.get("boundary_iou_micro"), 4),
        ("HD95 (px, mean over images)", fb.get("hd95_mean"), fa.get("hd95_mean"), 2),
        ("ASSD (px, mean over images)", fb.get("assd_mean"), fa.get("assd_mean"), 2),
        ("clDice (macro)", fb.get("cldice_macro"), fa.get("cldice_macro"), 4),
        ("AUC ROC", fb.get("auc_roc"), fa.get("auc_roc"), 4),
        ("average precision", fb.get("average_precision"), fa.get("average_precision"), 4),
        ("ECE (evaluation pixels)", before["calibration"]["ece"], after["calibration"]["ece"], 4),
    ]
    return [f"| {name} | {fmt(b, d)} | {fmt(a, d)} |" for name, b, a, d in rows]


def markdown(args: argparse.Namespace, cal: dict[str, Any], tune: dict[str, Any], before: dict[str, Any],
             after: dict[str, Any], seconds: dict[str, float], out: Path) -> str:
    command = "python benchmarks/drive_report.py " + " ".join(sys.argv[1:])
    kept = [s for s in tune["steps"] if s["kept"]]
    steps = "; ".join(f"{s['op']}={s['value']} ({fmt(s['before'])} -> {fmt(s['after'])})" for s in kept) or "none kept"
    lines = [
        f"## Evaluation on DRIVE: calibration and postprocessing ({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_id()}, {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}  ",
        f"Model: `{args.model}` (a calibrated, tuned copy: `{out / 'model-tuned.unetkit'}`); "
        f"validation keys {args.keys} ({before['images']} images, {before['pixels']:,} evaluated pixels in the FOV).  ",
        f"Reports: `{out / 'report-before.html'}`, `{out / 'report-after.html'}`.",
        "",
        f"Calibration ({cal['method']} scaling, {cal['pixels']:,} sampled pixels): temperature "
        f"{cal['temperature']:.4f}; ECE {fmt(cal['ece_before'])} -> {fmt(cal['ece_after'])}, "
        f"NLL {fmt(cal['nll_before'])} -> {fmt(cal['nll_after'])} ({seconds['calibrate']:.1f} s).",
        "",
        f"Postprocessing tuned for {tune['metric']}: {fmt(tune['before'])} -> {fmt(tune['after'])}; "
        f"kept: {steps}; stored: `{json.dumps(tune['postprocess'])}` ({seconds['tune']:.1f} s).",
        "",
        "| metric (vessel class) | original model | calibrated + postprocessed |",
        "| --- | --- | --- |",
        *metrics_rows(before, after),
        "",
        f"Evaluation time {seconds['before']:.1f} s before, {seconds['after']:.1f} s after (all metrics). "
        "Calibration, tuning and evaluation use the same keys, so the 'after' column is an upper bound "
        "for unseen images.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--keys", default="36,37,38,39,40")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--metric", default="dice", choices=["dice", "iou"])
    parser.add_argument("--vector", action="store_true", help="vector scaling instead of one temperature")
    parser.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    keys = args.keys.split(",")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    tuned = out / "model-tuned.unetkit"
    seconds: dict[str, float] = {}

    before, seconds["before"] = evaluate_with_report(args.model, args.data, keys, out / "report-before.html",
                                                     "DRIVE: original model")
    start = time.perf_counter()
    cal = calibrate_model(args.model, args.data, keys=keys, vector=args.vector, out=tuned, progress=False)
    seconds["calibrate"] = time.perf_counter() - start
    start = time.perf_counter()
    tune = tune_model_postprocess(tuned, args.data, keys=keys, metric=args.metric, progress=False)
    seconds["tune"] = time.perf_counter() - start
    after, seconds["after"] = evaluate_with_report(tuned, args.data, keys, out / "report-after.html",
                                                   "DRIVE: calibrated + postprocessed", calibration=cal)

    (out / "summary.json").write_text(json.dumps({"calibration": cal, "postprocess": tune, "before": before,
                                                  "after": after, "seconds": seconds}, indent=2, default=float))
    text = markdown(args, cal, tune, before, after, seconds, out)
    args.benchmarks.parent.mkdir(parents=True, exist_ok=True)
    with args.benchmarks.open("a", encoding="utf-8") as f:
        f.write(("\n" if args.benchmarks.stat().st_size else "# Benchmarks\n\n") + text)
    print(text)
    print(f"appended to {args.benchmarks}")


if __name__ == "__main__":
    main()
