"""ImageNet backbones as U-Net encoders: ResNet 18/34/50 and EfficientNet B0-B3, written here in torch.

Their module trees mirror torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, ... for ResNet;
`features.<stage>.<block>.block.<layer>` for EfficientNet), so a torchvision state dict loads by
name and timm's ResNet keys are the same; `unetkit.models.pretrained` maps the rest. Why written
here: torchvision does not import beside this CPU torch wheel and timm depends on it; MONAI's
EfficientNet has its own key layout (and no ResNet in torchvision's), so it would map keys too.

Each encoder returns five feature maps, at 1/2, 1/4, 1/8, 1/16 and 1/32 of the input size, with
`out_channels` channels each; `ENCODERS` maps a name (`config.ENCODERS`) to an `EncoderSpec`.
Why EfficientNet as the efficient family and not ConvNeXt: it has a stride-2 feature (ConvNeXt's
stem is stride 4, so its U-Net has no half-resolution skip) and B0 costs 0.4 GFLOPs at 224 px
against ConvNeXt-tiny's 4.5, which matters on CPUs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from unetkit.catalog import Catalog

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what torchvision's and timm's ImageNet weights expect, in [0, 1] units
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    build: Callable[[int], nn.Module]  # in_channels -> encoder
    out_channels: tuple[int, ...]  # of the five features, 1/2 .. 1/32 resolution
    head_keys: tuple[str, ...]  # key prefixes of the classifier, dropped from ImageNet checkpoints
    mean: tuple[float, ...] = IMAGENET_MEAN  # the normalization pretrained weights expect, [0, 1] units
    std: tuple[float, ...] = IMAGENET_STD


ENCODERS: Catalog[EncoderSpec] = Catalog("encoder")


# ---------------------------------------------------------------- ResNet (He et al., 2016), torchvision layout


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))  # keys downsample.0 (conv), downsample.1 (bn)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 3, stride)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided: torchvision's "v1.5"), 1x1 expand x4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, width * 4, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(cin, width * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetEncoder(nn.Module):
    """stem (7x7 stride 2) -> 1/2 | max-pool -> layer1 -> 1/4 | layer2 -> 1/8 | layer3 -> 1/16 | layer4 -> 1/32"""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int], in_channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, 64, 7, 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if j == 0 and i > 0 else 1))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = (64, *(w * block.expansion for w in (64, 128, 256, 512)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        return [f1, f2, f3, f4, self.layer4(f4)]


def _resnet(name: str, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int]) -> None:
    e = block.expansion
    ENCODERS.register(name)(EncoderSpec(lambda c: ResNetEncoder(block, layers, c),
                                        (64, 64 * e, 128 * e, 256 * e, 512 * e), head_keys=("fc.",)))


_resnet("resnet18", BasicBlock, (2, 2, 2, 2))
_resnet("resnet34", BasicBlock, (3, 4, 6, 3))
_resnet("resnet50", Bottleneck, (3, 4, 6, 3))


# ---------------------------------------------------------------- EfficientNet (Tan & Le, 2019), torchvision layout

# (expand ratio, kernel, stride, input channels, output channels, blocks) of B0's seven stages
B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))
FEATURE_STAGES = (1, 2, 3, 5, 7)  # `features` indices whose outputs are at 1/2, 1/4, 1/8, 1/16, 1/32
STOCHASTIC_DEPTH = 0.2  # torchvision's: the last block drops its residual branch with this probability


def _divisible(v: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of 8, never more than 10 % below `v` (as torchvision's `_make_divisible`)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class ConvBNAct(nn.Sequential):
    """keys .0 (conv), .1 (BatchNorm); SiLU unless `act` is False."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), *([nn.SiLU(inplace=True)] if act else []))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * scale


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand] -> depthwise kxk -> squeeze-excitation -> 1x1 project (+ input)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop: float) -> None:
        super().__init__()
        hidden = _divisible(cin * expand)
        layers: list[nn.Module] = [ConvBNAct(cin, hidden, 1)] if hidden != cin else []
        layers += [ConvBNAct(hidden, hidden, kernel, stride, groups=hidden),
                   SqueezeExcitation(hidden, max(1, cin // 4)), ConvBNAct(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if not self.residual:
            return y
        if self.training and self.drop > 0:  # stochastic depth, per sample
            keep = torch.rand((y.shape[0], 1, 1, 1), device=y.device) >= self.drop
            y = y * keep.to(y.dtype) / (1.0 - self.drop)
        return y + x


class EfficientNetEncoder(nn.Module):
    """stem (3x3 stride 2) -> stages 1..7; features after stages 1, 2, 3, 5, 7 (1/2 .. 1/32)."""

    def __init__(self, width: float, depth: float, in_channels: int) -> None:
        super().__init__()
        stages = [(e, k, s, _divisible(ci * width), _divisible(co * width), int(math.ceil(n * depth)))
                  for e, k, s, ci, co, n in B0_STAGES]
        total = sum(st[-1] for st in stages)
        features: list[nn.Module] = [ConvBNAct(in_channels, stages[0][3], 3, 2)]
        done = 0
        for expand, kernel, stride, cin, cout, n in stages:
            blocks = []
            for j in range(n):
                blocks.append(MBConv(cin if j == 0 else cout, cout, expand, kernel, stride if j == 0 else 1,
                                     STOCHASTIC_DEPTH * done / total))
                done += 1
            features.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*features)
        self.out_channels = tuple(stages[i - 1][4] for i in FEATURE_STAGES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, stage in enumerate(self.features):
            if i > FEATURE_STAGES[-1]:
                break
            x = stage(x)
            if i in FEATURE_STAGES:
                out.append(x)
        return out


def _efficientnet(name: str, width: float, depth: float) -> None:
    channels = tuple(_divisible(B0_STAGES[i - 1][4] * width) for i in FEATURE_STAGES)
    # features.8 (the 1x1 conv to 1280 channels) and the classifier serve ImageNet classification only
    ENCODERS.register(name)(EncoderSpec(lambda c: EfficientNetEncoder(width, depth, c), channels,
                                        head_keys=("features.8.", "classifier.")))


_efficientnet("efficientnet-b0", 1.0, 1.0)
_efficientnet("efficientnet-b1", 1.0, 1.1)
_efficientnet("efficientnet-b2", 1.1, 1.2)
_efficientnet("efficientnet-b3", 1.2, 1.4)
