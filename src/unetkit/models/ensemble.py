"""An ensemble of same-architecture members (k-fold ensembling, plan rule R12) as one network.

The output is the log of the members' mean softmax probabilities: a valid logit tensor whose
softmax is exactly the averaged probabilities, so everything downstream of a network (temperature
scaling, tiling, TTA, ONNX export, serving) treats an ensemble like any single model.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(m(x), dim=1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


def member_prefix(i: int) -> str:
    """State-dict key prefix of member `i` inside an Ensemble."""
    return f"members.{i}."


def ensemble_state(members: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One Ensemble state dict from the members' own state dicts."""
    return {member_prefix(i) + k: v for i, state in enumerate(members) for k, v in state.items()}
