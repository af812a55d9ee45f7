"""What a ModelConfig means for the network's shape: config checks and channel widths per level."""

from __future__ import annotations

from unetkit.config import ENCODERS, ModelConfig
from unetkit.errors import ConfigError


def level_widths(cfg: ModelConfig) -> list[int]:
    """Channels at levels 0..depth: base_width * width_mult**level, capped at max_width."""
    return [min(cfg.max_width, max(1, round(cfg.base_width * cfg.width_mult**level))) for level in range(cfg.depth + 1)]


def check_model_config(cfg: ModelConfig) -> None:
    """Refuse combinations no network can be built from, naming the field."""
    if not isinstance(cfg, ModelConfig):
        raise ConfigError(f"model: expected a ModelConfig, got {type(cfg).__name__}")
    positive = {
        "model.in_channels": cfg.in_channels,
        "model.out_channels": cfg.out_channels,
        "model.depth": cfg.depth,
        "model.base_width": cfg.base_width,
        "model.max_width": cfg.max_width,
        "model.ensemble": cfg.ensemble,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name}: expected an integer >= 1, got {value}")
    if cfg.spatial_dims not in (2, 3):
        raise ConfigError(f"model.spatial_dims: expected 2 or 3, got {cfg.spatial_dims}")
    if cfg.width_mult <= 0:
        raise ConfigError(f"model.width_mult: expected a number > 0, got {cfg.width_mult}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model.dropout: expected a probability in [0, 1), got {cfg.dropout}")
    if cfg.encoder != "unet":
        check_backbone_config(cfg)
    if cfg.bottleneck == "transformer":
        if cfg.transformer_layers < 1:
            raise ConfigError(f"model.transformer_layers: expected an integer >= 1, got {cfg.transformer_layers}")
        if cfg.transformer_heads < 1:
            raise ConfigError(f"model.transformer_heads: expected an integer >= 1, got {cfg.transformer_heads}")
        deepest = level_widths(cfg)[-1]
        if deepest % cfg.transformer_heads:
            raise ConfigError(
                f"model.transformer_heads: {cfg.transformer_heads} heads do not divide the {deepest} channels "
                f"of the deepest level; choose a divisor of {deepest} or change base_width/max_width"
            )


def check_backbone_config(cfg: ModelConfig) -> None:
    """An ImageNet-backbone encoder (`model.encoder`): a 2D U-Net without the built-in encoder's options."""
    if cfg.encoder not in ENCODERS:
        raise ConfigError(f"model.encoder: unknown encoder '{cfg.encoder}'; choose one of: {', '.join(ENCODERS)}")
    if cfg.arch != "unet":
        raise ConfigError(f"model.encoder '{cfg.encoder}': backbone encoders build arch 'unet', got arch '{cfg.arch}'")
    if cfg.spatial_dims != 2:
        raise ConfigError(f"model.encoder '{cfg.encoder}': a 2D backbone; model.spatial_dims must be 2, got {cfg.spatial_dims}")
    unsupported = {"attention": cfg.attention, "residual": cfg.residual, "separable": cfg.separable,
                   "deep_supervision": cfg.deep_supervision, "bottleneck": cfg.bottleneck != "none",
                   "downsample": cfg.downsample != "maxpool"}
    for name, on in unsupported.items():
        if on:
            raise ConfigError(f"model.{name}: an option of the built-in encoder (model.encoder 'unet'), "
                              f"not of the '{cfg.encoder}' backbone; leave it at its default")
