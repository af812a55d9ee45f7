"""Optimizer, learning-rate schedule, gradient clipping and weight averaging from `OptimConfig`.

The schedule is a pure function of (step, total_steps): linear warm-up to the base LR, then
poly or cosine decay down to `min_lr_ratio * lr`, or constant. It is applied by setting each
param group's `lr` before the step, so the only schedule state is the step counter (which the
checkpoint stores): resume is exact and a budget run can change `total_steps` after warm-up.

`ema_decay > 0` keeps an exponential moving average of the weights (and of BatchNorm's running
statistics) with torch's `AveragedModel`; training validates, selects and saves the average. Its
decay ramps up as min(decay, (1 + n) / (10 + n)) over the n updates so far, so early validations
are not dragged towards the random initial weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from unetkit.config import OptimConfig
from unetkit.errors import ConfigError


def build_optimizer(model: nn.Module, config: OptimConfig,
                    is_encoder: Callable[[str], bool] | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum, Nesterov); no weight decay on biases and normalization weights.

    With `is_encoder` (a parameter-name test) the encoder's parameters get groups of their own
    (`"encoder": True`), whose LR `set_lr` scales (discriminative learning rates, freezing)."""
    if config.lr <= 0:
        raise ConfigError(f"optim.lr: expected a positive learning rate, got {config.lr}")
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        encoder = bool(is_encoder and is_encoder(name))
        groups.setdefault((encoder, p.ndim <= 1), []).append(p)
    param_groups = [{"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay, "encoder": encoder}
                    for (encoder, no_decay), params in sorted(groups.items())]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    raise ConfigError(f"optim.optimizer: expected 'adamw' or 'sgd', got {config.optimizer!r}")


def build_ema(model: nn.Module, config: OptimConfig) -> torch.optim.swa_utils.AveragedModel | None:
    """The weight average of `model` for `config.ema_decay` (None when 0)."""
    decay = config.ema_decay
    if decay == 0:
        return None
    if not 0 < decay < 1:
        raise ConfigError(f"optim.ema_decay: expected 0 (off) or a decay in (0, 1), e.g. 0.998, got {decay}")

    def average(avg: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        if not avg.is_floating_point():  # BatchNorm's step counter
            return current
        return avg.lerp(current, 1.0 - d)

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=average, use_buffers=True)


def lr_factor(step: int, total_steps: int, config: OptimConfig) -> float:
    """Multiplier of the base LR for optimizer step `step` (0-based) of `total_steps`.

    Warm-up: (step + 1) / warmup_steps over the first `warmup_steps` steps (never 0).
    Decay: progress t runs from 0 (first step after warm-up) to 1 (last step);
    poly: floor + (1 - floor) * (1 - t)**power; cosine: floor + (1 - floor) * (1 + cos(pi t)) / 2.
    """
    total = max(int(total_steps), 1)
    warmup = min(max(config.warmup_steps, 0), total - 1) if total > 1 else 0
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "constant":
        return 1.0
    decay_steps = total - warmup
    t = 0.0 if decay_steps <= 1 else min(max((step - warmup) / (decay_steps - 1), 0.0), 1.0)
    floor = config.min_lr_ratio
    if config.schedule == "poly":
        return floor + (1.0 - floor) * (1.0 - t) ** config.poly_power
    if config.schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ConfigError(f"optim.schedule: expected 'poly', 'cosine' or 'constant', got {config.schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, config: OptimConfig,
           encoder_scale: float = 1.0) -> float:
    """Set every param group's LR for `step` (the encoder's groups: x `encoder_scale`); returns the LR."""
    lr = config.lr * lr_factor(step, total_steps, config)
    for group in optimizer.param_groups:
        group["lr"] = lr * (encoder_scale if group.get("encoder") else 1.0)
    return lr


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (0 disables); returns the norm before clipping."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    if max_norm <= 0:
        norms = torch.stack([p.grad.detach().norm() for p in params])
        return float(norms.norm())
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
