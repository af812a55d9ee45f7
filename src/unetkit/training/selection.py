"""Which weights a run keeps: its best validated checkpoint, unless the final weights beat it out of fold.

The best of a run's ~20 validations is chosen on the validation images themselves, so part of its
lead is chance. The final weights (the end of the cosine decay) are the natural alternative; nnU-Net
keeps them. Measured on DRIVE, choosing still paid on images the choice did not see: in a 10- and
a 30-minute run, the checkpoint best on one image scored higher than the final weights on the other
four in 10 of 10 cases (+0.0008 and +0.0023 Dice on average), while leave-one-out choices gave
+0.0019 and -0.0008 (docs/benchmarks.md, "Best validated checkpoint vs final weights"). So the best
checkpoint is the default, and the final weights replace it only when their lead holds across the
validation images, judged by the same gate as tuned postprocessing (`unetkit.tuning.gate`):

1. out of sample: the images are cut into folds; on each fold the checkpoint is the validation that
   scores best on the *other* folds, and its score on this fold is what counts (`cross_fitted`): the
   choosing, scored as it would do on new images;
2. across images: the paired bootstrap's 5th percentile of the final weights' gain over that must
   be above zero, with at least `gate.MIN_IMAGES` images (with one validation image, `--full-train`,
   the best checkpoint stays).

The evidence is what every validation already computed: each image's confusion matrix
(`RunState.val_confusions`), pooled into the selection metric (mean foreground Dice), so the gate
costs no forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.training import checkpoint as ckpt
from unetkit.training.steps import RunState
from unetkit.tuning.gate import decide, fold_indices, too_few
from unetkit.tuning.postprocess import parts_statistic


@dataclass(frozen=True)
class Selection:
    weights: dict[str, Any]
    metrics: dict[str, Any]  # the kept weights' validation: its flat metrics and "step"
    step: int
    record: dict[str, Any]  # for the artifact's metrics["checkpoint"]: kept, steps, the gate's record


def select_weights(out_dir: Path, state: RunState, model: torch.nn.Module) -> Selection:
    """The weights to keep at the end of a run whose final validation is `state.history[-1]` and
    whose final weights are `model`'s (see the module docstring)."""
    final = dict(state.history[-1]) if state.history else {}
    steps = {"final_step": state.step, "best_step": state.best_step}
    kept_final = {"kept": "final", "step": state.step, **steps}
    best_file = Path(out_dir) / ckpt.BEST
    if not final or final.get("step") == state.best_step or not best_file.is_file():
        why = "no validation" if not final else "the final validation was the best"
        return Selection(model.state_dict(), final, state.step, {**kept_final, "reason": why})
    scores, recorded = checkpoint_evidence(state)
    if state.best_step in recorded:
        result = too_few(scores.shape[1], "the best checkpoint") or decide(
            cross_fitted(scores), scores[-1], pooled_dice, what="the best checkpoint")
        if result.adopted:
            return Selection(model.state_dict(), final, state.step, {**kept_final, "gate": result.to_dict(), "reason": (
                f"the final weights over the best validation (step {state.best_step}), {result.reason}")})
        verdict = {"gate": result.to_dict(), "reason": result.reason}
    else:
        verdict = {"reason": "the best checkpoint: the validations' per-image scores were not recorded "
                             "(a run resumed from an older checkpoint)"}
    best = ckpt.load_checkpoint(best_file)
    return Selection(best["model"], {**best["metrics"], "step": state.best_step}, state.best_step,
                     {"kept": "best", "step": state.best_step, **steps, **verdict})


def checkpoint_evidence(state: RunState) -> tuple[np.ndarray, list[int]]:
    """((validations, images, K*K) per-image confusion matrices, their steps) of the validations
    that recorded them (a run resumed from an older checkpoint has them for its later validations
    only; a resume keeps the validation images, so every row has the same images)."""
    recorded = state.history[len(state.history) - len(state.val_confusions):]
    return np.asarray(state.val_confusions, np.float64), [h["step"] for h in recorded]


def cross_fitted(scores: np.ndarray) -> np.ndarray:
    """(images, d): each image's parts from the validation that scores best on the other folds' images."""
    _, n, _ = scores.shape
    out = np.empty(scores.shape[1:], np.float64)
    for fold in fold_indices(n):
        rest = np.setdiff1d(np.arange(n), fold)
        out[fold] = scores[int(np.argmax([pooled_dice(v[rest].sum(0)) for v in scores]))][fold]
    return out


def pooled_dice(parts: np.ndarray) -> float:
    """The selection metric (`unetkit.training.loop.SELECTION_METRIC`, the mean foreground Dice) of a
    flattened, pooled (K, K) confusion matrix: `tuning.postprocess.parts_statistic`'s Dice."""
    return parts_statistic(math.isqrt(len(parts)))(np.asarray(parts, np.float64))
