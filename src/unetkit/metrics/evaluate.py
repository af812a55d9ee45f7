"""Score a predictor on labelled whole images: one confusion matrix, per image and pooled.

Used by `unetkit evaluate`, by validation during training and by benchmarks, so every place
that reports a score computes it the same way (tiled inference, ROI and ignore index honoured).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.config import TileConfig
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


def evaluate_model(
    model: str | Path,
    data: str | Path,
    config: TileConfig = TileConfig(),
    *,
    keys: Sequence[str] | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a model artifact on a labelled data folder / description / manifest."""
    from tqdm import tqdm

    from unetkit.artifact import load_artifact
    from unetkit.data.dataset import load_samples
    from unetkit.data.pairing import pair_samples
    from unetkit.data.spec import spec_for_classes, load_spec
    from unetkit.errors import DataError
    from unetkit.inference.backends import make_predictor
    from unetkit.inference.files import labels_from_probabilities, tile_config_for
    from unetkit.inference.predict import predict_tiled

    artifact = load_artifact(model)
    spec = spec_for_classes(load_spec(data), artifact.meta.data_spec)
    samples = pair_samples(spec)
    if keys:
        wanted = set(keys)
        missing = wanted - {s.key for s in samples}
        if missing:
            raise DataError(f"{data}: no samples with keys {sorted(missing)}; available: {sorted(s.key for s in samples)[:20]}")
        samples = [s for s in samples if s.key in wanted]
    predictor = make_predictor(artifact, backend=backend)
    tile = tile_config_for(artifact, config)

    def predict(image: np.ndarray) -> np.ndarray:
        return labels_from_probabilities(predict_tiled(predictor, image, tile), artifact)

    loaded = load_samples(samples, spec)
    result = evaluate_samples(
        predict, tqdm(loaded, desc="evaluate", unit="img", disable=not progress or len(loaded) < 2),
        artifact.meta.class_names, artifact.meta.ignore_index,
    )
    result["model"] = str(model)
    result["data"] = str(data)
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of per-class scores and their means."""

    def f(v: Any) -> str:
        return "   n/a" if v is None else f"{v:6.4f}"

    lines = [f"{'class':<16}{'IoU':>8}{'Dice':>8}{'Prec':>8}{'Recall':>8}{'true px':>12}"]
    for row in result["per_class"]:
        lines.append(
            f"{row['class'][:16]:<16}{f(row['iou']):>8}{f(row['dice']):>8}{f(row['precision']):>8}"
            f"{f(row['recall']):>8}{row['true_pixels']:>12}"
        )
    lines.append(
        f"mIoU {f(result['mean_iou'])}  mean Dice {f(result['mean_dice'])}  "
        f"pixel accuracy {f(result['pixel_accuracy'])}  ({result['images']} images, {result['pixels']} pixels)"
    )
    return "\n".join(lines)
