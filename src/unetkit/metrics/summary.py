"""Overlap scores of predicted label maps on whole images: one confusion matrix, per image and pooled.

`evaluate_predictions` / `evaluate_samples` give the overlap metrics only (IoU, Dice, precision,
recall; ROI and ignore index honoured): training's validation and the int8 gate use them. The full
suite of a model on labelled data (boundary, distance, topology, ranking, calibration) is
`unetkit.evaluation.evaluate.evaluate_model`, over `streaming.Evaluator`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from unetkit.metrics.confusion import ConfusionAccumulator
from unetkit.metrics.scores import json_value, per_class_dice, per_class_iou, summarize


def evaluate_predictions(
    items: Iterable[tuple[str, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    ignore_index: int = 255,
) -> dict[str, Any]:
    """(key, predicted labels, true labels) triples -> pooled summary + per-image rows (each with its
    own (K, K) `confusion`) + the pooled matrix."""
    k = len(class_names)
    acc = ConfusionAccumulator(k, ignore_index=ignore_index, keep_per_image=False)
    per_image = []
    for key, pred, truth in items:
        cm = acc.update(pred, truth)
        per_image.append({"key": key, "iou": per_class_iou(cm), "dice": per_class_dice(cm), "pixels": cm.sum(),
                          "confusion": cm})
    cm = acc.compute()
    result = summarize(cm, class_names)
    result["images"] = len(per_image)
    result["confusion_matrix"] = cm.tolist()
    result["per_image"] = json_value(per_image)
    return result


def evaluate_samples(
    predict: Callable[[np.ndarray], np.ndarray],
    samples: Iterable[Any],
    class_names: Sequence[str],
    ignore_index: int = 255,
) -> dict[str, Any]:
    """`predict(image (C,H,W)) -> labels (H,W)` over LoadedSample-like objects (key, image, labels)."""
    return evaluate_predictions(
        ((s.key, predict(s.image), s.labels) for s in samples), class_names, ignore_index
    )
