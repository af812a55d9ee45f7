"""Resolve a TrainConfig from a config file plus command-line overrides (flags win)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetkit.config import TrainConfig, from_dict, load_json, parse_duration, replace


def build_train_config(
    data: str,
    *,
    budget: str | None = None,
    steps: int | None = None,
    config_file: Path | None = None,
    arch: str | None = None,
    patch: int | None = None,
    batch: int | None = None,
    lr: float | None = None,
    val_keys: str | None = None,
    val_fraction: float | None = None,
    out: str | None = None,
    resume: bool = False,
    nproc: int = 1,
    skip_bad: bool = False,
    seed: int | None = None,
    tensorboard: bool = False,
    progress: bool = True,
) -> TrainConfig:
    cfg = load_json(TrainConfig, config_file) if config_file else TrainConfig()
    changes: dict[str, Any] = {"data.data": str(data), "nproc": nproc, "progress": progress}
    if budget is not None:
        changes["budget_seconds"] = parse_duration(budget)
    if steps is not None:
        changes["steps"] = steps
    if arch is not None:
        from unetkit.models.factory import preset_config

        base = preset_config(arch)
        model = replace(base, in_channels=cfg.model.in_channels, out_channels=cfg.model.out_channels)
        cfg = from_dict(TrainConfig, {**_as_dict(cfg), "model": _as_dict(model)})
    if patch is not None:
        changes["data.patch_size"] = (patch, patch)
    if batch is not None:
        changes["data.batch_size"] = batch
    if lr is not None:
        changes["optim.lr"] = lr
    if val_keys:
        changes["data.val_keys"] = tuple(k.strip() for k in val_keys.split(",") if k.strip())
    if val_fraction is not None:
        changes["data.val_fraction"] = val_fraction
    if out is not None:
        changes["out_dir"] = out
    if resume:
        changes["resume"] = True
    if skip_bad:
        changes["data.skip_bad"] = True
    if seed is not None:
        changes["seed"] = seed
        changes["data.seed"] = seed
    if tensorboard:
        changes["tensorboard"] = True
    return replace(cfg, **changes)


def _as_dict(cfg: Any) -> dict[str, Any]:
    from unetkit.config import to_dict

    return to_dict(cfg)
