"""k-fold ensembling (plan rule R12): one member per fold of the training split, one artifact.

The training split is cut into k folds (seeded). Member i trains on the other k - 1 folds and keeps
its best checkpoint by validating on fold i (nnU-Net's cross-validation). No member sees the data
set's validation split, so that split scores, calibrates and tunes the finished ensemble exactly as
it does a single model. Each member gets an equal share of what the budget has left after the end
work (k times a single model's passes over the validation split).

Members train in turn in `out_dir/member-<i>/`, each with its own log and checkpoints. A finished
member leaves `member-final.pt`, so `resume` skips it and continues the member in progress from its
last checkpoint. The artifact holds an `Ensemble` network (`model.ensemble = k`) whose output is the
log of the members' mean probabilities: inference, export and serving need nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.artifact import ARTIFACT_NAME
from unetkit.config import TrainConfig
from unetkit.errors import ConfigError
from unetkit.models import build_model
from unetkit.models.ensemble import ensemble_state
from unetkit.training import checkpoint as ckpt
from unetkit.training.budget import BudgetClock, reserve_seconds
from unetkit.training.finish import end_passes, write_artifact
from unetkit.training.loop import SELECTION_METRIC, flat_metrics, validation_summary
from unetkit.training.precision import config_mode
from unetkit.training.prepare import TrainingData
from unetkit.training.runlog import Callback, RunLog
from unetkit.training.selection import select_weights
from unetkit.training.steps import run_steps

MEMBER_FINAL = "member-final.pt"
END_SHARE_UNMEASURED = 0.05  # budget kept for the end work before any validation has been timed


def fold_keys(keys: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """The training keys in `k` disjoint folds of near-equal size (seeded, independent of input order)."""
    order = np.random.default_rng(seed).permutation(sorted(keys)).tolist()
    return [sorted(order[i::k]) for i in range(k)]


def check_folds(n_train: int, k: int) -> None:
    if k < 2:
        raise ConfigError(f"ensemble_folds: expected an integer >= 2 for an ensemble, got {k}")
    if n_train < 2 * k:
        raise ConfigError(f"ensemble_folds: {k} folds need at least {2 * k} training images (each member "
                          f"validates on one fold and trains on the rest), got {n_train}; use fewer folds")


def fit_ensemble(config: TrainConfig, data: TrainingData, env: Any, device: torch.device, clock: BudgetClock,
                 callbacks: Sequence[Callback], mode_info: dict[str, Any] | None = None) -> Path:
    """Train `config.ensemble_folds` members and save their ensemble as `out_dir/model.unetkit`."""
    k = config.ensemble_folds
    check_folds(len(data.train), k)
    out_dir = Path(config.out_dir)
    folds = fold_keys([s.key for s in data.train], k, config.seed)
    # the ensemble's end work: a single model's end passes (scoring, calibration, tuning, drift
    # baseline), each pass k times as costly as one member's
    passes = end_passes(config, len(data.train), len(data.val))
    seconds_per_image = 0.0  # one member's validation time per image, once measured
    log = RunLog(out_dir, enabled=env.is_main, total_steps=0)
    log.write({"event": "start", "step": 0, "time": clock.elapsed(), "ensemble_folds": k,
               "folds": folds, "train_images": len(data.train), "val_images": len(data.val), "resumed": config.resume,
               "mode": config_mode(config, device).name,
               **(mode_info or {})})
    weights: list[dict[str, torch.Tensor]] = []
    members: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    for i, fold in enumerate(folds):
        member_dir = out_dir / f"member-{i}"
        member_dir.mkdir(parents=True, exist_ok=True)
        final = member_dir / MEMBER_FINAL
        if config.resume and final.is_file():  # finished before the interruption
            saved = ckpt.load_checkpoint(final)
            weights.append(saved["model"])
            members.append(saved["record"])
            history += saved["history"]
            continue
        held = set(fold)
        part = dataclasses.replace(data, train=[s for s in data.train if s.key not in held],
                                   val=[s for s in data.train if s.key in held])
        share = 0.0
        if clock.enabled:
            end = (reserve_seconds(k * seconds_per_image * len(data.val), passes, end_seconds=clock.end_seconds)
                   if seconds_per_image
                   else END_SHARE_UNMEASURED * clock.budget)  # no margin here: each member's clock keeps one
            share = max(1.0, (clock.seconds_left() - end) / (k - i))
        member = dataclasses.replace(
            config, out_dir=str(member_dir), ensemble_folds=1, seed=config.seed + i, budget_seconds=share,
            data=dataclasses.replace(config.data, val_keys=tuple(fold)),
            resume=config.resume and (member_dir / ckpt.LAST).is_file())
        if config.progress and env.is_main:
            print(f"ensemble member {i + 1}/{k}: {len(part.train)} training images, validating on fold "
                  f"{', '.join(fold)}" + (f"; {share / 60:.1f} min" if share else ""))
        member_clock = BudgetClock(share)
        member_clock.end_passes = 1.0  # a member's end is its final validation: no calibration, tuning, baseline
        model, state, member_log = run_steps(member, part, env, device, member_clock, member_dir, callbacks,
                                             mode_info)
        if member_clock.val_seconds and part.val:
            seconds_per_image = member_clock.val_seconds / len(part.val)
        record = {"member": i, "fold": list(fold), "steps": state.step, "best_step": state.best_step,
                  SELECTION_METRIC: state.best_metric, "seconds": round(member_clock.elapsed(), 1)}
        member_history = [{**h, "member": i} for h in state.history]
        if env.is_main:
            kept = select_weights(member_dir, state, model)
            record |= {"kept_step": kept.step, SELECTION_METRIC: kept.metrics.get(SELECTION_METRIC),
                       "checkpoint": kept.record["reason"]}
            member_log.write({"event": "end", "step": state.step, "time": member_clock.elapsed(),
                              "best": state.best_metric, "best_step": state.best_step, "kept_step": kept.step})
            ckpt.save_checkpoint(final, {"model": kept.weights, "record": record, "history": member_history})
            log.write({"event": "member", "step": state.step, "time": clock.elapsed(), **record})
            weights.append(kept.weights)
        member_log.close()
        members.append(record)
        history += member_history

    artifact_path = out_dir / ARTIFACT_NAME
    if env.is_main:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, ensemble=k))
        state_dict = ensemble_state(weights)
        metrics = score_ensemble(config, state_dict, data, device)
        log.write({"event": "val", "step": sum(m["steps"] for m in members), "time": clock.elapsed(), **metrics})
        write_artifact(artifact_path, state_dict, data, config, history=history,
                       metrics={**metrics, "selection_metric": SELECTION_METRIC, "members": members},
                       lineage={"ensemble_folds": k, "steps": sum(m["steps"] for m in members), "members": members},
                       clock=clock)
        log.write({"event": "end", "step": sum(m["steps"] for m in members), "time": clock.elapsed(),
                   "artifact": str(artifact_path), "best": metrics.get(SELECTION_METRIC)})
    log.close()
    return artifact_path


def score_ensemble(config: TrainConfig, state_dict: dict[str, torch.Tensor], data: TrainingData,
                   device: torch.device) -> dict[str, Any]:
    """The finished ensemble's validation metrics (the same scoring as a member's validations)."""
    if not data.val:
        return {}
    model = build_model(config.model)
    model.load_state_dict(state_dict, strict=True)
    return flat_metrics(validation_summary(model.to(device), data.val, mean=data.mean, std=data.std,
                                           class_names=data.class_names, patch_size=config.data.patch_size,
                                           ignore_index=config.loss.ignore_index, device=device,
                                           resolution=config.data.resolution))
