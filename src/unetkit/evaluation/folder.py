"""Saved predictions scored against labels, without a model (`unetkit evaluate-folder PRED LABELS`,
like nnU-Net's evaluate-folder).

Both folders hold label maps, paired by key (`data.layout`: file stems, or the stems without the
prefix/suffix common to a folder, so `21_mask.png` that `unetkit predict` writes pairs with
`21.png`). Predictions hold class indices 0..K-1 (index PNG/TIFF, as `unetkit predict` writes
them). Labels hold class indices too, with `ignore_index` for pixels not to score, or, given a
dataset description (`dataset`), the raw values or colours it names, decoded as training does.
The classes come from `class_names`, else the dataset, else the largest index found ("class 0", ...).

Every metric of `evaluate_model` that needs only label maps (the same `metrics.streaming.Evaluator`
and the same result layout, so `format_table` and `write_report` take it as they are), plus NSD at
`nsd_tolerance` pixels. Bad input fails before anything is scored, as a `DataError` naming the file:
a prediction without a label or a label without a prediction, different sizes, a value that is not
a class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from unetkit.data.io import read_mask
from unetkit.data.layout import folder_keys
from unetkit.data.spec import DatasetSpec, decode_mask, load_spec
from unetkit.errors import DataError
from unetkit.evaluation.evaluate import combine
from unetkit.metrics.streaming import Evaluator

PREDICTION_SUFFIX = "_mask"  # what `unetkit predict` appends to a class-index mask's stem


@dataclass(frozen=True)
class Pair:
    key: str
    prediction: Path
    label: Path


@dataclass(frozen=True)
class ScoredImage:
    """What `on_image` gets for each pair (the fields `WorstImages` reads): no input image."""

    key: str
    labels: np.ndarray
    image: None = None


def pair_folders(predictions: str | Path, labels: str | Path) -> list[Pair]:
    """Prediction and label files paired by key; a file without its partner is a `DataError`."""
    pred_dir, label_dir = Path(predictions), Path(labels)
    for folder, what in ((pred_dir, "predictions"), (label_dir, "labels")):
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder; expected a folder of {what} (index PNG/TIFF label maps)")
    best: tuple[int, dict[str, Path], dict[str, Path]] = (-1, {}, {})
    for strip in (False, True):
        preds, labs = folder_keys(pred_dir, strip)[1], folder_keys(label_dir, strip)[1]
        preds = {_without_suffix(k, labs): p for k, p in preds.items()}
        common = len(preds.keys() & labs.keys())
        if common > best[0]:
            best = (common, preds, labs)
    _, preds, labs = best
    if not preds:
        raise DataError(f"{pred_dir}: no image files; expected label maps (index PNG/TIFF)")
    if not labs:
        raise DataError(f"{label_dir}: no image files; expected label maps (index PNG/TIFF)")
    for key in sorted(preds.keys() - labs.keys()):
        raise DataError(f"{preds[key]}: prediction without a label (key '{key}' has no file in {label_dir})")
    for key in sorted(labs.keys() - preds.keys()):
        raise DataError(f"{labs[key]}: label without a prediction (key '{key}' has no file in {pred_dir})")
    return [Pair(key, preds[key], labs[key]) for key in sorted(preds, key=_order)]


def _without_suffix(key: str, label_keys: Any) -> str:
    """`key` without the `_mask` that `unetkit predict` appends, unless a label has the full key."""
    return key if key in label_keys else key.removesuffix(PREDICTION_SUFFIX)


def _order(key: str) -> tuple:
    return (0, int(key), key) if key.isdigit() else (1, 0, key)


def read_pair(pair: Pair, num_classes: int, ignore_index: int, spec: DatasetSpec | None) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, labels) as class indices, checked: same size, every value a class (or ignored)."""
    pred = read_mask(pair.prediction)
    raw = read_mask(pair.label)
    labels = decode_mask(raw, spec, pair.label) if spec is not None else raw
    if pred.ndim != 2:
        raise DataError(f"{pair.prediction}: an RGB image; expected a label map of class indices (index PNG/TIFF)")
    if labels.ndim != 2:
        raise DataError(f"{pair.label}: an RGB image; expected class indices, or give --dataset naming its colours")
    if pred.shape != labels.shape:
        raise DataError(f"{pair.prediction}: size {pred.shape[1]}x{pred.shape[0]} differs from its label "
                        f"{pair.label} ({labels.shape[1]}x{labels.shape[0]})")
    _check_values(pair.prediction, pred, num_classes, None)
    _check_values(pair.label, labels, num_classes, ignore_index)
    return pred, labels


def _check_values(path: Path, array: np.ndarray, num_classes: int, ignore_index: int | None) -> None:
    values = np.unique(array)
    bad = [int(v) for v in values if v >= num_classes and v != ignore_index][:10]
    if bad:
        allowed = f"0..{num_classes - 1}" + (f" or {ignore_index} (ignored)" if ignore_index is not None else "")
        raise DataError(f"{path}: unknown label value{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}; "
                        f"expected class indices {allowed}")


def folder_classes(pairs: Sequence[Pair], class_names: Sequence[str] | None, ignore_index: int,
                   spec: DatasetSpec | None) -> list[str]:
    """The class names: given, else the dataset's, else "class 0".."class K-1" for the largest index found."""
    if class_names:
        return list(class_names)
    if spec is not None:
        return spec.class_names
    largest = 1
    for pair in pairs:
        for path, skip in ((pair.prediction, None), (pair.label, ignore_index)):
            values = np.unique(read_mask(path))
            values = values[values != skip] if skip is not None else values
            if values.size:
                largest = max(largest, int(values.max()))
    return [f"class {i}" for i in range(largest + 1)]


def evaluate_folder(
    predictions: str | Path,
    labels: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    dataset: str | Path | None = None,
    nsd_tolerance: float | None = None,
    distances: bool = True,
    topology: bool = True,
    progress: bool = True,
    on_image: Callable[[Any, None, np.ndarray, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Score the label maps in `predictions` against those in `labels` (see the module docstring).

    The result has the layout of `evaluate_model`'s without the parts that need probabilities
    (AUC/AP, calibration); `on_image(sample, None, prediction, row)` sees each pair as it is scored.
    """
    spec = load_spec(dataset) if dataset else None
    if spec is not None:
        ignore_index = 255  # decode_mask maps the dataset's ignore values to 255
    pairs = pair_folders(predictions, labels)
    names = folder_classes(pairs, class_names, ignore_index, spec)
    if len(names) < 2:
        raise DataError(f"{len(names)} class name given; expected at least 2 (background first)")
    if not 0 <= ignore_index <= 65535 or ignore_index < len(names):
        raise DataError(f"--ignore-index {ignore_index}: expected a value outside the class indices 0..{len(names) - 1}")
    evaluator = Evaluator(names, ignore_index=ignore_index, distances=distances, topology=topology,
                          nsd_tolerance=nsd_tolerance)
    for pair in tqdm(pairs, desc="score", unit="img", disable=not progress or len(pairs) < 2):
        pred, truth = read_pair(pair, len(names), ignore_index, spec)  # a bad pair stops before anything is written
        row = evaluator.update(None, truth, key=pair.key, prediction=pred)
        if on_image is not None:
            on_image(ScoredImage(pair.key, truth), None, pred, row)
    result = combine(evaluator.result())
    return result | {"model": "(saved predictions)", "predictions": str(predictions), "data": str(labels),
                     "dataset": str(dataset) if dataset else None, "nsd_tolerance": nsd_tolerance}
