"""`LOSSES`, the catalog of loss terms, and `SegmentationLoss`, their configured weighted sum.

A loss is one builder registered in `LOSSES`: it takes the `LossConfig` and returns
`term(logits, labels) -> scalar tensor` (the math lives in `functional.py`). Its weight is the
`LossConfig` field of the same name (config is the foundation and cannot import this catalog; a test
checks that every registered loss has its weight field).

total = sum over terms t with weight w_t != 0 of w_t * L_t (default: Dice + CE).

Deep supervision: `outputs` may be the list `[main, aux1, aux2, ...]` of logits. Head k gets the
weight decay**k / sum_j decay**j (main first). Heads at a lower resolution than the labels are
compared with nearest-neighbour-downsampled labels (ignore_index survives).

After each call, `last_terms` holds the unweighted value of each term (summed over heads with the
deep-supervision weights) and the total, as Python floats for logging:
total == sum_t w_t * last_terms[t].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unetkit.catalog import Catalog
from unetkit.config import DistillConfig, LossConfig
from unetkit.losses import functional as LF

Term = Callable[[Tensor, Tensor], Tensor]
LOSSES: Catalog[Callable[[LossConfig], Term]] = Catalog("loss")


@LOSSES.register("ce")
def _ce(c: LossConfig) -> Term:
    weight = c.class_weights or None
    return lambda x, y: LF.cross_entropy(x, y, weight=weight, ignore_index=c.ignore_index)


@LOSSES.register("dice")
def _dice(c: LossConfig) -> Term:
    return lambda x, y: LF.soft_dice_loss(x, y, include_background=c.dice_include_background,
                                          ignore_index=c.ignore_index)


@LOSSES.register("focal")
def _focal(c: LossConfig) -> Term:
    return lambda x, y: LF.focal_loss(x, y, gamma=c.focal_gamma, ignore_index=c.ignore_index)


@LOSSES.register("tversky")
def _tversky(c: LossConfig) -> Term:
    return lambda x, y: LF.tversky_loss(x, y, alpha=c.tversky_alpha, beta=c.tversky_beta,
                                        include_background=c.dice_include_background,
                                        ignore_index=c.ignore_index)


@LOSSES.register("lovasz")
def _lovasz(c: LossConfig) -> Term:
    return lambda x, y: LF.lovasz_softmax_loss(x, y, include_background=c.dice_include_background,
                                               ignore_index=c.ignore_index, sample=c.lovasz_sample)


@LOSSES.register("cldice")
def _cldice(c: LossConfig) -> Term:
    return lambda x, y: LF.cldice_loss(x, y, ignore_index=c.ignore_index)


def term_weights(config: LossConfig) -> dict[str, float]:
    """The weight of every registered loss (its LossConfig field), in the order of the fields (so the
    terms are always summed in one order)."""
    fields = [f.name for f in dataclasses.fields(config)]
    missing = [name for name in LOSSES if name not in fields]
    if missing:
        raise TypeError(f"loss {missing[0]!r} is registered but LossConfig has no weight field of that name")
    return {name: getattr(config, name) for name in fields if name in LOSSES}


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
    """Weighted sum of the `LOSSES` terms whose `LossConfig` weight is not 0."""

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config
        self.terms: dict[str, tuple[float, Term]] = {
            name: (w, LOSSES.get(name)(config)) for name, w in term_weights(config).items() if w != 0.0
        }
        if not self.terms:
            raise ValueError(f"LossConfig: every term has weight 0; set at least one of {', '.join(LOSSES)}")
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


class DistillationLoss(nn.Module):
    """(1 - weight) x the configured label loss + weight x the soft-target term
    (`functional.distillation_loss` on the main head). `last_terms` adds "distill" to the label
    loss's terms; called with `teacher=None` it is the label loss alone."""

    def __init__(self, config: LossConfig, distill: DistillConfig) -> None:
        super().__init__()
        if not 0.0 <= distill.weight <= 1.0:
            raise ValueError(f"distill.weight: expected a value in [0, 1], got {distill.weight}")
        self.labels_loss = SegmentationLoss(config)
        self.distill = distill
        self._last: dict[str, Tensor] = {}

    @property
    def last_terms(self) -> dict[str, float]:
        return {name: float(v) for name, v in self._last.items()}

    def forward(self, outputs: Tensor | Sequence[Tensor], labels: Tensor, teacher: Tensor | None = None) -> Tensor:
        hard = self.labels_loss(outputs, labels)
        if teacher is None:
            self._last = dict(self.labels_loss._last)
            return hard
        main = outputs if isinstance(outputs, Tensor) else outputs[0]
        soft = LF.distillation_loss(main, teacher, labels, temperature=self.distill.temperature,
                                    ignore_index=self.labels_loss.config.ignore_index)
        w = self.distill.weight
        total = (1.0 - w) * hard + w * soft
        self._last = {k: v for k, v in self.labels_loss._last.items() if k != "total"} | {
            "distill": soft.detach(), "total": total.detach()}
        return total
