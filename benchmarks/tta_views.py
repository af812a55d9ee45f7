"""How much of test-time augmentation's gain do fewer views keep? DRIVE models, scored as drive.py scores.

For each artifact, every dihedral view's vessel probabilities of the validation images are predicted
once (`iter_view_probabilities`, the artifact's own tiling and calibration); the views' means over
subsets are then scored: the plain prediction, the mirror pair (as-is + left-right, what an upright
model averages), the four flips (as-is, left-right, upside-down, both), the four quarter turns, and
all eight (what `tta` on averages). F1 at 0.5 and AUC ROC on FOV pixels (`drive.binary_scores`).
A subset of v views costs v predictions per tile, so the cost column is the view count. The full
mean of the first image is checked against `predict_image` with TTA on (the same numbers, up to float
rounding).

    .venv/bin/python benchmarks/tta_views.py --data ../shared/data/drive \\
        --model RUN/model.unetkit [--model RUN2/model.unetkit] [--keys 36,37,38,39,40]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from drive import binary_scores, load_split, machine  # noqa: E402
from report import publish  # noqa: E402

from unetkit.artifact import load_artifact  # noqa: E402
from unetkit.inference.backends import make_predictor  # noqa: E402
from unetkit.inference.files import tile_config_for  # noqa: E402
from unetkit.inference.predict import DIHEDRAL_VIEWS, iter_view_probabilities, predict_image, tta_views  # noqa: E402

SUBSETS = {
    "plain": ((0, False),),
    "mirror pair": ((0, False), (0, True)),
    "four flips": ((0, False), (0, True), (2, False), (2, True)),
    "four quarter turns": ((0, False), (1, False), (2, False), (3, False)),
    "all eight": DIHEDRAL_VIEWS,
}


def view_scores(model: Path, val) -> tuple[dict[str, dict[str, float]], float]:
    """Subset name -> binary scores, and the largest difference of the eight-view mean to `predict_image`."""
    art = load_artifact(model)
    config = dataclasses.replace(tile_config_for(art, {"tta": True}), tta_views="dihedral")
    views = tta_views(config)
    means: dict[str, list[np.ndarray]] = {name: [] for name in SUBSETS}
    predictor, worst = make_predictor(art), 0.0
    for sample in val:
        probs = dict(zip(views, iter_view_probabilities(predictor, sample.image, config), strict=True))
        for name, subset in SUBSETS.items():
            means[name].append(np.mean([probs[v] for v in subset], axis=0)[-1])
        if sample is val[0]:  # the views' mean is TTA as inference runs it (one image: 8 predictions more)
            worst = float(np.abs(means["all eight"][-1] - predict_image(art, sample.image, config)[-1]).max())
    truth = np.concatenate([(s.labels == 1).ravel() for s in val])
    fov = np.concatenate([(s.labels != 255).ravel() for s in val])
    return {name: binary_scores(np.concatenate([m.ravel() for m in ms]), truth, fov)
            for name, ms in means.items()}, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="DRIVE root (holding training/)")
    ap.add_argument("--model", action="append", required=True, type=Path, help="a DRIVE model artifact")
    ap.add_argument("--keys", default="36,37,38,39,40", help="validation image keys scored")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    val = load_split(args.data / "training", args.keys.split(","))
    rows, checks = [], []
    for model in args.model:
        scores, worst = view_scores(model, val)
        checks.append(f"`{model}`: {worst:.1e}")
        plain = scores["plain"]
        full_gain = scores["all eight"]["f1"] - plain["f1"]
        for name, s in scores.items():
            gain = s["f1"] - plain["f1"]
            share = f"{gain / full_gain:.0%}" if name != "plain" and full_gain > 0 else "-"
            rows.append([model.parent.parent.name, name, len(SUBSETS[name]), f"{s['f1']:.4f}", f"{gain:+.4f}", share,
                         f"{s['auc']:.4f}"])
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = "| run | views | predictions per tile | F1 @ 0.5 | gain over plain | share of the 8-view gain | AUC |"
    lines = [f"## TTA views: how much of the gain fewer views keep, DRIVE ({stamp})", "",
             f"Command: `{command}`  ", f"Machine: {machine()}  ",
             f"Scored on {args.keys} (FOV pixels, vessel = positive). The eight-view mean of the first image against "
             f"`predict_image` with TTA on, largest difference: {'; '.join(checks)}.", "", header,
             "| " + " | ".join("---" for _ in header.strip("|").split("|")) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    publish(args.benchmarks, lines + [""])


if __name__ == "__main__":
    main()
