"""One way of predicting against another across labelled images: the gate's verdict, the scores and
the ECE of both (`unetkit.tuning.tta`: plain vs the views' mean; `unetkit.tuning.scales`: one
resolution vs several)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unetkit.config import TtaMode
from unetkit.metrics.calibration import pooled_ece
from unetkit.tuning.gate import GateResult, decide
from unetkit.tuning.postprocess import parts_statistic, score_parts


def compare_predictions(
    probabilities: dict[str, Sequence[np.ndarray]],
    truths: Sequence[np.ndarray],
    num_classes: int,
    *,
    metric: str,
    ignore_index: int,
    mode: TtaMode,
    what: str,
    gain_name: str,
    seed: int = 0,
) -> tuple[GateResult, dict[str, float]]:
    """(verdict, scores) for `probabilities` {"default name": maps, "candidate name": maps}.

    Arg-max labels of each are scored per image for `metric` and the pooled gain of the candidate is
    judged by `gate.decide`; "on" (`mode`) adopts it whatever the verdict (`adopted` True, the reason
    saying so). The scores are `metric` and pooled Dice of each ("dice_plain") and their ECE ("ece_plain")."""
    (default, before), (candidate, after) = probabilities.items()
    labels = {name: [p.argmax(0) for p in maps] for name, maps in probabilities.items()}
    parts = {(score, name): score_parts(labels[name], truths, num_classes, score, ignore_index)
             for score in dict.fromkeys((metric, "dice")) for name in labels}
    verdict = decide(parts[metric, default], parts[metric, candidate], parts_statistic(num_classes, metric),
                     what=what, seed=seed, gain_name=gain_name)
    if mode == "on" and not verdict.adopted:
        verdict = GateResult(True, verdict.gain, verdict.lower, verdict.n, f"on as asked ({what}: on); the gate "
                             f"would not adopt it: {verdict.reason}")
    scores: dict[str, Any] = {f"{score}_{name}": parts_statistic(num_classes, score)(p.sum(0))
                              for (score, name), p in parts.items()}
    scores |= {f"ece_{name}": pooled_ece(maps, truths, ignore_index) for name, maps in (
        (default, before), (candidate, after))}
    return verdict, scores
