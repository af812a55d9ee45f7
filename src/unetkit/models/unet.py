"""U-Net (Ronneberger et al., 2015) and its common variants, chosen by ModelConfig values:
attention gates, residual or depthwise-separable blocks, ASPP / pyramid-pooling / transformer
bottleneck, deep supervision, 2D or 3D.

    pad -> encoder (block, down) x depth -> bottom block -> bottleneck
        -> decoder (up, [gate skip], concat, block) x depth -> 1x1 head -> crop
"""

from __future__ import annotations

import torch
from torch import nn

from unetkit.config import ModelConfig
from unetkit.models.blocks import (
    AttentionGate,
    ConvBlock,
    Down,
    Head,
    Up,
    crop_to,
    init_weights,
    pad_to_multiple,
    standardize,
)
from unetkit.models.bottlenecks import make_bottleneck
from unetkit.models.layout import check_model_config, level_widths


class UNet(nn.Module):
    """Input (N, in_channels, *spatial) of any size; output logits (N, out_channels, *spatial).

    With `deep_supervision` and in training mode the output is a list [main, aux1, ...]: aux k is
    predicted from decoder level k (1/2**k resolution) and resized to the input size.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_model_config(cfg)
        self.cfg = cfg
        self.multiple = 2**cfg.depth
        self.deep_supervision = cfg.deep_supervision
        dims = cfg.spatial_dims
        widths = level_widths(cfg)

        def block(cin: int, cout: int) -> ConvBlock:
            return ConvBlock(cin, cout, dims, cfg.norm, cfg.act, cfg.dropout, cfg.residual, cfg.separable)

        # encoder: level i holds widths[i] channels at 1/2**i resolution
        self.encoder = nn.ModuleList()
        self.downs = nn.ModuleList()
        cin = cfg.in_channels
        for level in range(cfg.depth):
            self.encoder.append(block(cin, widths[level]))
            self.downs.append(Down(widths[level], dims, cfg.downsample, cfg.norm, cfg.act))
            cin = widths[level]
        self.bottom = block(widths[cfg.depth - 1], widths[cfg.depth])
        self.bottleneck = make_bottleneck(
            cfg.bottleneck, widths[cfg.depth], dims, cfg.norm, cfg.act, cfg.transformer_heads, cfg.transformer_layers
        )

        # decoder: from the deepest level up to level 0
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(cfg.depth)):
            self.ups.append(Up(widths[level + 1], widths[level], dims, cfg.upsample))
            if cfg.attention:
                self.gates.append(AttentionGate(widths[level], widths[level], dims, cfg.norm))
            self.decoder.append(block(2 * widths[level], widths[level]))

        self.head = Head(widths[0], cfg.out_channels, dims)
        # aux heads on decoder levels 1 .. depth-1 (finest first)
        self.aux_heads = nn.ModuleList(
            [Head(widths[level], cfg.out_channels, dims) for level in range(1, cfg.depth)] if cfg.deep_supervision else []
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = x.shape[2:]
        if self.cfg.input_norm == "image":
            x = standardize(x)
        x = pad_to_multiple(x, self.multiple)
        padded_size = x.shape[2:]

        skips = []
        for block, down in zip(self.encoder, self.downs, strict=True):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(self.bottom(x))

        features = []  # decoder outputs, deepest first
        for i, (up, block) in enumerate(zip(self.ups, self.decoder, strict=True)):
            x = up(x)
            skip = skips[-1 - i]
            if self.gates:
                skip = self.gates[i](skip, x)
            x = block(torch.cat([skip, x], dim=1))
            features.append(x)

        logits = crop_to(self.head(x), size)
        if not (self.deep_supervision and self.training):
            return logits
        finest_first = features[-2::-1]  # decoder levels 1, 2, ..., depth-1
        aux = [crop_to(head(f, padded_size), size) for head, f in zip(self.aux_heads, finest_first, strict=True)]
        return [logits, *aux]
