"""`SegmentationLoss`: the configured weighted sum of the functional losses.

total = sum over terms t with weight w_t != 0 of w_t * L_t (default: Dice + CE).

Deep supervision: `outputs` may be the list `[main, aux1, aux2, ...]` of logits. Head k gets the
weight decay**k / sum_j decay**j (main first). Heads at a lower resolution than the labels are
compared with nearest-neighbour-downsampled labels (ignore_index survives).

After each call, `last_terms` holds the unweighted value of each term (summed over heads with the
deep-supervision weights) and the total, as Python floats for logging:
total == sum_t w_t * last_terms[t].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unetkit.config import LossConfig
from unetkit.losses import functional as LF


def deep_supervision_weights(n_heads: int, decay: float) -> list[float]:
    """decay**k for k = 0..n_heads-1, normalized to sum to 1 (main head first)."""
    if n_heads < 1:
        raise ValueError("deep supervision needs at least one output")
    raw = [decay**k for k in range(n_heads)]
    total = sum(raw)
    return [r / total for r in raw]


def _labels_at(labels: Tensor, spatial: Sequence[int]) -> Tensor:
    if tuple(labels.shape[1:]) == tuple(spatial):
        return labels
    down = F.interpolate(labels.unsqueeze(1).float(), size=tuple(spatial), mode="nearest")
    return down.squeeze(1).to(labels.dtype)


class SegmentationLoss(nn.Module):
    """Weighted sum of CE, Dice, focal, Tversky and clDice terms as set in `LossConfig`."""

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        weight = c.class_weights or None
        all_terms: dict[str, tuple[float, Callable[[Tensor, Tensor], Tensor]]] = {
            "ce": (c.ce, lambda x, y: LF.cross_entropy(x, y, weight=weight, ignore_index=c.ignore_index)),
            "dice": (
                c.dice,
                lambda x, y: LF.soft_dice_loss(
                    x, y, include_background=c.dice_include_background, ignore_index=c.ignore_index
                ),
            ),
            "focal": (
                c.focal,
                lambda x, y: LF.focal_loss(x, y, gamma=c.focal_gamma, ignore_index=c.ignore_index),
            ),
            "tversky": (
                c.tversky,
                lambda x, y: LF.tversky_loss(
                    x,
                    y,
                    alpha=c.tversky_alpha,
                    beta=c.tversky_beta,
                    include_background=c.dice_include_background,
                    ignore_index=c.ignore_index,
                ),
            ),
            "cldice": (c.cldice, lambda x, y: LF.cldice_loss(x, y, ignore_index=c.ignore_index)),
        }
        self.terms = {name: wf for name, wf in all_terms.items() if wf[0] != 0.0}
        if not self.terms:
            raise ValueError(
                "LossConfig: every term has weight 0; set at least one of ce, dice, focal, tversky, cldice"
            )
        self._last: dict[str, Tensor] = {}

    @property
    def last_terms(self) -> dict[str, float]:
        """Unweighted term values of the last call and the total (floats; read lazily so logging
        only synchronizes with the GPU when it happens)."""
        return {name: float(v) for name, v in self._last.items()}

    def forward(self, outputs: Tensor | Sequence[Tensor], labels: Tensor) -> Tensor:
        heads = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        head_weights = deep_supervision_weights(len(heads), self.config.deep_supervision_decay)
        per_term: dict[str, Tensor] = {}
        for hw, logits in zip(head_weights, heads, strict=True):
            y = _labels_at(labels, logits.shape[2:])
            for name, (_, fn) in self.terms.items():
                value = hw * fn(logits, y)
                per_term[name] = per_term[name] + value if name in per_term else value
        total = torch.zeros((), device=heads[0].device)
        for name, (w, _) in self.terms.items():
            total = total + w * per_term[name]
        self._last = {name: v.detach() for name, v in per_term.items()} | {"total": total.detach()}
        return total
