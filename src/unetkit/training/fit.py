"""`fit(config) -> artifact path`: the whole training run, top to bottom.

data (spec, pairing, validation, split, normalization from the training images) -> the step loop
(`unetkit.training.steps`: patch sampler + augmentation -> model -> loss -> optimizer and LR
schedule -> steps, with validation every `val_every` steps, best/last checkpoints, early stopping,
wall-clock budget, JSONL log) -> the end (`unetkit.training.finish`): the best weights, calibrated
(temperature) and with postprocessing tuned on the validation split, saved as a model artifact
(`out_dir/model.unetkit`) with the drift baseline (input statistics of the training images, output
statistics on the validation images; `unetkit.monitor`). The budget reserves the time of this end
work. With `ensemble_folds > 1` the step loop runs once per fold (`unetkit.training.ensemble`); with
`distill.mode` "on" once for a teacher, then for the student learning from it (`unetkit.training.distill`).

The compute mode (autocast precision + memory format) is settled once, before the step loop: the
plan's, the config's, the checkpoint's on resume, or with `precision: auto` a short measurement on
the real model (`unetkit.training.precision.decide_mode`); the log's "start" event records it
(`mode`, `mode_reason`, `mode_ms_per_step`, `mode_rejected`).

`config.finetune` starts from trained weights (`unetkit.training.finetune`): a model artifact
(`init`: its architecture and weights, the head re-initialized for other classes) or pretrained
encoder weights; the parent's sha256 goes into the artifact's lineage.

With `track` set, an experiment tracker (`unetkit.training.tracking`, e.g. MLflow) is connected before
any work (a store it cannot write refuses the run), gets the resolved config and data fingerprint,
hears every event of the run log and, with the "end" event, the artifact.

`resume=True` continues an interrupted run exactly from `checkpoint-last.pt`. With `nproc > 1`
fit re-launches itself under torchrun (`unetkit.training.distributed`, `unetkit.training.worker`).

Transfer and your own parts: `finetune.pretrained` loads encoder weights from a local file into the
network (`unetkit.models.pretrained`; ImageNet weights bring ImageNet's normalization into the run
and the artifact). `fit(config, model=net, loss=fn)` trains the user's nn.Module with the user's loss
callable `fn(outputs, labels) -> scalar` (labels hold `loss.ignore_index` where unlabelled); the
network must be what `config.model` rebuilds (a built-in architecture, or the plugin named by
`model.arch`, `unetkit.models.plugins`), so the artifact reloads wherever that plugin is installed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetkit.artifact import ARTIFACT_NAME
from unetkit.config import USER, TrainConfig
from unetkit.errors import ConfigError
from unetkit.models.pretrained import check_pretrained
from unetkit.models.rebuild import check_rebuildable
from unetkit.models.unet_encoder import is_unet_encoder_file
from unetkit.runtime import keep_freed_memory
from unetkit.training import checkpoint as ckpt
from unetkit.training.budget import BudgetClock
from unetkit.training.distill import check_teacher, fit_distilled, read_teacher, teacher_config
from unetkit.training.distributed import (
    DistEnv,
    broadcast_floats,
    in_torchrun,
    init_distributed,
    launch,
    shutdown,
)
from unetkit.training.ensemble import fit_ensemble
from unetkit.training.finetune import check_start, read_start, start_model
from unetkit.training.finish import end_passes, end_seconds, save_final_artifact
from unetkit.training.modes import candidate_modes
from unetkit.training.precision import ModeDecision, apply_mode, check_available, decide_mode
from unetkit.training.prepare import load_training_data, with_weights_normalization
from unetkit.training.runlog import Callback
from unetkit.training.steps import log_time, run_steps
from unetkit.training.tracker import Tracker
from unetkit.training.tracking import open_tracker
from unetkit.tuning.postprocess import require_guard


def fit(config: TrainConfig, *, callbacks: Sequence[Callback] | None = None, model: nn.Module | None = None,
        loss: Callable[..., torch.Tensor] | None = None) -> Path:
    """Train per `config` (with the user's own network `model` and/or `loss` callable when given);
    returns the path of the saved model artifact."""
    check_user_parts(config, model, loss)
    if config.nproc > 1 and not in_torchrun():
        return launch(config, config.nproc)
    # encoder weights checked against the encoder before anything is written
    pretrained = check_pretrained(config.model, config.finetune.pretrained) if config.finetune.pretrained \
        and not config.finetune.init and model is None and not is_unet_encoder_file(config.finetune.pretrained) \
        else None  # with --init (refused) or unetkit pretrain's file: read_start
    clock = BudgetClock(config.budget_seconds)
    env, device = init_distributed(config.device)
    if device.type == "cpu":
        keep_freed_memory()  # reuse activation buffers: glibc's page faults cost up to 30 % of a CPU step
    out_dir = Path(config.out_dir)
    tracker, status = Tracker(), "FAILED"
    try:
        # the experiment tracker (`config.track`): connected and checked writable before any work
        if env.is_main:
            tracker = open_tracker(config.track, str(out_dir))
        if config.ensemble_folds < 1:  # before loading the data: a user error should not wait for it
            raise ConfigError(f"ensemble_folds: expected an integer >= 1 (1 = one model), got {config.ensemble_folds}")
        require_guard(config.postprocess_dice_guard, "postprocess_dice_guard")
        candidate_modes(config.precision, config.memory_format, device)  # refuses unknown values
        check_available(config.precision, device, config.model, config.loss, network=model)
        start = read_start(config.finetune)  # --init / unetkit's own pretrained encoder: the file's header, checked before the data
        teacher_meta = read_teacher(config)  # --distill-from: likewise
        if start is not None and config.ensemble_folds > 1:
            raise ConfigError(f"{start.option}: fine-tuning trains one model; k-fold ensembling (ensemble_folds "
                              f"{config.ensemble_folds}) starts from scratch: use ensemble_folds 1")
        # ---- data: refuse bad data (unless skip_bad), split, normalization from the training images
        data = load_training_data(config.data, progress=config.progress and env.is_main,
                                  log=print if config.progress and env.is_main else None)
        model_config = config.model
        if start is not None:  # the parent's architecture; refused when it cannot take these images
            check_start(start, data.in_channels, data.train[0].image.ndim - 1)
            model_config = start_model(start, config.model)
            if start.resolution not in (None, config.data.resolution) and not config.plan and env.is_main:
                print(f"note: {start.option} {start.path} was trained at {start.resolution:g}x the native side, this "
                      f"run trains at {config.data.resolution:g}x (data.resolution; with --budget the plan keeps the "
                      "parent's)")
        if teacher_meta is not None:
            check_teacher(teacher_meta, config, data)
        config = dataclasses.replace(config, model=data.resolve_model(model_config))  # resolved, for the artifact
        if model is not None:
            check_rebuildable(model, config.model, config.data.patch_size)
        if pretrained is not None and pretrained.mean is not None and pretrained.std is not None:
            data = with_weights_normalization(data, pretrained.mean, pretrained.std)
        out_dir.mkdir(parents=True, exist_ok=True)  # only now: bad input leaves nothing behind
        free = measured_mode_keys(config)  # before the student's mode is settled: the teacher's is its own
        config, mode_info = settle_mode(config, env, device, network=model)
        tracker.start(config, data.fingerprint)
        callbacks = [*(callbacks or ()), tracker.event]  # the tracker hears every event of the run log
        if clock.enabled and env.is_main:  # the end's work that passes do not measure (R13's object score); the
            # main process validates and plans for every rank
            clock.end_seconds = end_seconds(config, data.val, config.model.out_channels)
            if clock.end_seconds > 0:  # the labels' one-hot first, then the model's probabilities (run_steps)
                clock.time_end = functools.partial(end_seconds, config, data.val, config.model.out_channels)
        if config.distill.asked:  # "auto" is the plan's to decide (R17): unplanned, off but for a teacher artifact
            teacher = None if teacher_meta is not None else settle_mode(
                teacher_config(config, **free), env, device, what="the teacher's compute mode")
            path = fit_distilled(config, data, env, device, clock, callbacks, mode_info, teacher=teacher)
            status = "FINISHED"
            return path
        if config.ensemble_folds > 1:
            path = fit_ensemble(config, data, env, device, clock, callbacks, mode_info)
            status = "FINISHED"
            return path
        clock.end_passes = end_passes(config, len(data.train), len(data.val))
        model, state, log = run_steps(config, data, env, device, clock, out_dir, callbacks, mode_info,
                                      start=start, network=model, loss=loss)
        # ---- the best weights as the artifact
        artifact_path = out_dir / ARTIFACT_NAME
        if env.is_main:
            save_final_artifact(artifact_path, model, data, config, state, start=start, clock=clock)
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


def measured_mode_keys(config: TrainConfig) -> dict[str, str]:
    """precision / memory_format set to "auto" where they are measured, not fixed by the user: "auto"
    in the config, or chosen by the plan's race (on the plan's network; a teacher differs)."""
    user = {c.get("key") for c in config.plan.get("choices", []) if c.get("source") == USER}
    return {k: "auto" for k in ("precision", "memory_format")
            if getattr(config, k) == "auto" or (config.plan and k not in user)}


def settle_mode(config: TrainConfig, env: DistEnv, device: torch.device,
                network: nn.Module | None = None, what: str = "compute mode") -> tuple[TrainConfig, dict[str, Any]]:
    """`config` with a concrete precision and memory format, and the decision for the log.

    On resume, "auto" takes the checkpoint's mode (a resumed run computes as it did). With several
    processes rank 0 measures and every rank follows its choice."""
    out_dir = Path(config.out_dir)
    saved = _resumed_mode(config, out_dir) if config.resume else None
    if saved is not None:
        config = dataclasses.replace(config, **saved)
    modes = candidate_modes(config.precision, config.memory_format, device)
    decision = decide_mode(config, device, network) if env.is_main else ModeDecision(modes[0], "")
    if saved is not None:
        decision = ModeDecision(decision.mode, "the mode of the run being resumed")
    elif len(modes) == 1 and config.plan:
        decision = ModeDecision(decision.mode, _plan_reason(config.plan) or "chosen by the plan")
    index = int(broadcast_floats([float(modes.index(decision.mode))], env, device)[0])
    mode = modes[index]
    if env.is_main and config.progress:
        print(f"{what}: {mode.name} ({decision.reason})")
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


def check_user_parts(config: TrainConfig, model: nn.Module | None, loss: Callable[..., torch.Tensor] | None) -> None:
    """Refuse what a user's own network or loss cannot do, before anything runs."""
    if model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"fit(model=...): expected a torch nn.Module, got {type(model).__name__}")
    if loss is not None and not callable(loss):
        raise ConfigError(f"fit(loss=...): expected a callable (outputs, labels) -> scalar tensor, got {type(loss).__name__}")
    if (model is not None or loss is not None) and config.nproc > 1:
        raise ConfigError("fit(model=..., loss=...): objects cannot be handed to torchrun's processes; with nproc > 1 "
                          "name the network by model.arch (a plugin, unetkit.models.plugins) and leave loss unset")
    if model is not None and config.ensemble_folds > 1:
        raise ConfigError("fit(model=...) trains that one network; for ensemble_folds > 1 name the architecture "
                          "by model.arch (a plugin builds each member) and leave model unset")
