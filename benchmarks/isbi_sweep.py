"""ISBI 2012: where does a trained model's Rand error come from? Threshold / TTA / hole-filling sweep.

    .venv/bin/python benchmarks/isbi_sweep.py --model RUN/model.unetkit --data ../shared/data/isbi2012

Scores the validation slices (25-29) with the foreground-restricted adapted Rand error of
benchmarks/isbi.py for interior thresholds, with and without TTA, with enclosed membrane fragments
filled, and prints per-slice (error, precision = merges, recall = splits). Tuned and scored on the
same slices: an analysis, not a held-out figure. Prints a markdown table; appends nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drive import load_split  # noqa: E402


def fill_enclosed(interior: np.ndarray) -> np.ndarray:
    """Membrane fragments enclosed by interior (holes of the interior mask) become interior."""
    return ndimage.binary_fill_holes(interior)


def main() -> None:
    from unetkit.artifact import load_artifact
    from unetkit.config import TileConfig
    from unetkit.inference.predict import predict_image
    from unetkit.metrics.topology import adapted_rand_error

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="ISBI 2012 root (holding train/)")
    ap.add_argument("--keys-val", default="25,26,27,28,29")
    args = ap.parse_args()
    train_dir = args.data / "train" if (args.data / "train").is_dir() else args.data
    art = load_artifact(args.model)
    val = load_split(train_dir, [k.strip() for k in args.keys_val.split(",")])
    interior = len(art.meta.class_names) - 1
    truth = [s.labels == interior for s in val]

    def row(name: str, masks: list[np.ndarray]) -> str:
        r = np.array([adapted_rand_error(m, t) for m, t in zip(masks, truth, strict=True)])
        return f"| {name} | {r[:, 0].mean():.4f} | {r[:, 1].mean():.3f} | {r[:, 2].mean():.3f} |"

    print("| variant | adapted Rand error | precision (merges) | recall (splits) |\n| --- | --- | --- | --- |")
    for tta in (False, True):
        probs = [predict_image(art, s.image, TileConfig(tile_size=tuple(art.meta.patch_size), tta=tta))[interior]
                 for s in val]
        for thr in (0.5, 0.6, 0.7, 0.8, 0.9):
            print(row(f"{'TTA, ' if tta else ''}interior p >= {thr}", [p >= thr for p in probs]))
            print(row(f"{'TTA, ' if tta else ''}interior p >= {thr}, enclosed membrane filled",
                      [fill_enclosed(p >= thr) for p in probs]))
        if not tta:
            for s, p, t in zip(val, probs, truth, strict=True):
                e, prec, rec = adapted_rand_error(p >= 0.5, t)
                print(f"| slice {s.key}, p >= 0.5 | {e:.4f} | {prec:.3f} | {rec:.3f} |")


if __name__ == "__main__":
    main()
