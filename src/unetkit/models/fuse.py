"""Inference-time graph simplification: fold BatchNorm into the conv before it."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from unetkit.models.blocks import ConvNormAct

_BATCH_NORMS = (nn.BatchNorm2d, nn.BatchNorm3d)


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` in which every conv -> BatchNorm pair is one conv with a bias.

    Outputs equal the original's in eval mode (to float rounding); the original is not changed.
    """
    fused = copy.deepcopy(model).eval()
    for module in list(fused.modules()):
        if isinstance(module, ConvNormAct) and isinstance(module.norm, _BATCH_NORMS):
            module.conv = fuse_conv_bn_eval(module.conv, module.norm)
            module.norm = nn.Identity()
    return fused
