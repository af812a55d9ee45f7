"""Score a predictor on labelled whole images: one confusion matrix, per image and pooled.

Used by `unetkit evaluate`, by validation during training and by benchmarks, so every place
that reports a score computes it the same way (tiled inference, ROI and ignore index honoured).
`evaluate_predictions`/`evaluate_samples` score label maps (overlap metrics only; training's
validation); `evaluate_model` scores an artifact with the full metric suite of
`streaming.Evaluator`. `load_labelled` + `iter_probabilities` are the data path shared with
calibration and postprocessing tuning (`unetkit.tuning`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import Artifact
from unetkit.config import TileChoice
from unetkit.metrics.confusion import ConfusionAccumulator
from unetkit.metrics.scores import json_value, per_class_dice, per_class_iou, summarize


def evaluate_predictions(
    items: Iterable[tuple[str, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    ignore_index: int = 255,
) -> dict[str, Any]:
    """(key, predicted labels, true labels) triples -> pooled summary + per-image rows + matrix."""
    k = len(class_names)
    acc = ConfusionAccumulator(k, ignore_index=ignore_index, keep_per_image=False)
    per_image = []
    for key, pred, truth in items:
        cm = acc.update(pred, truth)
        per_image.append({"key": key, "iou": per_class_iou(cm), "dice": per_class_dice(cm), "pixels": cm.sum()})
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


def load_labelled(
    model: str | Path | Artifact, data: str | Path, keys: Sequence[str] | None = None, progress: bool = True
) -> tuple[Artifact, list[Any]]:
    """(artifact, LoadedSamples) for a model and a labelled data folder / description / manifest.

    Masks decode with the model's classes; the ROI is folded into the labels as `ignore_index`.
    `model` may also be an exported model (`unetkit.export.deployed.load_model`): its plan's
    `meta` then stands in for the artifact's.
    """
    from unetkit.artifact import load_artifact
    from unetkit.data.dataset import load_samples
    from unetkit.data.pairing import pair_samples
    from unetkit.data.spec import load_spec, spec_for_classes
    from unetkit.errors import DataError

    artifact = load_artifact(model) if isinstance(model, (str, Path)) else model
    spec = spec_for_classes(load_spec(data), artifact.meta.data_spec)
    samples = pair_samples(spec)
    if keys:
        wanted = set(keys)
        missing = wanted - {s.key for s in samples}
        if missing:
            raise DataError(f"{data}: no samples with keys {sorted(missing)}; available: {sorted(s.key for s in samples)[:20]}")
        samples = [s for s in samples if s.key in wanted]
    return artifact, load_samples(samples, spec, progress=progress)


def iter_probabilities(
    artifact: Artifact,
    samples: Sequence[Any],
    config: TileChoice = None,
    *,
    backend: str = "auto",
    logits: bool = False,
    progress: bool = True,
) -> Iterator[tuple[Any, np.ndarray]]:
    """(sample, (K,H,W) float32) per sample: calibrated probabilities by tiled inference, or with
    `logits` the Gaussian-blended logits of the artifact's pipeline (calibration applied)."""
    from tqdm import tqdm

    from unetkit.inference.backends import make_predictor
    from unetkit.inference.files import tile_config_for
    from unetkit.inference.predict import predict_tiled

    predictor = make_predictor(artifact, backend=backend)
    tile = tile_config_for(artifact, config)
    if logits:
        tile = replace(tile, activation="none")
    for s in tqdm(samples, desc="predict", unit="img", disable=not progress or len(samples) < 2):
        yield s, predict_tiled(predictor, s.image, tile)


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
    from unetkit.inference.files import labels_from_probabilities
    from unetkit.metrics.streaming import Evaluator

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
                     **{f"{k}_macro": macro.get(k) for k in ("iou", "dice", "boundary_iou", "cldice") if k in macro}})
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


FOREGROUND_COLUMNS = ("boundary_iou_micro", "hd95_mean", "assd_mean", "auc_roc", "average_precision")


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of per-class scores and their means (plus the full suite when present)."""

    def f(v: Any, width: int = 8, digits: int = 4) -> str:
        return f"{'n/a':>{width}}" if v is None else f"{v:{width}.{digits}f}"

    full = any("boundary_iou_micro" in row or "auc_roc" in row for row in result["per_class"])
    head = f"{'class':<16}{'IoU':>8}{'Dice':>8}{'Prec':>8}{'Recall':>8}"
    if full:
        head += f"{'BIoU':>8}{'HD95':>8}{'ASSD':>8}{'AUC':>8}{'AP':>8}"
    lines = [head + f"{'true px':>12}"]
    for row in result["per_class"]:
        line = f"{row['class'][:16]:<16}" + "".join(f(row[k]) for k in ("iou", "dice", "precision", "recall"))
        if full:
            line += f(row.get("boundary_iou_micro")) + f(row.get("hd95_mean"), 8, 2) + f(row.get("assd_mean"), 8, 2)
            line += f(row.get("auc_roc")) + f(row.get("average_precision"))
        lines.append(line + f"{row['true_pixels']:>12}")
    lines.append(
        f"mIoU {f(result['mean_iou'], 6)}  mean Dice {f(result['mean_dice'], 6)}  "
        f"pixel accuracy {f(result['pixel_accuracy'], 6)}  ({result['images']} images, {result['pixels']} pixels)"
    )
    if "macro" in result:
        macro = result["macro"]
        lines.append(f"per-image (macro) mIoU {f(macro.get('mean_iou'), 6)}  mean Dice {f(macro.get('mean_dice'), 6)}")
    if "calibration" in result:
        cal = result["calibration"]
        lines.append(f"ECE {f(cal.get('ece'), 6)}  MCE {f(cal.get('mce'), 6)}  (temperature {result.get('temperature', 1.0):.3f})")
    return "\n".join(lines)
