"""How noisy is the drift score when nothing changed? Scores of random windows of synthetic
textured images (the generator of tests/monitor) against baselines of the same distribution.

    python benchmarks/drift_noise.py [--windows 40]

Prints a Markdown table: median and 95th percentile of the score (inputs only) per baseline size
and window size; docs/monitoring.md quotes it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.monitor.conftest import textured_images  # noqa: E402

from unetkit.monitor.baseline import build_baseline  # noqa: E402
from unetkit.monitor.drift import compare  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=40, help="random windows per cell")
    args = parser.parse_args()
    sizes = (10, 20, 50, 100, 200)
    pool = textured_images(400, seed=11)
    print("| baseline images | " + " | ".join(f"window {m}" for m in sizes) + " |")
    print("| ---: | " + " | ".join("---:" for _ in sizes) + " |")
    for n in (20, 40, 100):
        baseline = build_baseline(textured_images(n, seed=1), class_names=("background", "foreground"))
        measured = [baseline.measure(image) for image in pool]
        rng = np.random.default_rng(0)
        cells = []
        for m in sizes:
            scores = [compare(baseline, [measured[i] for i in rng.choice(len(pool), m, replace=False)]).score
                      for _ in range(args.windows)]
            cells.append(f"{np.median(scores):.3f} / {np.percentile(scores, 95):.3f}")
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
