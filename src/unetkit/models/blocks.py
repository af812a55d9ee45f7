"""Small building blocks of the U-Net family, for 2D and 3D (`dims`).

Every convolution is a `ConvNormAct` whose `.conv` is followed directly by `.norm`, so
`fuse_for_inference` can fold BatchNorm into the conv. Defaults are plain Conv/BN/ReLU: they fold
at export and run at close to the conv peak on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
DROPOUT = {2: nn.Dropout2d, 3: nn.Dropout3d}
RESIZE_MODE = {2: "bilinear", 3: "trilinear"}


def group_count(channels: int) -> int:
    """GroupNorm groups: the largest of 32, 16, 8, 4, 2 dividing `channels` with >= 4 channels each."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that also normalizes a single-pixel map (the deepest level of a tiny input) instead of
    refusing it; there the output is the bias, as the statistics of one value are trivial."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous() \
                and x.is_contiguous(memory_format=torch.channels_last):
            # torch's CPU group_norm on a channels_last tensor is 2-5x slower than on a contiguous copy
            # (w16 d4 InstanceNorm training step, bf16 + channels_last: 466 -> 217 ms, docs/benchmarks.md)
            out = torch.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
            return out.contiguous(memory_format=torch.channels_last)
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def make_norm(kind: str, channels: int, dims: int) -> nn.Module:
    if kind == "batch":
        return BATCH_NORM[dims](channels)
    if kind == "group":
        return GroupNorm(group_count(channels), channels)
    if kind == "instance":  # affine instance norm = one channel per group
        return GroupNorm(channels, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}'")


def make_act(kind: str) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    if kind == "gelu":
        return nn.GELU()
    if kind == "silu":
        return nn.SiLU(inplace=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation '{kind}'")


def make_dropout(p: float, dims: int) -> nn.Module:
    return DROPOUT[dims](p) if p > 0 else nn.Identity()


class ConvNormAct(nn.Module):
    """conv -> norm -> act. `separable`: a depthwise conv first, `.conv` then is the 1x1 pointwise."""

    def __init__(
        self, cin: int, cout: int, dims: int, norm: str, act: str,
        kernel: int = 3, dilation: int = 1, stride: int = 1, separable: bool = False,
    ) -> None:
        super().__init__()
        pad = dilation * (kernel - 1) // 2
        if separable and kernel > 1:
            self.depthwise: nn.Module = CONV[dims](
                cin, cin, kernel, stride=stride, padding=pad, dilation=dilation, groups=cin, bias=False
            )
            self.conv = CONV[dims](cin, cout, 1, bias=norm == "none")
        else:
            self.depthwise = nn.Identity()
            self.conv = CONV[dims](cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, bias=norm == "none")
        self.norm = make_norm(norm, cout, dims)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.depthwise(x))))


class ConvBlock(nn.Module):
    """Two 3x3 conv-norm-act layers (dropout between them); `residual` adds a (projected) shortcut."""

    def __init__(
        self, cin: int, cout: int, dims: int, norm: str = "batch", act: str = "relu",
        dropout: float = 0.0, residual: bool = False, separable: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(cin, cout, dims, norm, act, separable=separable)
        self.dropout = make_dropout(dropout, dims)
        self.conv2 = ConvNormAct(cout, cout, dims, norm, "none" if residual else act, separable=separable)
        self.residual = residual
        if residual:
            self.shortcut: nn.Module = nn.Identity() if cin == cout else ConvNormAct(cin, cout, dims, norm, "none", kernel=1)
            self.out_act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.dropout(self.conv1(x)))
        if self.residual:
            y = self.out_act(y + self.shortcut(x))
        return y


class Down(nn.Module):
    """Halve every spatial size: 2x2 max-pool, or a strided 2x2 conv-norm-act (`strided`)."""

    def __init__(self, channels: int, dims: int, mode: str = "maxpool", norm: str = "batch", act: str = "relu") -> None:
        super().__init__()
        if mode == "maxpool":
            self.op: nn.Module = MAX_POOL[dims](2)
        elif mode == "strided":
            self.op = ConvNormAct(channels, channels, dims, norm, act, kernel=2, stride=2)
        else:
            raise ValueError(f"unknown downsample '{mode}'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Up(nn.Module):
    """Double every spatial size: a 2x2 transposed conv, or (`bilinear`) a linear resize then a 1x1 conv,
    which avoids the checkerboard artifacts of transposed convs."""

    def __init__(self, cin: int, cout: int, dims: int, mode: str = "transpose") -> None:
        super().__init__()
        self.mode = mode
        if mode == "transpose":
            self.conv: nn.Module = CONV_T[dims](cin, cout, 2, stride=2)
        elif mode == "bilinear":
            self.conv = CONV[dims](cin, cout, 1)
        else:
            raise ValueError(f"unknown upsample '{mode}'")
        self.resize_mode = RESIZE_MODE[dims]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "transpose":
            return self.conv(x)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode=self.resize_mode, align_corners=False))


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al., Attention U-Net, 2018).

    `gate` is the up-sampled decoder feature at the skip's resolution; the skip is multiplied by a
    per-pixel coefficient in (0, 1) computed from both.
    """

    def __init__(self, skip_channels: int, gate_channels: int, dims: int, norm: str = "batch") -> None:
        super().__init__()
        inter = max(1, skip_channels // 2)
        self.theta_x = ConvNormAct(skip_channels, inter, dims, norm, "none", kernel=1)
        self.phi_g = ConvNormAct(gate_channels, inter, dims, norm, "none", kernel=1)
        self.act = nn.ReLU(inplace=True)
        self.psi = CONV[dims](inter, 1, 1)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(self.act(self.theta_x(skip) + self.phi_g(gate))))
        return skip * alpha


class Head(nn.Module):
    """1x1 conv to class logits; given `size` (deep supervision), resized linearly up to it."""

    def __init__(self, cin: int, classes: int, dims: int) -> None:
        super().__init__()
        self.conv = CONV[dims](cin, classes, 1)
        self.resize_mode = RESIZE_MODE[dims]

    def forward(self, x: torch.Tensor, size: list[int] | None = None) -> torch.Tensor:
        logits = self.conv(x)
        if size is not None:
            logits = F.interpolate(logits, size=size, mode=self.resize_mode, align_corners=False)
        return logits


STD_FLOOR = 0.1  # in data-set standard deviations: a flat tile's noise is not blown up to unit variance


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Each sample's channels to zero mean and unit standard deviation over its own pixels
    (`ModelConfig.input_norm` "image"); a standard deviation under STD_FLOOR counts as STD_FLOOR."""
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), correction=0, keepdim=True)
    return (x - mean) / var.sqrt().clamp_min(STD_FLOOR)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad the spatial dims at their end up to a multiple of `multiple` (a no-op amount when already
    one). Zero padding works for any size, even one smaller than the pad, matches what the convs do
    at borders, and exports to ONNX with dynamic sizes; inputs are normalized, so 0 is the mean."""
    pads: list[int] = []
    for size in reversed(x.shape[2:]):
        pads += [0, (-size) % multiple]
    return F.pad(x, pads)


def crop_to(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if len(size) == 2:
        return x[:, :, : size[0], : size[1]]
    return x[:, :, : size[0], : size[1], : size[2]]


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU gain), zero biases, unit norm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
