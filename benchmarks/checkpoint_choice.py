"""Best validated checkpoint vs final weights, scored on validation images the choice did not see.

    python benchmarks/checkpoint_choice.py RUN_FOLDER [RUN_FOLDER ...]

A run folder is what `unetkit train` wrote (`checkpoint-last.pt`, `model.unetkit`). Every
validation recorded each image's confusion matrix (`RunState.val_confusions`), so the question
"would choosing the best checkpoint on these images have helped on those?" is answered without
training again:

- one image chooses (what `--full-train` does, with its single validation image): for each image,
  the validation best on it alone, scored (pooled mean foreground Dice) on the other images,
  against the final validation on the same images; the table gives the mean over the images;
- leave one out: each image scored at the validation best on the other images (pooled over all
  images), against the final validation;
- in sample (optimistic: what the best checkpoint's own validation reports): the best validation on all images.

And what `unetkit.training.selection` kept for the run (the artifact's `metrics.checkpoint`).
Appended to docs/benchmarks.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from drive import machine  # noqa: E402
from report import publish  # noqa: E402

from unetkit.artifact import load_artifact  # noqa: E402
from unetkit.training import checkpoint as ckpt  # noqa: E402
from unetkit.training.selection import cross_fitted, pooled_dice  # noqa: E402
from unetkit.training.steps import RunState  # noqa: E402


def choices(state: RunState) -> dict[str, float]:
    """The run's validations scored as the module docstring says (Dice differences vs final)."""
    scores = np.asarray(state.val_confusions, np.float64)  # (validations, images, K*K)
    v, n, _ = scores.shape
    final = scores[-1]
    one = []
    for i in range(n):
        rest = np.setdiff1d(np.arange(n), [i])
        chosen = int(np.nanargmax([pooled_dice(s[i]) for s in scores]))
        one.append(pooled_dice(scores[chosen][rest].sum(0)) - pooled_dice(final[rest].sum(0)))
    best_all = int(np.nanargmax([pooled_dice(s.sum(0)) for s in scores]))
    return {"validations": v, "images": n, "final": pooled_dice(final.sum(0)),
            "one_image": float(np.mean(one)), "one_image_worst": float(np.min(one)),
            "one_image_hurt": sum(d < 0 for d in one),
            "leave_one_out": pooled_dice(cross_fitted(scores).sum(0)) - pooled_dice(final.sum(0)),
            "in_sample": pooled_dice(scores[best_all].sum(0)) - pooled_dice(final.sum(0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders of `unetkit train` (checkpoint-last.pt)")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        state = RunState(**ckpt.load_checkpoint(run / ckpt.LAST)["state"])
        if not state.val_confusions:
            sys.exit(f"{run}: its validations recorded no per-image scores (trained before they were)")
        c = choices(state)
        artifact = run / "model.unetkit"
        kept = (load_artifact(artifact).meta.metrics.get("checkpoint", {}) if artifact.is_file() else {})
        rows.append(f"| `{run}` | {c['validations']} | {c['images']} | {c['final']:.4f} | {c['one_image']:+.4f} "
                    f"({c['one_image_hurt']} of {c['images']} lower, worst {c['one_image_worst']:+.4f}) | "
                    f"{c['leave_one_out']:+.4f} | {c['in_sample']:+.4f} | {kept.get('kept', '?')} "
                    f"(step {kept.get('step', '?')}) |")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    publish(args.benchmarks, [
        f"## Best validated checkpoint vs final weights, out of sample ({stamp})", "",
        f"Command: `python benchmarks/checkpoint_choice.py {' '.join(str(r) for r in args.runs)}`  ",
        f"Machine: {machine()} (no training: the runs' recorded validations)", "",
        "Dice is the pooled mean foreground Dice of the validation (the selection metric). Each column is the "
        "chosen validation's Dice minus the final validation's, on images the choice did not see.", "",
        "| run | validations | images | final Dice | one image chooses, others scored | leave one out "
        "| in sample (optimistic) | kept by unetkit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ])


if __name__ == "__main__":
    main()
