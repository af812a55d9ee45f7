"""A U-Net on an ImageNet backbone (smp's Unet layout): `ModelConfig.encoder` names the backbone.

    pad to 32 -> encoder: features f1 (1/2) .. f5 (1/32)
        -> decoder: x = f5; for f4, f3, f2, f1, then none: upsample x2, concat the skip, conv block
        -> 1x1 head (full resolution) -> crop

Decoder level k (1/2**k resolution) has `base_width * width_mult**k` channels, capped at
`max_width` (`level_widths` with the backbone's five levels), so the decoder's cost follows the
same fields as the built-in U-Net's. The encoder is `self.encoder` (its state dict is the
backbone's, torchvision layout, under the prefix `encoder.`; see `unetkit.models.pretrained`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from unetkit.config import ModelConfig
from unetkit.models.blocks import ConvBlock, Head, crop_to, init_weights, pad_to_multiple, standardize
from unetkit.models.encoders import ENCODERS
from unetkit.models.layout import level_widths

LEVELS = 5  # every backbone here has five stride-2 steps


class EncoderUNet(nn.Module):
    """Input (N, in_channels, H, W) of any size; output logits (N, out_channels, H, W)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        spec = ENCODERS.get(cfg.encoder)
        self.encoder = spec.build(cfg.in_channels)
        widths = level_widths(dataclasses.replace(cfg, depth=LEVELS))  # decoder channels per level 0..5
        skips = (*spec.out_channels[:-1][::-1], 0)  # f4, f3, f2, f1, none
        self.decoder = nn.ModuleList()
        cin = spec.out_channels[-1]
        for level, skip in zip(range(LEVELS - 1, -1, -1), skips, strict=True):
            self.decoder.append(ConvBlock(cin + skip, widths[level], 2, cfg.norm, cfg.act, cfg.dropout))
            cin = widths[level]
        self.head = Head(widths[0], cfg.out_channels, 2)
        init_weights(self.decoder)
        init_weights(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        if self.cfg.input_norm == "image":
            x = standardize(x)
        features = self.encoder(pad_to_multiple(x, 2**LEVELS))
        x = features[-1]
        skips = [*features[-2::-1], None]
        for block, skip in zip(self.decoder, skips, strict=True):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x if skip is None else torch.cat([x, skip], dim=1))
        return crop_to(self.head(x), size)
