"""Resolve a TrainConfig from a config file plus command-line overrides (flags win)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unetkit.config import DISTILL_MODES, TrainConfig, load_json, parse_duration, replace
from unetkit.data.resample import check_resolution
from unetkit.errors import ConfigError
from unetkit.models.factory import PRESETS, preset_config


def build_train_config(data: str, *, config_file: Path | None = None, **flags: Any) -> TrainConfig:
    """A config file (or the defaults) with the command-line flags on top; `flags` as `flag_settings`."""
    cfg = load_json(TrainConfig, config_file) if config_file else TrainConfig()
    return replace(cfg, **flag_settings(data, **flags))


def flag_settings(
    data: str,
    *,
    budget: str | None = None,
    steps: int | None = None,
    arch: str | None = None,
    patch: int | None = None,
    batch: int | None = None,
    resolution: float | None = None,
    lr: float | None = None,
    val_keys: str | None = None,
    val_fraction: float | None = None,
    out: str | None = None,
    resume: bool = False,
    nproc: int | None = None,
    skip_bad: bool = False,
    seed: int | None = None,
    tensorboard: bool = False,
    progress: bool | None = None,
    postprocess: str | None = None,
    dice_guard: float | None = None,
    calibrate: bool | None = None,
    tta: str | None = None,
    multiscale: str | None = None,
    ensemble: int | None = None,
    distill: str | None = None,
    distill_from: str | Path | None = None,
    precision: str | None = None,
    init: str | None = None,
    pretrained: str | None = None,
    freeze_encoder_steps: int | None = None,
    encoder_lr_ratio: float | None = None,
    encoder: str | None = None,
    track: str | None = None,
) -> dict[str, Any]:
    """The dotted TrainConfig keys the command-line flags set (a preset sets its model fields)."""
    changes: dict[str, Any] = {"data.data": str(data)}
    if nproc is not None:  # not set: the config file's value (or TrainConfig's) holds
        changes["nproc"] = nproc
    if progress is not None:
        changes["progress"] = progress
    if budget is not None:
        changes["budget_seconds"] = parse_duration(budget)
    if steps is not None:
        changes["steps"] = steps
    if arch is not None:
        preset_config(arch)  # refuses unknown names
        changes |= {"model.arch": "unet"} | {f"model.{k}": v for k, v in PRESETS[arch].items()}
    if patch is not None:
        changes["data.patch_size"] = (patch, patch)
    if batch is not None:
        changes["data.batch_size"] = batch
    if resolution is not None:
        changes["data.resolution"] = check_resolution(resolution, "--resolution")
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
    if distill is not None:
        if distill not in DISTILL_MODES:
            raise ConfigError(f"--distill: expected one of {', '.join(DISTILL_MODES)}, got {distill!r}")
        changes["distill.mode"] = distill
    if distill_from is not None:
        if distill == "off":
            raise ConfigError(f"--distill-from {distill_from}: distillation is off (--distill off); drop one of the two")
        changes["distill.teacher_artifact"] = str(distill_from)
    if precision is not None:
        if precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"--precision: expected auto, fp32 or bf16, got {precision!r}")
        changes["precision"] = precision
    passed = {"tune_postprocess": postprocess, "postprocess_dice_guard": dice_guard, "calibrate": calibrate, "tta": tta, "multiscale": multiscale,
              "ensemble_folds": ensemble, "track": track,
              "finetune.init": init and str(init), "finetune.pretrained": pretrained and str(pretrained),
              "finetune.freeze_encoder_steps": freeze_encoder_steps, "finetune.encoder_lr_ratio": encoder_lr_ratio,
              "model.encoder": encoder}  # flags copied as given, when set
    return changes | {key: value for key, value in passed.items() if value is not None}


def explicit_settings(config_file: Path | None, flags: dict[str, Any]) -> dict[str, Any]:
    """Every value the user set: the config file's keys (dotted) then the flags (flags win).

    The auto-planner (`unetkit.planning`) keeps these as they are and plans the rest around them."""
    settings: dict[str, Any] = {}
    if config_file:
        load_json(TrainConfig, config_file)  # strict check first
        settings |= _flatten(json.loads(Path(config_file).read_text()))
    return settings | flags


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and key != "plan":
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
