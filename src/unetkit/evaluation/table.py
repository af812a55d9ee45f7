"""The plain-text table `unetkit evaluate` prints: per-class scores and their means."""

from __future__ import annotations

from typing import Any


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of per-class scores and their means (plus the full suite when present)."""

    def f(v: Any, width: int = 8, digits: int = 4) -> str:
        return f"{'n/a':>{width}}" if v is None else f"{v:{width}.{digits}f}"

    full = any("boundary_iou_micro" in row or "auc_roc" in row for row in result["per_class"])
    ranking = any("auc_roc" in row for row in result["per_class"])  # not from saved label maps
    nsd = any("nsd_mean" in row for row in result["per_class"])
    head = f"{'class':<16}{'IoU':>8}{'Dice':>8}{'Prec':>8}{'Recall':>8}"
    if full:
        head += f"{'BIoU':>8}{'HD95':>8}{'ASSD':>8}" + (f"{'AUC':>8}{'AP':>8}" if ranking else "")
    if nsd:
        head += f"{'NSD':>8}"
    lines = [head + f"{'true px':>12}"]
    for row in result["per_class"]:
        line = f"{row['class'][:16]:<16}" + "".join(f(row[k]) for k in ("iou", "dice", "precision", "recall"))
        if full:
            line += f(row.get("boundary_iou_micro")) + f(row.get("hd95_mean"), 8, 2) + f(row.get("assd_mean"), 8, 2)
            line += f(row.get("auc_roc")) + f(row.get("average_precision")) if ranking else ""
        if nsd:
            line += f(row.get("nsd_mean"))
        lines.append(line + f"{row['true_pixels']:>12}")
    lines.append(
        f"mIoU {f(result['mean_iou'], 6)}  mean Dice {f(result['mean_dice'], 6)}  "
        f"pixel accuracy {f(result['pixel_accuracy'], 6)}  ({result['images']} images, {result['pixels']} pixels)"
    )
    if "macro" in result:
        macro = result["macro"]
        lines.append(f"per-image (macro) mIoU {f(macro.get('mean_iou'), 6)}  mean Dice {f(macro.get('mean_dice'), 6)}")
    if result.get("calibration"):  # saved label maps have no probabilities to calibrate
        cal = result["calibration"]
        lines.append(f"ECE {f(cal.get('ece'), 6)}  MCE {f(cal.get('mce'), 6)}  (temperature {result.get('temperature', 1.0):.3f})")
    return "\n".join(lines)
