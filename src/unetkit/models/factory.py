"""Architecture catalog, `build_model`, and named presets (each preset is a set of ModelConfig values)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unetkit.catalog import Catalog
from unetkit.config import ModelConfig, replace
from unetkit.errors import ConfigError
from unetkit.models.ensemble import Ensemble
from unetkit.models.flops import count_flops, count_parameters
from unetkit.models.layout import check_model_config
from unetkit.models.unet import UNet
from unetkit.models.unetpp import UNetPlusPlus

MODELS: Catalog[Callable[[ModelConfig], nn.Module]] = Catalog("architecture")


@MODELS.register("unet")
def _build_unet(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg)


@MODELS.register("unet++")
def _build_unetpp(cfg: ModelConfig) -> nn.Module:
    return UNetPlusPlus(cfg)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network `cfg.arch` names, with freshly initialized weights, in training mode; with
    `cfg.ensemble` > 1 an `Ensemble` of that many such networks (their averaged probabilities)."""
    check_model_config(cfg)
    if cfg.ensemble > 1:
        member = replace(cfg, ensemble=1)
        return Ensemble([MODELS.get(cfg.arch)(member) for _ in range(cfg.ensemble)])
    return MODELS.get(cfg.arch)(cfg)


PRESETS: dict[str, dict[str, Any]] = {
    "unet": {},
    "attention-unet": {"attention": True},
    "residual-unet": {"residual": True},
    "mobile-unet": {"separable": True, "upsample": "bilinear"},
    "transformer-unet": {"bottleneck": "transformer", "transformer_heads": 8, "transformer_layers": 2},
    "aspp-unet": {"bottleneck": "aspp"},
    "unet++": {"arch": "unet++"},
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """ModelConfig of preset `name`, then `overrides` (any ModelConfig field, strictly checked)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return replace(ModelConfig(), **(PRESETS[name] | overrides))


def models_table(in_channels: int = 3, out_channels: int = 2, size: int = 512) -> list[dict[str, Any]]:
    """One row per preset: name, arch, parameter count and GFLOPs of one size x size forward pass.

    Models are built on the meta device, so the table costs no compute."""
    rows = []
    for name in PRESETS:
        cfg = preset_config(name, in_channels=in_channels, out_channels=out_channels)
        with torch.device("meta"):
            model = build_model(cfg)
        rows.append(
            {
                "name": name,
                "arch": cfg.arch,
                "params": count_parameters(model),
                "gflops": count_flops(model, (in_channels, size, size)) / 1e9,
            }
        )
    return rows
