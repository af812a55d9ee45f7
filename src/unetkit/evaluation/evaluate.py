"""A model scored on labelled whole images with every metric of `metrics.streaming.Evaluator`.

What `unetkit evaluate` runs: the predictions are what `unetkit predict` writes (tiled inference,
calibrated probabilities, the artifact's postprocessing), scored with ROI and ignore index honoured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import Artifact
from unetkit.config import TileChoice
from unetkit.evaluation.labelled import iter_probabilities, load_labelled
from unetkit.inference.files import labels_from_probabilities
from unetkit.metrics.streaming import Evaluator


def evaluate_model(
    model: str | Path | Artifact,
    data: str | Path,
    config: TileChoice = None,
    *,
    keys: Sequence[str] | None = None,
    backend: str = "auto",
    progress: bool = True,
    distances: bool = True,
    topology: bool = True,
    on_image: Callable[[Any, np.ndarray, np.ndarray, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a model artifact (or an exported model, see `load_labelled`) on labelled data with
    every metric of `streaming.Evaluator`.

    Predictions are what `unetkit predict` writes: calibrated probabilities, then the artifact's
    postprocessing. `distances` (Boundary IoU, HD95, ASSD) and `topology` (clDice, adapted Rand
    error) are the expensive metrics. `on_image(sample, probabilities, labels, row)` sees every
    image as it is scored (the HTML report keeps the worst ones that way).

    The result keeps the pooled (micro) summary at top level (`per_class`, `mean_iou`,
    `pixel_accuracy`, `pixels`, ...) plus `images`, `confusion_matrix`, `per_image`, and adds
    `micro`, `macro`, `foreground` (boundary/distance/topology/ranking per foreground class) and
    `calibration` (ECE, reliability bins).
    """
    artifact, loaded = load_labelled(model, data, keys, progress)
    meta = artifact.meta
    evaluator = Evaluator(meta.class_names, ignore_index=meta.ignore_index, distances=distances, topology=topology)
    for sample, probs in iter_probabilities(artifact, loaded, config, backend=backend, progress=progress):
        labels = labels_from_probabilities(probs, artifact)
        row = evaluator.update(probs, sample.labels, key=sample.key, prediction=labels)
        if on_image is not None:
            on_image(sample, probs, labels, row)
    result = combine(evaluator.result())
    result |= {"model": str(model if isinstance(model, (str, Path)) else model.path), "data": str(data),
               "temperature": meta.temperature, "vector_scaling": bool(meta.class_scale),
               "postprocess": meta.postprocess}
    return result


def combine(full: dict[str, Any]) -> dict[str, Any]:
    """The Evaluator's result with the pooled summary at top level (the keys `unetkit evaluate`
    has always written) and the foreground metrics merged into the `per_class` rows."""
    result = dict(full["micro"])
    names = full["class_names"]
    rows = []
    for row in result["per_class"]:
        extra = dict(full["foreground"].get(row["class"], {}))
        macro = next(r for r in full["macro"]["per_class"] if r["class"] == row["class"])
        rows.append({**row, **{k: extra.get(k) for k in FOREGROUND_COLUMNS if k in extra},
                     **{f"{k}_macro": macro.get(k) for k in ("iou", "dice", "boundary_iou", "cldice", "nsd") if k in macro}})
    result["per_class"] = rows
    result["per_image"] = [
        {"key": r["key"], "pixels": r["pixels"], "pixel_accuracy": r["pixel_accuracy"],
         "iou": [r["classes"][n]["iou"] for n in names], "dice": [r["classes"][n]["dice"] for n in names],
         "classes": r["classes"]}
        for r in full["per_image"]
    ]
    for key in ("images", "confusion_matrix", "micro", "macro", "foreground", "calibration"):
        result[key] = full[key]
    return result


FOREGROUND_COLUMNS = ("boundary_iou_micro", "hd95_mean", "assd_mean", "nsd_mean", "auc_roc", "average_precision")
