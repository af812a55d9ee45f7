"""Drift detection on DRIVE: the baseline from training/, then the score of test/ (the same camera:
should not flag) and of colour-shifted, blurred and rescaled copies of test/ (should flag).

    python benchmarks/drift_drive.py --data ../shared/data/drive --model runs/drive/model.unetkit

The model is copied to --out and the baseline is stored in the copy (`unetkit drift COPY
--baseline-from DATA/training`, with the artifact's own train/validation split when its
validation keys are there); the drifted copies are written as PNG under --out. Prints a Markdown
table: per variant the largest PSI of the input and of the output features, the score, the most
shifted feature and the CPU time per image (reading, inference, features).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from scipy import ndimage

from unetkit.artifact import read_meta
from unetkit.data.io import read_image, write_png
from unetkit.monitor.baseline import Baseline
from unetkit.monitor.measure import add_baseline, check_drift, image_paths


def colour_shift(image: np.ndarray) -> np.ndarray:
    """A warmer camera: red x1.1 + 8, blue x0.9."""
    gain = np.array([1.1, 1.0, 0.9], np.float32)[:, None, None]
    return image * gain + np.array([8, 0, 0], np.float32)[:, None, None]


def blur(sigma: float):
    return lambda image: ndimage.gaussian_filter(image, (0, sigma, sigma))


def rescale(factor: float):
    return lambda image: ndimage.zoom(image, (1, factor, factor), order=1)


def zoom_same_size(factor: float):
    """Magnified by `factor`, centre-cropped back to the original size (a new lens, same sensor)."""
    def change(image: np.ndarray) -> np.ndarray:
        big = ndimage.zoom(image, (1, factor, factor), order=1)
        top, left = (big.shape[1] - image.shape[1]) // 2, (big.shape[2] - image.shape[2]) // 2
        return big[:, top:top + image.shape[1], left:left + image.shape[2]]
    return change


VARIANTS = {  # folder name: (description, change)
    "colour": ("colour shift (R x1.1 +8, B x0.9)", colour_shift),
    "blur1": ("blur (Gaussian sigma 1.0)", blur(1.0)),
    "blur2": ("blur (Gaussian sigma 2.0)", blur(2.0)),
    "rescaled": ("rescaled x0.75", rescale(0.75)),
    "zoomed": ("zoom x1.2, cropped to the same size", zoom_same_size(1.2)),
}


def write_variant(sources: list[Path], change, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for path in sources:
        image = np.clip(change(read_image(path)), 0, 255).round().astype(np.uint8)
        write_png(folder / f"{path.stem}.png", np.moveaxis(image, 0, -1))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="DRIVE root (training/, test/)")
    parser.add_argument("--model", type=Path, required=True, help="a model artifact trained on DRIVE")
    parser.add_argument("--out", type=Path, default=Path("/tmp/unetkit-drift-drive"))
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--only", default="", help="comma-separated variants (same," + ",".join(VARIANTS) + "); default all")
    parser.add_argument("--reuse", action="store_true", help="keep OUT/model.unetkit and its baseline from an earlier run")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "model.unetkit"
    if not args.reuse:
        shutil.copy(args.model, model)
        start, cpu = time.perf_counter(), time.process_time()
        add_baseline(model, args.data / "training", backend=args.backend, log=print)
        print(f"baseline: {time.perf_counter() - start:.2f} s wall, {time.process_time() - cpu:.2f} s CPU "
              "(including reading the images and rewriting the artifact)", flush=True)
    baseline = Baseline.from_dict(read_meta(model).drift_baseline)

    wanted = set(args.only.split(",")) if args.only else {"same", *VARIANTS}
    test = image_paths(args.data / "test" / "images")
    folders = {"test/images (same camera)": args.data / "test" / "images"} if "same" in wanted else {}
    for slug, (name, change) in VARIANTS.items():
        if slug in wanted:
            folders[name] = write_variant(test, change, args.out / slug)

    rows = []
    for name, folder in folders.items():
        t0 = time.process_time()  # CPU seconds: the machine is shared, wall time says little
        both, _ = check_drift(model, folder, threshold=0.2, outputs=True, backend=args.backend, progress=False)
        cpu = time.process_time() - t0
        inputs = max(f.psi for f in both.features if f.source == "input")
        outputs = max(f.psi for f in both.features if f.source == "output")
        worst = both.worst
        print(f"{name}: inputs {inputs:.3f}, outputs {outputs:.3f}", flush=True)
        Console(width=100).print(both.table())
        rows.append(f"| {name} | {inputs:.3f} | {outputs:.3f} | {both.score:.3f} | "
                    f"{'DRIFT' if both.drifted else 'no drift'} | {worst.name} ({worst.psi:.2f}) | "
                    f"{1000 * cpu / len(test):.0f} |")
    print(f"\n{baseline.input_images} training images, model outputs on {baseline.output_images} images; "
          f"{len(test)} test images per variant; {platform.machine()}, {platform.python_version()}\n")
    print("| images | max PSI, inputs | max PSI, outputs | score | verdict (threshold 0.2) | largest PSI | CPU ms/img (with inference) |")
    print("| --- | ---: | ---: | ---: | --- | --- | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
