"""UNet++ (Zhou et al., 2018): nested, densely connected skip pathways.

Node X[i][j] sits at level i (1/2**i resolution, widths[i] channels) after j convolution steps
along the skip pathway:

    X[i][0] = encoder block at level i           (X[depth][0] also goes through the bottleneck)
    X[i][j] = block(concat(X[i][0], ..., X[i][j-1], up(X[i+1][j-1])))    for j >= 1

The output is the head on X[0][depth]. With deep supervision (training mode) the list
[head(X[0][depth]), head(X[0][depth-1]), ..., head(X[0][1])] is returned, all at full resolution.
With `attention`, the concatenated same-level skips are gated by the up-sampled node below.
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


class UNetPlusPlus(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_model_config(cfg)
        self.cfg = cfg
        self.depth = cfg.depth
        self.multiple = 2**cfg.depth
        self.deep_supervision = cfg.deep_supervision
        dims = cfg.spatial_dims
        widths = level_widths(cfg)

        def block(cin: int, cout: int) -> ConvBlock:
            return ConvBlock(cin, cout, dims, cfg.norm, cfg.act, cfg.dropout, cfg.residual, cfg.separable)

        self.encoder = nn.ModuleList()  # X[i][0] for i = 0 .. depth
        self.downs = nn.ModuleList()
        cin = cfg.in_channels
        for level in range(cfg.depth + 1):
            self.encoder.append(block(cin, widths[level]))
            if level < cfg.depth:
                self.downs.append(Down(widths[level], dims, cfg.downsample, cfg.norm, cfg.act))
            cin = widths[level]
        self.bottleneck = make_bottleneck(
            cfg.bottleneck, widths[cfg.depth], dims, cfg.norm, cfg.act, cfg.transformer_heads, cfg.transformer_layers
        )

        # nested nodes X[i][j], j >= 1, keyed "i_j"
        self.ups = nn.ModuleDict()
        self.gates = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, cfg.depth + 1):
            for i in range(cfg.depth - j + 1):
                key = f"{i}_{j}"
                self.ups[key] = Up(widths[i + 1], widths[i], dims, cfg.upsample)
                if cfg.attention:
                    self.gates[key] = AttentionGate(j * widths[i], widths[i], dims, cfg.norm)
                self.nodes[key] = block((j + 1) * widths[i], widths[i])

        # heads on X[0][depth] (main), X[0][depth-1], ..., X[0][1]
        n_heads = cfg.depth if cfg.deep_supervision else 1
        self.heads = nn.ModuleList([Head(widths[0], cfg.out_channels, dims) for _ in range(n_heads)])
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = x.shape[2:]
        if self.cfg.input_norm == "image":
            x = standardize(x)
        x = pad_to_multiple(x, self.multiple)

        X: list[list[torch.Tensor]] = []  # X[i] = [X[i][0], X[i][1], ...]
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.downs[level - 1](x)
            x = block(x)
            X.append([x])
        X[self.depth][0] = self.bottleneck(X[self.depth][0])

        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                key = f"{i}_{j}"
                below = self.ups[key](X[i + 1][j - 1])
                skips = torch.cat(X[i][:j], dim=1)
                if self.gates:
                    skips = self.gates[key](skips, below)
                X[i].append(self.nodes[key](torch.cat([skips, below], dim=1)))

        if not (self.deep_supervision and self.training):
            return crop_to(self.heads[0](X[0][self.depth]), size)
        return [crop_to(head(X[0][self.depth - k]), size) for k, head in enumerate(self.heads)]
