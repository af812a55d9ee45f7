"""`fit(config) -> artifact path`: the whole training run, top to bottom.

data (spec, pairing, validation, split, normalization from the training images) -> the step loop
(`unetkit.training.steps`: patch sampler + augmentation -> model -> loss -> optimizer and LR
schedule -> steps, with validation every `val_every` steps, best/last checkpoints, early stopping,
wall-clock budget, JSONL log) -> the end (`unetkit.training.finish`): the best weights, calibrated
(temperature) and with postprocessing tuned on the validation split, saved as a model artifact
(`out_dir/model.unetkit`) with the drift baseline (input statistics of the training images, output
statistics on the validation images; `unetkit.monitor`). The budget reserves the time of this end
work. With `ensemble_folds > 1` the step loop runs once per fold (`unetkit.training.ensemble`).

The compute mode (autocast precision + memory format) is settled once, before the step loop: the
plan's, the config's, the checkpoint's on resume, or with `precision: auto` a short measurement on
the real model (`unetkit.training.precision.decide_mode`); the log's "start" event records it
(`mode`, `mode_reason`, `mode_ms_per_step`, `mode_rejected`).

With `track` set, an experiment tracker (`unetkit.training.tracking`, e.g. MLflow) is connected before
any work (a store it cannot write refuses the run), gets the resolved config and data fingerprint,
hears every event of the run log and, with the "end" event, the artifact.

`resume=True` continues an interrupted run exactly from `checkpoint-last.pt`. With `nproc > 1`
fit re-launches itself under torchrun (`unetkit.training.distributed`, `unetkit.training.worker`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from unetkit.artifact import ARTIFACT_NAME
from unetkit.config import TrainConfig
from unetkit.errors import ConfigError
from unetkit.runtime import keep_freed_memory
from unetkit.training import checkpoint as ckpt
from unetkit.training.budget import BudgetClock
from unetkit.training.distributed import (
    DistEnv,
    broadcast_floats,
    in_torchrun,
    init_distributed,
    launch,
    shutdown,
)
from unetkit.training.ensemble import fit_ensemble
from unetkit.training.finish import end_passes, save_final_artifact
from unetkit.training.modes import candidate_modes
from unetkit.training.precision import ModeDecision, apply_mode, check_available, decide_mode
from unetkit.training.prepare import load_training_data
from unetkit.training.runlog import Callback
from unetkit.training.steps import log_time, run_steps
from unetkit.training.tracker import Tracker
from unetkit.training.tracking import open_tracker


def fit(config: TrainConfig, *, callbacks: Sequence[Callback] | None = None) -> Path:
    """Train per `config`; returns the path of the saved model artifact."""
    if config.nproc > 1 and not in_torchrun():
        return launch(config, config.nproc)
    clock = BudgetClock(config.budget_seconds)
    env, device = init_distributed(config.device)
    if device.type == "cpu":
        keep_freed_memory()  # reuse activation buffers: glibc's page faults cost up to 30 % of a CPU step
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker, status = Tracker(), "FAILED"
    try:
        # the experiment tracker (`config.track`): connected and checked writable before any work
        if env.is_main:
            tracker = open_tracker(config.track, str(out_dir))
        if config.ensemble_folds < 1:  # before loading the data: a user error should not wait for it
            raise ConfigError(f"ensemble_folds: expected an integer >= 1 (1 = one model), got {config.ensemble_folds}")
        candidate_modes(config.precision, config.memory_format, device)  # refuses unknown values
        check_available(config.precision, device, config.model, config.loss)
        # ---- data: refuse bad data (unless skip_bad), split, normalization from the training images
        data = load_training_data(config.data, progress=config.progress and env.is_main,
                                  log=print if config.progress and env.is_main else None)
        config = dataclasses.replace(config, model=data.resolve_model(config.model))  # resolved, for the artifact
        config, mode_info = settle_mode(config, env, device)
        tracker.start(config, data.fingerprint)
        callbacks = [*(callbacks or ()), tracker.event]  # the tracker hears every event of the run log
        if config.ensemble_folds > 1:
            path = fit_ensemble(config, data, env, device, clock, callbacks, mode_info)
            status = "FINISHED"
            return path
        clock.end_passes = end_passes(config, len(data.train), len(data.val))
        model, state, log = run_steps(config, data, env, device, clock, out_dir, callbacks, mode_info)
        # ---- the best weights as the artifact
        artifact_path = out_dir / ARTIFACT_NAME
        if env.is_main:
            save_final_artifact(artifact_path, model, data, config, state)
            log.write({"event": "end", "step": state.step, "time": log_time(state, clock),
                       "artifact": str(artifact_path), "best": state.best_metric, "best_step": state.best_step})
        log.close()
        status = "FINISHED"
        return artifact_path
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)
        shutdown(env)


def settle_mode(config: TrainConfig, env: DistEnv, device: torch.device) -> tuple[TrainConfig, dict[str, Any]]:
    """`config` with a concrete precision and memory format, and the decision for the log.

    On resume, "auto" takes the checkpoint's mode (a resumed run computes as it did). With several
    processes rank 0 measures and every rank follows its choice."""
    out_dir = Path(config.out_dir)
    saved = _resumed_mode(config, out_dir) if config.resume else None
    if saved is not None:
        config = dataclasses.replace(config, **saved)
    modes = candidate_modes(config.precision, config.memory_format, device)
    decision = decide_mode(config, device) if env.is_main else ModeDecision(modes[0], "")
    if saved is not None:
        decision = ModeDecision(decision.mode, "the mode of the run being resumed")
    elif len(modes) == 1 and config.plan:
        decision = ModeDecision(decision.mode, _plan_reason(config.plan) or "chosen by the plan")
    index = int(broadcast_floats([float(modes.index(decision.mode))], env, device)[0])
    mode = modes[index]
    if env.is_main and config.progress:
        print(f"compute mode: {mode.name} ({decision.reason})")
    info = {"mode_reason": decision.reason, "mode_ms_per_step": decision.ms_per_step,
            "mode_rejected": decision.rejected}
    return apply_mode(config, mode), info


def _resumed_mode(config: TrainConfig, out_dir: Path) -> dict[str, Any] | None:
    """The "auto" fields filled from the interrupted run's last checkpoint (an ensemble's: a member's)."""
    auto = [k for k in ("precision", "memory_format") if getattr(config, k) == "auto"]
    paths = [out_dir / ckpt.LAST, *sorted(out_dir.glob(f"member-*/{ckpt.LAST}"))]
    path = next((p for p in paths if p.is_file()), None)
    if not auto or path is None:
        return None
    before = ckpt.load_checkpoint(path).get("config", {})
    values = {k: before[k] for k in auto if before.get(k, "auto") != "auto"}
    return values or None


def _plan_reason(plan: dict[str, Any]) -> str:
    return str(plan.get("estimates", {}).get("compute_mode", {}).get("reason", ""))
