"""Model size and cost: parameter count and FLOPs (2 x multiply-adds) of one forward pass."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> float:
    """FLOPs of one eval-mode forward pass on one input of shape (C, H, W) or (C, D, H, W).

    Counted by torch's FlopCounterMode: convolutions, matmuls and attention, FLOPs = 2 x MACs
    (norms, activations and pooling are not counted). Runs a copy of the model on the meta device:
    no compute, any size, and the same count whatever device the model is on.
    """
    meta = copy.deepcopy(model).to("meta").eval()
    x = torch.zeros((1, *input_shape), device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(x)
    return float(counter.get_total_flops())
