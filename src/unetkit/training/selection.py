"""Which weights a run keeps: its final weights, or its best validated checkpoint when that holds up.

The best of a run's validations is chosen on the validation images themselves, so part of its lead
is chance: with one validation image (`--full-train`), "best" is whichever checkpoint happened to
suit that image. The final weights are the end of the cosine decay (the learning rate at 1 % of its
peak), which nnU-Net keeps for that reason. So the final weights are kept unless the best
checkpoint's lead holds across the validation images, judged by the same gate as tuned
postprocessing (`unetkit.tuning.gate`):

1. out of sample: the images are cut into folds; on each fold the checkpoint is the validation that
   scores best on the *other* folds, and its score on this fold is what counts (`cross_fitted`);
2. across images: the paired bootstrap's 5th percentile of the gain over the final validation
   must be above zero, with at least `gate.MIN_IMAGES` images.

The evidence is what every validation already computed: each image's confusion matrix
(`RunState.val_confusions`), pooled into the selection metric (mean foreground Dice), so the gate
costs no forward pass. When it adopts, the weights are `checkpoint-best.pt` (the best on all images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.metrics.scores import per_class_dice
from unetkit.training import checkpoint as ckpt
from unetkit.training.steps import RunState
from unetkit.tuning.gate import decide, fold_indices, too_few


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
    kept_final = {"kept": "final", "step": state.step, "final_step": state.step, "best_step": state.best_step}
    best_file = Path(out_dir) / ckpt.BEST
    if not final or final.get("step") == state.best_step or not best_file.is_file():
        why = "no validation" if not final else "the final validation was the best"
        return Selection(model.state_dict(), final, state.step, {**kept_final, "reason": why})
    scores, steps = checkpoint_evidence(state)
    if state.best_step not in steps:
        return Selection(model.state_dict(), final, state.step, {**kept_final, "reason": (
            "the final weights: the best validation's per-image scores were not recorded (a run resumed "
            "from an older checkpoint)")})
    result = too_few(scores.shape[1], "the final weights") or decide(
        scores[-1], cross_fitted(scores), pooled_dice, what="the final weights")
    if result.adopted:
        best = ckpt.load_checkpoint(best_file)
        return Selection(best["model"], {**best["metrics"], "step": state.best_step}, state.best_step,
                         {**kept_final, "kept": "best", "step": state.best_step, "gate": result.to_dict(),
                          "reason": f"the best validation (step {state.best_step}) over the final weights, "
                                    f"{result.reason}"})
    return Selection(model.state_dict(), final, state.step, {**kept_final, "gate": result.to_dict(), "reason": (
        f"not the best validation (step {state.best_step}): {result.reason}")})


def checkpoint_evidence(state: RunState) -> tuple[np.ndarray, list[int]]:
    """((validations, images, K*K) per-image confusion matrices, their steps) of the validations
    that recorded them (a run resumed from an older checkpoint has them for its later validations
    only) and scored the same images as the final one."""
    recorded = state.history[len(state.history) - len(state.val_confusions):]
    rows = [(h["step"], c) for h, c in zip(recorded, state.val_confusions, strict=True)
            if len(c) == len(state.val_confusions[-1])]
    return np.asarray([c for _, c in rows], np.float64), [s for s, _ in rows]


def cross_fitted(scores: np.ndarray) -> np.ndarray:
    """(images, d): each image's parts from the validation that scores best on the other folds' images."""
    _, n, _ = scores.shape
    out = np.empty(scores.shape[1:], np.float64)
    for fold in fold_indices(n):
        rest = np.setdiff1d(np.arange(n), fold)
        values = [pooled_dice(v[rest].sum(0)) for v in scores]
        out[fold] = scores[int(np.nanargmax(np.nan_to_num(values, nan=-math.inf)))][fold]
    return out


def pooled_dice(parts: np.ndarray) -> float:
    """The selection metric (`unetkit.training.loop.SELECTION_METRIC`) of a flattened, pooled (K, K) confusion matrix: the mean foreground Dice
    (all classes when there is one); NaN when no class is present."""
    k = math.isqrt(len(parts))
    dice = np.asarray(per_class_dice(np.asarray(parts).reshape(k, k)), np.float64)
    dice = dice[1:] if k >= 2 else dice
    return float(np.nanmean(dice)) if np.isfinite(dice).any() else math.nan

