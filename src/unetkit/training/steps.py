"""The step loop of one network and its state: `run_steps` and `RunState`.

Sampling and augmentation (every rank draws the same global batch, then keeps its share), model,
loss, optimizer and compute mode (precision + memory format, `unetkit.training.modes`), then the
loop: validation every `val_every` steps (best weights to `checkpoint-best.pt`, early stopping),
the last checkpoint, the wall-clock budget (`BudgetClock`) and the JSONL log. It ends with a final validation and the last checkpoint; what follows (the
artifact) is `unetkit.training.finish`'s.

Determinism: torch, numpy and the sampler's generator are seeded from `config.seed`; the
checkpoint stores all three states (`snapshot` / `restore`), so `resume=True` continues the run
exactly. Ctrl-C / SIGTERM stops at the next step boundary after writing `checkpoint-last.pt` (then
raises KeyboardInterrupt).
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.config import TrainConfig, to_dict
from unetkit.data.transforms import context_window
from unetkit.losses.losses import DistillationLoss, SegmentationLoss
from unetkit.models import build_model
from unetkit.models.pretrained import load_pretrained_encoder
from unetkit.models.unet_encoder import is_encoder_key
from unetkit.training import checkpoint as ckpt
from unetkit.training.budget import BudgetClock
from unetkit.training.distributed import broadcast_floats, rank_share, wrap_model
from unetkit.training.finetune import (
    Start,
    apply_start,
    encoder_frozen,
    encoder_lr_scale,
    set_encoder_trainable,
)
from unetkit.training.loop import SELECTION_METRIC, flat_metrics, train_step, validation_summary
from unetkit.training.optim import build_ema, build_optimizer, set_lr
from unetkit.training.precision import config_mode
from unetkit.training.prepare import TrainingData
from unetkit.training.runlog import Callback, RunLog

LOG_EVERY = 10  # steps between "train" events in metrics.jsonl
STOP_CODES = {0: "", 1: "steps", 2: "budget", 3: "early_stop", 4: "interrupted"}


@dataclass
class RunState:
    """What the step loop changes; all of it goes into the checkpoint."""

    total_steps: int
    step: int = 0
    budget_decided: bool = False
    best_metric: float = -math.inf
    best_step: int = -1
    bad_validations: int = 0
    last_val_step: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    # per validation, as `history`: each validation image's confusion matrix, flattened (the
    # evidence `unetkit.training.selection` weighs the best checkpoint against the final weights on)
    val_confusions: list[list[list[int]]] = field(default_factory=list)
    elapsed_before: float = 0.0  # seconds spent in earlier (resumed-from) processes


def run_steps(config: TrainConfig, data: TrainingData, env: Any, device: torch.device, clock: BudgetClock,
              out_dir: Path, callbacks: Sequence[Callback],
              mode_info: dict[str, Any] | None = None, network: torch.nn.Module | None = None,
              loss: Callable[..., torch.Tensor] | None = None, start: Start | None = None,
              teacher: torch.nn.Module | None = None,
              teacher_mode: Any = None,
              targets: Sequence[np.ndarray] | None = None) -> tuple[torch.nn.Module, RunState, RunLog]:
    """Sampling, model, optimizer and the step loop of one network, up to its final validation and
    last checkpoint; the best weights are in `out_dir/checkpoint-best.pt`. The log is left open.
    `mode_info`: why the compute mode was chosen, for the "start" event. `network` / `loss`: the
    user's own (`fit(model=..., loss=...)`) instead of `build_model(config.model)` / the LossConfig's.
    `start`: trained weights to begin from (`unetkit.training.finetune`), the encoder frozen, then at
    its own LR, per `config.finetune`; other encoder weights (`--pretrained` backbone files) are loaded
    by `load_pretrained_encoder`. `teacher`: a trained network whose logits on each batch are soft
    targets (`DistillationLoss`, `config.distill`), computed in `teacher_mode` (default: the student's).
    `targets`: instead, the teacher's probabilities on each training image, computed once
    (`unetkit.training.distill.teacher_targets`): cropped and warped with each patch, they cost a step
    nothing."""
    # ---- sampling and augmentation: every rank draws the same global batch, then keeps its share
    seed_everything(config.seed)
    augmenter = data.augmenter(config.augment, seed=config.seed, soft_targets=targets is not None)
    patch = tuple(config.data.patch_size)
    sampler = data.patch_sampler(config.data, np.random.default_rng(config.seed), targets,
                                 window=context_window(config.augment, patch))  # the patch when augmentation is off
    channels = data.in_channels
    share = rank_share(config.data.batch_size, env)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)

    # ---- model, loss, optimizer, compute mode (decided before: the plan or `fit`)
    mode = config_mode(config, device)
    torch.manual_seed(config.seed)
    model = network if network is not None else build_model(config.model)
    started_from = apply_start(model, start, data.class_names, data.fingerprint) if start is not None else {}
    extra: dict[str, Any] = {}
    if start is None and config.finetune.pretrained and not config.resume:
        extra["pretrained"] = load_pretrained_encoder(model, config.finetune.pretrained).summary()
    model = mode.prepare(model.to(device))  # weights stay fp32 in every mode
    net = wrap_model(model, env, device)
    if loss is not None:
        loss_fn = loss
        extra["loss"] = f"custom: {getattr(loss, '__qualname__', type(loss).__qualname__)}"
    else:
        loss_fn = (SegmentationLoss(config.loss) if teacher is None and targets is None
                   else DistillationLoss(config.loss, config.distill)).to(device)
    teacher_mode = teacher_mode or mode
    if teacher is not None:
        teacher = teacher_mode.prepare(teacher.to(device)).eval()
    tune = config.finetune
    optimizer = build_optimizer(model, config.optim, is_encoder_key if tune.encoder_lr_ratio != 1.0
                                or tune.freeze_encoder_steps else None)
    ema = build_ema(model, config.optim)
    kept = ema.module if ema is not None else model  # the weights validated, selected and saved
    scaler = torch.amp.GradScaler(device.type) if mode.scale_loss else None

    # ---- fresh or resumed state
    state = RunState(total_steps=config.steps)
    if config.resume:
        saved = ckpt.load_checkpoint(out_dir / ckpt.LAST)
        ckpt.check_resumable(saved, config, out_dir / ckpt.LAST)
        state = restore(saved, model, optimizer, scaler, sampler, augmenter, ema)
    log = RunLog(out_dir, enabled=env.is_main, total_steps=state.total_steps, start_step=state.step,
                 progress=config.progress, tensorboard=config.tensorboard, callbacks=callbacks or ())

    def now() -> float:
        return log_time(state, clock)

    validations = 0  # this run's; the end's search (clock.end_seconds) is timed again at the 1st, 2nd, 4th, 8th ...

    def validate_and_record() -> dict[str, Any]:
        nonlocal validations
        validations += 1
        t0 = time.perf_counter()
        retime = clock.time_end is not None and validations & (validations - 1) == 0
        first: list[np.ndarray] | None = [] if retime else None
        summary = validation_summary(kept, data.val, mean=data.mean, std=data.std, class_names=data.class_names,
                                     patch_size=config.data.patch_size, ignore_index=config.loss.ignore_index,
                                     device=device, mode=mode, resolution=config.data.resolution,
                                     first_probabilities=first)
        clock.val_seconds = max(clock.val_seconds, clock.exclude(time.perf_counter() - t0))
        if first and clock.time_end is not None:  # a trained model's probabilities cut into more pieces
            t0 = time.perf_counter()
            clock.end_seconds = max(clock.end_seconds, clock.time_end(first[0]))
            clock.exclude(time.perf_counter() - t0)
        metrics = flat_metrics(summary)
        record_validation(state, metrics, kept, out_dir,
                          [np.ravel(row["confusion"]).tolist() for row in summary["per_image"]])
        log.write({"event": "val", "step": state.step, "time": now(), **metrics,
                   "best": state.best_metric, "best_step": state.best_step})
        return metrics

    def save_last() -> None:
        t0 = time.perf_counter()
        ckpt.save_checkpoint(out_dir / ckpt.LAST, snapshot(state, config, model, optimizer, scaler,
                                                            sampler, augmenter, now(), ema))
        clock.save_seconds = max(clock.save_seconds, clock.exclude(time.perf_counter() - t0))

    log.write({"event": "start", "step": state.step, "time": now(), "total_steps": state.total_steps,
               "world_size": env.world_size, "device": str(device), "mode": mode.name, **(mode_info or {}), **extra,
               "train_images": len(data.train), "val_images": len(data.val), "resumed": config.resume,
               **({"start": start.lineage(data.class_names, data.fingerprint)["start"] | started_from} if start is not None else {})})
    # ---- the step loop; rank 0 decides when to stop and every rank follows
    stop = "steps" if state.step >= state.total_steps else ""
    encoder_is_frozen = False
    with InterruptFlag() as interrupted:
        while not stop:
            t0 = time.perf_counter()
            images, labels = sampler.next_batch()
            images = images.to(device)
            if targets is None:
                images = (images - mean) / std
            else:  # the target channels after the image's are probabilities: not normalized
                images = torch.cat([(images[:, :channels] - mean) / std, images[:, channels:]], 1)
            labels = labels.to(device)
            if augmenter is not None:
                images, labels = augmenter(images, labels, patch)
            images, cached = images[:, :channels], images[:, channels:]
            frozen = encoder_frozen(state.step, tune)
            if frozen != encoder_is_frozen and not env.enabled:  # DDP keeps gradients: LR 0 freezes it there
                set_encoder_trainable(model, not frozen)
                encoder_is_frozen = frozen
            lr = set_lr(optimizer, state.step, state.total_steps, config.optim, encoder_lr_scale(state.step, tune))
            soft = (teacher_logits(teacher, images[share], teacher_mode) if teacher is not None
                    else probability_logits(cached[share]) if targets is not None else None)
            terms = train_step(net, images[share], labels[share], loss_fn=loss_fn, optimizer=optimizer,
                               mode=mode, scaler=scaler, grad_clip=config.optim.grad_clip,
                               step=state.step, teacher=soft)
            if ema is not None:
                ema.update_parameters(model)
            state.step += 1
            if env.is_main and (state.step % LOG_EVERY == 0 or state.step in (1, state.total_steps)):
                log.write({"event": "train", "step": state.step, "time": now(), "lr": lr, **terms})
            if env.is_main and state.step % config.val_every == 0 and state.step < state.total_steps:
                validate_and_record()
                save_last()
            if env.is_main and clock.enabled and clock.time_to_plan(state.budget_decided, config.resume):
                if not state.budget_decided:  # first plan: time one validation and one save
                    if state.last_val_step < 0:
                        validate_and_record()
                    if clock.save_seconds == 0.0:
                        save_last()
                total = max(state.step, clock.plan(state.step, config.val_every))
                if total != state.total_steps or not state.budget_decided:
                    state.total_steps, state.budget_decided = total, True
                    log.write({"event": "budget", "step": state.step, "time": now(), "total_steps": total,
                               "seconds_per_step": clock.seconds_per_step(), "val_seconds": clock.val_seconds,
                               "save_seconds": clock.save_seconds, "end_seconds": clock.end_seconds})
                    log.set_total(total)
            clock.record_step(time.perf_counter() - t0)  # validation and save time excluded
            log.progress(state.step, terms["loss"], lr,
                         (SELECTION_METRIC, state.history[-1].get(SELECTION_METRIC)) if state.history else None)
            code, total = broadcast_floats([float(stop_code(state, clock, config, interrupted.is_set)),
                                            float(state.total_steps)], env, device)
            stop, state.total_steps = STOP_CODES[int(code)], int(total)

        if stop == "interrupted":
            if env.is_main:
                save_last()
                log.write({"event": "stop", "step": state.step, "time": now(), "reason": stop})
                log.close()
            raise KeyboardInterrupt(f"training interrupted at step {state.step}; resume with resume=True")

    # ---- the end: final validation and the last checkpoint (the caller saves the artifact)
    if env.is_main:
        log.write({"event": "stop", "step": state.step, "time": now(), "reason": stop})
        if state.last_val_step != state.step:
            validate_and_record()
        save_last()
    return kept, state, log


# ---------------------------------------------------------------- pieces of the loop


def log_time(state: RunState, clock: BudgetClock) -> float:
    return state.elapsed_before + clock.elapsed()


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, images: torch.Tensor, mode: Any) -> torch.Tensor:
    """The teacher's float logits on a (normalized, augmented) batch, main head only."""
    with mode.autocast(images.device.type):
        out = teacher(mode.input(images))
    return (out[0] if isinstance(out, (list, tuple)) else out).float()


def probability_logits(probabilities: torch.Tensor) -> torch.Tensor:
    """Logits of cached probabilities: softmax(log p / T) is the teacher's tempered distribution."""
    return torch.log(probabilities.float().clamp_min(1e-6))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stop_code(state: RunState, clock: BudgetClock, config: TrainConfig, interrupted: bool) -> int:
    if interrupted:
        return 4
    if state.step >= state.total_steps:
        return 1
    if clock.out_of_time():
        return 2
    if config.early_stop_patience and state.bad_validations >= config.early_stop_patience:
        return 3
    return 0


def record_validation(state: RunState, metrics: dict[str, Any], model: torch.nn.Module, out_dir: Path,
                      confusions: list[list[int]]) -> None:
    """History (and each image's flattened confusion matrix), best metric (best weights to
    checkpoint-best.pt) and the early-stopping count."""
    state.last_val_step = state.step
    state.history.append({"step": state.step, **metrics})
    state.val_confusions.append(confusions)
    value = metrics.get(SELECTION_METRIC)
    value = -math.inf if value is None or not math.isfinite(value) else float(value)
    if value > state.best_metric or state.best_step < 0:
        state.best_metric, state.best_step, state.bad_validations = value, state.step, 0
        ckpt.save_checkpoint(out_dir / ckpt.BEST, {"model": model.state_dict(), "step": state.step,
                                                    "metrics": metrics})
    else:
        state.bad_validations += 1


def snapshot(state: RunState, config: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None, sampler: Any, augmenter: Any, elapsed: float,
             ema: torch.optim.swa_utils.AveragedModel | None = None) -> dict[str, Any]:
    return {
        "config": to_dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": ckpt.capture_rng(sampler, augmenter),
        "state": dataclasses.asdict(dataclasses.replace(state, elapsed_before=elapsed)),
        "ema": ema.state_dict() if ema is not None else {},
    }


def restore(saved: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None, sampler: Any, augmenter: Any,
            ema: torch.optim.swa_utils.AveragedModel | None = None) -> RunState:
    model.load_state_dict(saved["model"])
    if ema is not None and saved.get("ema"):
        ema.load_state_dict(saved["ema"])
    optimizer.load_state_dict(saved["optimizer"])
    if scaler is not None and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    ckpt.restore_rng(saved["rng"], sampler, augmenter)
    return RunState(**saved["state"])


class InterruptFlag:
    """SIGINT/SIGTERM set a flag the loop checks between steps; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.is_set = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.is_set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.is_set = True

    def __enter__(self) -> InterruptFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
