"""Architecture catalog, `build_model`, and named presets (each preset is a set of ModelConfig values)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unetkit.catalog import Catalog
from unetkit.config import ModelConfig, replace
from unetkit.errors import ConfigError
from unetkit.models.encoder_unet import EncoderUNet
from unetkit.models.ensemble import Ensemble
from unetkit.models.flops import count_flops, count_parameters
from unetkit.models.layout import check_model_config
from unetkit.models.plugins import plugin_builder
from unetkit.models.unet import UNet
from unetkit.models.unetpp import UNetPlusPlus

MODELS: Catalog[Callable[[ModelConfig], nn.Module]] = Catalog("architecture")


@MODELS.register("unet")
def _build_unet(cfg: ModelConfig) -> nn.Module:
    return UNet(cfg) if cfg.encoder == "unet" else EncoderUNet(cfg)


@MODELS.register("unet++")
def _build_unetpp(cfg: ModelConfig) -> nn.Module:
    return UNetPlusPlus(cfg)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network `cfg.arch` names (built in, or a plugin's: `unetkit.models.plugins`), with freshly
    initialized weights, in training mode; with `cfg.ensemble` > 1 an `Ensemble` of that many such
    networks (their averaged probabilities)."""
    check_model_config(cfg)
    if cfg.options and cfg.arch in MODELS:
        raise ConfigError(f"model.options: keyword values of a plugin architecture's builder; the built-in "
                          f"'{cfg.arch}' takes none (got {sorted(cfg.options)})")
    if cfg.input_norm != "none" and cfg.arch not in MODELS:
        raise ConfigError(f"model.input_norm: '{cfg.input_norm}' is applied inside the built-in architectures "
                          f"({', '.join(MODELS.names())}); plugin '{cfg.arch}' takes 'none'")
    builder = architecture_builder(cfg.arch)
    if cfg.ensemble > 1:
        member = replace(cfg, ensemble=1)
        return Ensemble([builder(member) for _ in range(cfg.ensemble)])
    return builder(cfg)


def architecture_builder(arch: str) -> Callable[[ModelConfig], nn.Module]:
    """The builder of a built-in architecture, else of the installed plugin of that name."""
    return MODELS.get(arch) if arch in MODELS else plugin_builder(arch, MODELS.names())


PLUGIN_SIZE_MULTIPLE = 32  # a plugin network without `size_multiple`: inputs padded to this (5 halvings)


def input_multiple(cfg: ModelConfig, net: nn.Module) -> int:
    """What the input's height and width must be a multiple of, padded by the inference pipeline: 1 for
    the built-in architectures (they pad inside), a plugin network's `size_multiple` attribute (e.g. 16
    for a U-Net with four halvings), else PLUGIN_SIZE_MULTIPLE. Padding is zeros after normalization
    (the mean), cropped off the logits, as the built-in networks do."""
    if cfg.arch in MODELS:
        return 1
    return max(1, int(getattr(net, "size_multiple", PLUGIN_SIZE_MULTIPLE)))


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
