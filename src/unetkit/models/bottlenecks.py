"""Context modules for the deepest feature map: ASPP, pyramid pooling and a transformer.

Each maps (N, C, *spatial) to the same shape, works for any spatial size (down to 1 pixel) and
exports to ONNX with dynamic sizes: pooling windows are computed from the runtime size, not baked in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unetkit.models.blocks import CONV, RESIZE_MODE, ConvNormAct, make_act


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): a 1x1 conv, 3x3 convs at `rates` and the global
    mean, concatenated and projected back to `channels`."""

    def __init__(self, channels: int, dims: int, norm: str, act: str, rates: tuple[int, ...] = (2, 4, 6)) -> None:
        super().__init__()
        branch = max(1, channels // 4)
        self.branches = nn.ModuleList([ConvNormAct(channels, branch, dims, norm, act, kernel=1)])
        for rate in rates:
            self.branches.append(ConvNormAct(channels, branch, dims, norm, act, kernel=3, dilation=rate))
        # No norm on the pooled branch: one value per channel cannot be batch-normalized at batch size 1.
        self.pool_conv = CONV[dims](channels, branch, 1)
        self.pool_act = make_act(act)
        self.project = ConvNormAct(branch * (len(rates) + 2), channels, dims, norm, act, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, x.dim()))
        pooled = self.pool_act(self.pool_conv(x.mean(dim=spatial, keepdim=True)))
        outs = [branch(x) for branch in self.branches]
        outs.append(pooled.expand(-1, -1, *x.shape[2:]))
        return self.project(torch.cat(outs, dim=1))


def adaptive_pool_matrix(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins, size) averaging matrix with adaptive_avg_pool's windows [floor(i*S/b), ceil((i+1)*S/b)).

    Built from the runtime size so an ONNX export pools correctly at every input size
    (`adaptive_avg_pool` itself is exported with the windows of the traced size)."""
    index = torch.arange(size, device=like.device)
    i = torch.arange(bins, device=like.device)
    start = (i * size) // bins
    end = ((i + 1) * size + bins - 1) // bins
    inside = (index[None, :] >= start[:, None]) & (index[None, :] < end[:, None])
    weights = inside.to(like.dtype)
    return weights / weights.sum(dim=1, keepdim=True)


class PyramidPooling(nn.Module):
    """Pyramid pooling module (PSPNet): average over bins x bins grids, 1x1 conv, resize back, concat
    with the input and fuse with a 3x3 conv."""

    def __init__(self, channels: int, dims: int, norm: str, act: str, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = bins
        branch = max(1, channels // len(bins))
        # No norm in the branches: a 1x1 pooled map cannot be batch-normalized at batch size 1.
        self.branches = nn.ModuleList([ConvNormAct(channels, branch, dims, "none", act, kernel=1) for _ in bins])
        self.fuse = ConvNormAct(channels + branch * len(bins), channels, dims, norm, act, kernel=3)
        self.resize_mode = RESIZE_MODE[dims]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for bins, branch in zip(self.bins, self.branches, strict=True):
            pooled = x
            if x.dim() == 5:  # pool depth: (bins, D) @ (N, C, D, H*W)
                n, c, d, h, w = x.shape
                pooled = (adaptive_pool_matrix(d, bins, x) @ x.reshape(n, c, d, h * w)).reshape(n, c, bins, h, w)
            rows = adaptive_pool_matrix(x.shape[-2], bins, x)
            cols = adaptive_pool_matrix(x.shape[-1], bins, x)
            pooled = rows @ pooled @ cols.T
            outs.append(F.interpolate(branch(pooled), size=x.shape[2:], mode=self.resize_mode, align_corners=False))
        return self.fuse(torch.cat(outs, dim=1))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # (n, heads, tokens, head_dim)
        return self.proj(y.transpose(1, 2).reshape(n, tokens, dim))


class TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerBottleneck(nn.Module):
    """Self-attention over every position of the deepest feature map (TransUNet-style).

    Position comes from a convolutional positional encoding (a residual depthwise 3x3 conv, as in
    CPVT): it works for any feature-map size with no table to interpolate.
    """

    def __init__(self, channels: int, dims: int, heads: int, layers: int) -> None:
        super().__init__()
        self.pos = CONV[dims](channels, channels, 3, padding=1, groups=channels)
        self.layers = nn.ModuleList([TransformerLayer(channels, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(channels)
        for m in self.modules():  # ViT-style init: small normal linear weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        shape = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, positions, C)
        for layer in self.layers:
            tokens = layer(tokens)
        tokens = self.ln(tokens)
        return tokens.transpose(1, 2).reshape(shape)


def make_bottleneck(kind: str, channels: int, dims: int, norm: str, act: str, heads: int, layers: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "aspp":
        return ASPP(channels, dims, norm, act)
    if kind == "ppm":
        return PyramidPooling(channels, dims, norm, act)
    if kind == "transformer":
        return TransformerBottleneck(channels, dims, heads, layers)
    raise ValueError(f"unknown bottleneck '{kind}'")

