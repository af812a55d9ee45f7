"""`Evaluator`: every metric of a segmentation, accumulated image by image.

`update(probabilities (K, *spatial), labels (*spatial), roi=None)` adds one image; `result()` is a
JSON-ready dict (NaN and inf written as null). Pixels whose label is `ignore_index` or outside the
ROI are not evaluated. The predicted label map is the argmax of the probabilities unless a
(post-processed) `prediction` is passed. Class 0 is the background; the per-class boundary,
distance, topology and island metrics are computed for the foreground classes 1..K-1.

Aggregation:
* micro: scores of the confusion matrix summed over images (pixels pooled);
* macro: per-image scores averaged over images, NaN (class absent from truth and prediction in
  that image, see `scores`) left out;
* Boundary IoU: macro, plus micro from summed intersection/union counts;
* HD95 / ASSD: mean over images where both masks are non-empty; images where exactly one is empty
  (infinite distance) are counted in `images_one_empty` instead;
* AUC ROC / AP (one-vs-rest per foreground class) and ECE/reliability bins: streaming histograms;
* false-positive islands / missed objects: totals and per-image mean counts;
* NSD (normalized surface Dice at `nsd_tolerance` pixels, `surface`): per image, macro and mean.

Saved label maps without probabilities (`unetkit evaluate-folder`): `update(None, labels,
prediction=...)` scores everything that needs only the label maps; AUC/AP and calibration, which
need probabilities, are then left out of the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from unetkit.metrics import boundary as B
from unetkit.metrics import scores as S
from unetkit.metrics import topology as T
from unetkit.metrics.calibration import CalibrationAccumulator
from unetkit.metrics.confusion import ConfusionAccumulator, as_numpy, valid_mask
from unetkit.metrics.ranking import RankingAccumulator
from unetkit.metrics.surface import nsd_from_distances


def _finite_mean(values: list[float]) -> tuple[float, int]:
    """(mean of the finite values, how many there are); NaN mean when there is none."""
    a = np.asarray(values, dtype=np.float64)
    finite = a[np.isfinite(a)]
    return (float(finite.mean()) if finite.size else math.nan), int(finite.size)


class Evaluator:
    """Streams images through every metric; memory is O(classes x bins + images x classes)."""

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        ignore_index: int = 255,
        spacing: float | Sequence[float] | None = None,
        boundary_width: int | None = None,
        boundary_fraction: float = 0.02,
        ranking_bins: int = 10_000,
        calibration_bins: int = 15,
        distances: bool = True,
        topology: bool = True,
        topology_classes: Sequence[int] | None = None,
        rand_connectivity: int = 1,
        island_connectivity: int = 2,
        nsd_tolerance: float | None = None,
    ) -> None:
        if len(class_names) < 2:
            raise ValueError("Evaluator needs at least 2 classes (background first)")
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.ignore_index = ignore_index
        self.spacing = spacing
        self.boundary_width = boundary_width
        self.boundary_fraction = boundary_fraction
        self.distances = distances
        self.topology = topology
        self.foreground = list(range(1, self.num_classes))
        self.topology_classes = list(self.foreground if topology_classes is None else topology_classes)
        self.rand_connectivity = rand_connectivity
        self.island_connectivity = island_connectivity
        self.nsd_tolerance = nsd_tolerance
        self.without_probabilities = False  # an update had only a label map: no AUC/AP, no calibration
        self.confusion = ConfusionAccumulator(self.num_classes, ignore_index)
        self.ranking = {c: RankingAccumulator(ranking_bins) for c in self.foreground}
        self.calibration = CalibrationAccumulator(calibration_bins)
        self.boundary_counts = {c: np.zeros(2, np.int64) for c in self.foreground}
        self.rows: list[dict[str, Any]] = []

    def _probabilities(self, probabilities: Any) -> np.ndarray:
        probs = as_numpy(probabilities).astype(np.float32, copy=False)
        if probs.shape[0] == 1 and self.num_classes == 2:  # binary single channel: foreground prob
            probs = np.concatenate([1.0 - probs, probs])
        if probs.shape[0] != self.num_classes:
            raise ValueError(
                f"probabilities have {probs.shape[0]} channels, expected {self.num_classes} classes"
            )
        return probs

    def update(
        self, probabilities: Any, labels: Any, roi: Any = None, key: str | None = None, prediction: Any = None
    ) -> dict[str, Any]:
        """Add one image; returns its per-image row (JSON-ready). `probabilities` may be None when
        `prediction` (a label map) is given: then AUC/AP and calibration are not accumulated."""
        lab = as_numpy(labels)
        if probabilities is None:
            if prediction is None:
                raise ValueError("Evaluator.update needs probabilities or a prediction")
            probs = None
            self.without_probabilities = True
            pred = as_numpy(prediction)
            if pred.shape != lab.shape:
                raise ValueError(f"prediction {pred.shape} and labels {lab.shape} differ in size")
        else:
            probs = self._probabilities(probabilities)
            if probs.shape[1:] != lab.shape:
                raise ValueError(f"probabilities {probs.shape} and labels {lab.shape} differ in size")
            pred = probs.argmax(0) if prediction is None else as_numpy(prediction)
        valid = valid_mask(lab, self.ignore_index, roi)
        cm = self.confusion.update(pred, lab, roi)
        if probs is not None:
            self.calibration.update(probs, lab, valid)
        iou, dice = S.per_class_iou(cm), S.per_class_dice(cm)
        classes: dict[str, dict[str, Any]] = {}
        width = B.boundary_width(lab.shape, self.boundary_width, self.boundary_fraction)
        for c in range(self.num_classes):
            entry: dict[str, Any] = {"iou": iou[c], "dice": dice[c]}
            if c in self.foreground:
                p, g = pred == c, lab == c
                if probs is not None:
                    self.ranking[c].update(probs[c], g, valid)
                entry |= self._shape_metrics(c, p, g, valid, width)
            classes[self.class_names[c]] = entry
        row = {
            "key": key if key is not None else str(len(self.rows)),
            "pixels": int(cm.sum()),
            "pixel_accuracy": S.pixel_accuracy(cm),
            "classes": classes,
        }
        self.rows.append(row)
        return S.json_value(row)

    def _shape_metrics(self, c: int, p: np.ndarray, g: np.ndarray, valid: np.ndarray, width: int) -> dict:
        out: dict[str, Any] = {}
        if self.distances:
            inter, union = B.boundary_iou_counts(p, g, width, valid)
            self.boundary_counts[c] += (inter, union)
            out["boundary_iou"] = inter / union if union else math.nan
        if self.distances or self.nsd_tolerance is not None:
            d_pred, d_true = B.surface_distances(p, g, self.spacing, valid)
        if self.distances:
            out["hd95"] = B.hausdorff_from_distances(d_pred, d_true, 95.0)
            out["assd"] = B.assd_from_distances(d_pred, d_true)
        if self.nsd_tolerance is not None:
            out["nsd"] = nsd_from_distances(d_pred, d_true, self.nsd_tolerance)
        if self.topology and c in self.topology_classes:
            out["cldice"] = T.cldice(p, g, valid)
            out["adapted_rand_error"] = T.adapted_rand_error(p, g, valid, self.rand_connectivity)[0]
        out["fp_islands"], out["fp_island_area"] = T.false_positive_islands(
            p, g, valid, self.island_connectivity
        )
        out["missed_objects"], out["missed_area"] = T.unmatched_components(
            g, p, valid, self.island_connectivity
        )
        return out

    def _column(self, name: str, metric: str) -> list[float]:
        return [r["classes"][name][metric] for r in self.rows if metric in r["classes"][name]]

    def _macro(self) -> dict[str, Any]:
        per_image = self.confusion.per_image
        scores = {
            m: S.nan_mean(f(per_image), axis=0) if len(per_image) else np.full(self.num_classes, np.nan)
            for m, f in (
                ("iou", S.per_class_iou),
                ("dice", S.per_class_dice),
                ("precision", S.precision),
                ("recall", S.recall),
            )
        }
        rows = []
        for c, name in enumerate(self.class_names):
            row: dict[str, Any] = {"class": name, **{m: v[c] for m, v in scores.items()}}
            for metric in ("boundary_iou", "cldice", "adapted_rand_error", "nsd"):
                values = self._column(name, metric)
                if values:
                    row[metric] = S.nan_mean(np.asarray(values, np.float64))
            rows.append(row)
        macro: dict[str, Any] = {f"mean_{m}": S.nan_mean(v) for m, v in scores.items()}
        macro["mean_iou_foreground"] = S.nan_mean(scores["iou"][1:])
        macro["mean_dice_foreground"] = S.nan_mean(scores["dice"][1:])
        macro["pixel_accuracy"] = S.nan_mean(np.array([r["pixel_accuracy"] for r in self.rows], np.float64))
        macro["per_class"] = rows
        return macro

    def _foreground(self, c: int) -> dict[str, Any]:
        name = self.class_names[c]
        entry: dict[str, Any] = {}
        if self.distances:
            inter, union = self.boundary_counts[c]
            entry["boundary_iou_micro"] = inter / union if union else math.nan
            for metric in ("hd95", "assd"):
                entry[f"{metric}_mean"], entry[f"{metric}_images"] = _finite_mean(self._column(name, metric))
            entry["images_one_empty"] = int(np.isinf(np.asarray(self._column(name, "hd95"), float)).sum())
        for metric in ("fp_islands", "fp_island_area", "missed_objects", "missed_area"):
            entry[f"{metric}_total"] = int(sum(self._column(name, metric)))
        entry["fp_islands_per_image"] = entry["fp_islands_total"] / len(self.rows) if self.rows else math.nan
        if self.nsd_tolerance is not None:
            entry["nsd_mean"], entry["nsd_images"] = _finite_mean(self._column(name, "nsd"))
            entry["nsd_tolerance"] = self.nsd_tolerance
        return entry | ({} if self.without_probabilities else self.ranking[c].result())

    def result(self) -> dict[str, Any]:
        """Micro, macro, boundary/distance, topology, island, ranking and calibration results."""
        total = self.confusion.compute()
        return S.json_value(
            {
                "images": len(self.rows),
                "class_names": self.class_names,
                "confusion_matrix": total,
                "micro": S.summarize(total, self.class_names),
                "macro": self._macro(),
                "foreground": {self.class_names[c]: self._foreground(c) for c in self.foreground},
                "calibration": {} if self.without_probabilities else self.calibration.result(),
                "per_image": self.rows,
            }
        )
