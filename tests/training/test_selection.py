"""Which weights a run keeps (training.selection): the final ones, unless the best validated
checkpoint's lead holds across the validation images, out of fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unetkit.artifact import load_artifact
from unetkit.training import checkpoint as ckpt
from unetkit.training.fit import fit
from unetkit.training.selection import cross_fitted, pooled_dice, select_weights
from unetkit.training.steps import RunState
from unetkit.tuning import gate


def image(dice: float, vessel: int = 1000) -> list[int]:
    """A flattened binary confusion matrix [[tn, fp], [fn, tp]] whose foreground Dice is `dice`:
    `vessel` true foreground pixels, the misses split evenly between false positives and negatives."""
    tp = round(dice * vessel)
    miss = vessel - tp
    return [50_000, miss, miss, tp]


def run(tmp_path: Path, validations: dict[int, list[float]], best_step: int) -> tuple[RunState, torch.nn.Module]:
    """A finished run's state: per-image Dice per validation step (the last is the final one), the
    best weights (all ones) in checkpoint-best.pt and the final weights (all zeros) in memory."""
    state = RunState(total_steps=max(validations), step=max(validations), best_step=best_step)
    for step, dices in validations.items():
        confusions = [image(d) for d in dices]
        state.history.append({"step": step, "mean_dice_foreground": pooled_dice(np.sum(confusions, 0))})
        state.val_confusions.append(confusions)
    best = torch.nn.Linear(2, 1)
    torch.nn.init.ones_(best.weight)
    ckpt.save_checkpoint(tmp_path / ckpt.BEST, {"model": best.state_dict(), "step": best_step,
                                               "metrics": {"mean_dice_foreground": 0.9}})
    final = torch.nn.Linear(2, 1)
    torch.nn.init.zeros_(final.weight)
    return state, final


def kept_weights(selection) -> float:
    return float(selection.weights["weight"].mean())


def test_a_best_checkpoint_that_leads_by_one_lucky_image_gives_way_to_the_final_weights(tmp_path) -> None:
    # step 200 is best pooled only because image 0 suited it; on the four others it is behind
    state, final = run(tmp_path, {100: [0.70, 0.74, 0.74, 0.74, 0.74],
                                  200: [0.95, 0.77, 0.77, 0.77, 0.77],
                                  300: [0.76, 0.79, 0.79, 0.79, 0.79]}, best_step=200)
    assert state.history[1]["mean_dice_foreground"] > state.history[2]["mean_dice_foreground"]
    chosen = select_weights(tmp_path, state, final)
    assert chosen.record["kept"] == "final" and chosen.step == 300 and kept_weights(chosen) == 0.0
    assert chosen.metrics == state.history[-1]  # the artifact reports the kept weights' validation
    verdict = chosen.record["gate"]
    # out of fold, choosing picks step 300 for image 0 and step 200 (0.77) for the others
    assert verdict["adopted"] and verdict["gain"] == pytest.approx(pooled_dice(np.sum(
        [image(d) for d in [0.76, 0.79, 0.79, 0.79, 0.79]], 0)) - pooled_dice(np.sum(
        [image(d) for d in [0.76, 0.77, 0.77, 0.77, 0.77]], 0)))
    assert verdict["lower_bound"] > 0 and verdict["images"] == 5
    assert "the final weights over the best validation (step 200)" in chosen.record["reason"]


def test_a_best_checkpoint_ahead_on_every_image_is_kept(tmp_path) -> None:
    state, final = run(tmp_path, {100: [0.70, 0.71, 0.69, 0.72, 0.70],
                                  200: [0.82, 0.80, 0.81, 0.83, 0.80],
                                  300: [0.75, 0.74, 0.76, 0.73, 0.74]}, best_step=200)
    chosen = select_weights(tmp_path, state, final)
    assert chosen.record["kept"] == "best" and chosen.step == 200 and kept_weights(chosen) == 1.0
    assert chosen.metrics["step"] == 200 and chosen.metrics["mean_dice_foreground"] == 0.9  # checkpoint-best's
    verdict = chosen.record["gate"]
    assert not verdict["adopted"] and verdict["gain"] == pytest.approx(
        pooled_dice(np.sum(state.val_confusions[2], 0)) - pooled_dice(np.sum(state.val_confusions[1], 0)))


def test_a_final_lead_within_the_noise_keeps_the_best_checkpoint(tmp_path) -> None:
    # the final weights are ahead on three images and behind on two: no lead that holds
    state, final = run(tmp_path, {100: [0.80, 0.86, 0.80, 0.79, 0.85],
                                  200: [0.81, 0.80, 0.81, 0.80, 0.80]}, best_step=100)
    chosen = select_weights(tmp_path, state, final)
    assert chosen.record["kept"] == "best" and kept_weights(chosen) == 1.0
    assert chosen.record["gate"]["lower_bound"] <= 0 and "kept at the default" in chosen.record["reason"]


def test_too_few_validation_images_keep_the_best_checkpoint(tmp_path) -> None:
    # --full-train validates on one image: no lead of the final weights can be told from chance
    state, final = run(tmp_path, {100: [0.5], 200: [0.9], 300: [0.85]}, best_step=200)
    chosen = select_weights(tmp_path, state, final)
    assert chosen.record["kept"] == "best" and kept_weights(chosen) == 1.0
    assert chosen.record["gate"]["images"] == 1 and f"fewer than the {gate.MIN_IMAGES}" in chosen.record["reason"]


def test_a_final_validation_that_is_the_best_needs_no_gate(tmp_path) -> None:
    state, final = run(tmp_path, {100: [0.7, 0.7, 0.7], 200: [0.8, 0.8, 0.8]}, best_step=200)
    chosen = select_weights(tmp_path, state, final)
    assert chosen.record["kept"] == "final" and "gate" not in chosen.record and kept_weights(chosen) == 0.0
    assert chosen.record["reason"] == "the final validation was the best"


def test_validations_without_per_image_scores_keep_the_best_checkpoint(tmp_path) -> None:
    # resumed from a checkpoint written before per-image scores were recorded: the best has none
    state, final = run(tmp_path, {100: [0.9, 0.9, 0.9], 200: [0.5, 0.5, 0.5]}, best_step=100)
    state.val_confusions = state.val_confusions[1:]
    chosen = select_weights(tmp_path, state, final)
    assert chosen.record["kept"] == "best" and "not recorded" in chosen.record["reason"]


def test_cross_fitting_takes_each_fold_from_the_validation_best_on_the_other_folds() -> None:
    scores = np.asarray([[image(d) for d in row] for row in
                         [[0.9, 0.5, 0.5], [0.5, 0.8, 0.8]]], np.float64)  # (validations, images, 4)
    # image 0 held out: validation 1 is best on images 1, 2 (0.8 vs 0.5); image 1 held out:
    # validation 0 is best on images 0, 2 (pooled 0.70 vs 0.65), and so for image 2
    np.testing.assert_array_equal(cross_fitted(scores), [scores[1][0], scores[0][1], scores[0][2]])


def test_the_artifact_holds_the_kept_weights_and_says_which(tiny_config) -> None:
    cfg = tiny_config()
    art = load_artifact(fit(cfg))
    record = art.meta.metrics["checkpoint"]
    last = ckpt.load_checkpoint(Path(cfg.out_dir) / ckpt.LAST)
    history = art.meta.history
    # 2 validation images: too few to overturn the best validation (which may be the final one)
    best = max(history, key=lambda h: h["mean_dice_foreground"])
    assert record["kept"] == ("final" if best is history[-1] else "best") and record["step"] == best["step"]
    assert art.meta.metrics["step"] == best["step"]
    assert art.meta.metrics["mean_dice_foreground"] == best["mean_dice_foreground"]
    source = last["model"] if record["kept"] == "final" else ckpt.load_checkpoint(Path(cfg.out_dir) / ckpt.BEST)["model"]
    for name, value in source.items():
        if value.is_floating_point():
            torch.testing.assert_close(art.state_dict[name].float(), value.float(), msg=name)
    assert len(last["state"]["val_confusions"]) == len(history) == 2
    assert all(len(c) == 2 and len(c[0]) == 16 for c in last["state"]["val_confusions"])  # 2 images, 4x4
