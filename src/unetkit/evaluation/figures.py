"""The report's figures as PNG bytes (matplotlib's object API on the Agg canvas: no pyplot state,
no display needed) and the error overlay of one image (pure numpy)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from unetkit.inference.outputs import colorize

TP_COLOUR = (60, 200, 90)
FP_COLOUR = (255, 40, 40)  # predicted, not true: red
FN_COLOUR = (30, 140, 255)  # true, missed: blue
IGNORED_DIM = 0.35


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def png_bytes(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def confusion_figure(cm: Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    """Row-normalized confusion matrix (rows = truth), cells annotated with % and counts."""
    m = np.asarray(cm, dtype=np.float64)
    k = len(class_names)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = 1.6 + 0.9 * k
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for t in range(k):
        for p in range(k):
            colour = "white" if norm[t, p] > 0.6 else "black"
            ax.text(p, t, f"{100 * norm[t, p]:.1f}%\n{int(m[t, p]):,}", ha="center", va="center", fontsize=8, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    return png_bytes(fig)


def time_to_quality_figure(points: Sequence[tuple[float, float]], metric: str,
                           best: tuple[float, float] | None = None) -> bytes:
    """A training run's validation `metric` against wall-clock minutes: `points` are (seconds, value)
    of each validation, `best` the one whose weights were kept (marked)."""
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    minutes = [t / 60 for t, _ in points]
    ax.plot(minutes, [v for _, v in points], marker="o", markersize=3, label=metric)
    if best is not None:
        ax.scatter([best[0] / 60], [best[1]], s=60, facecolors="none", edgecolors="crimson", label="kept (best)")
    ax.set_xlabel("minutes since the run started")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title("time to quality")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return png_bytes(fig)


def reliability_figure(curves: dict[str, dict[str, Any]], ece: dict[str, float | None]) -> bytes:
    """Reliability diagram: accuracy per confidence bin for one or more curves (e.g. before/after
    calibration), the diagonal, and the pixel share per bin below."""
    fig = _figure(5.2, 5.0)
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    for (name, rel), colour in zip(curves.items(), ("#1f77b4", "#d62728", "#2ca02c"), strict=False):
        conf = np.asarray(rel["confidence"], dtype=float)
        acc = np.asarray(rel["accuracy"], dtype=float)
        lower, upper = np.asarray(rel["lower"]), np.asarray(rel["upper"])
        has = np.asarray(rel["count"]) > 0
        label = name if ece.get(name) is None else f"{name} (ECE {ece[name]:.4f})"
        ax.bar(lower[has], acc[has], width=(upper - lower)[has], align="edge", alpha=0.25, color=colour, edgecolor=colour)
        ax.plot(conf[has], acc[has], "o-", color=colour, ms=4, label=label)
        share = np.asarray(rel["count"], float) / max(float(np.sum(rel["count"])), 1.0)
        hist.bar(lower, share, width=upper - lower, align="edge", alpha=0.5, color=colour, edgecolor=colour)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    hist.set_yscale("log")
    hist.set_xlabel("confidence (top-class probability)")
    hist.set_ylabel("pixel share")
    return png_bytes(fig)


def distribution_figure(per_image: Sequence[dict[str, Any]], class_names: Sequence[str],
                        metrics: Sequence[str] = ("dice", "iou")) -> bytes:
    """Per-image Dice and IoU of every foreground class: box plots with the images as dots."""
    classes = list(range(1, len(class_names))) or [0]
    groups, labels = [], []
    for c in classes:
        for metric in metrics:
            groups.append(np.asarray([row[metric][c] for row in per_image if row[metric][c] is not None], float))
            labels.append(f"{class_names[c]}\n{'IoU' if metric == 'iou' else metric.capitalize()}")
    fig = _figure(max(4.5, 1.6 + 0.9 * len(groups)), 3.4)
    ax = fig.add_subplot()
    ax.boxplot([g if g.size else [np.nan] for g in groups], widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for i, g in enumerate(groups, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, g.size), g, s=14, alpha=0.7, color="#d62728", zorder=3)
    ax.set_xticks(range(1, len(groups) + 1), labels, fontsize=9)
    ax.set_ylabel("per-image score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    return png_bytes(fig)


def error_overlay(display: np.ndarray, truth: np.ndarray, pred: np.ndarray, ignore_index: int = 255, background: int = 0) -> np.ndarray:
    """(H,W,3) uint8: the image in gray with correct foreground green, false positives red and false
    negatives blue (any foreground class confusion counts as both); ignored pixels dimmed."""
    gray = display.astype(np.float32).mean(-1, keepdims=True).repeat(3, -1)
    out = gray.copy()
    valid = truth != ignore_index
    fg_t, fg_p = (truth != background) & valid, (pred != background) & valid
    tp = fg_t & fg_p & (truth == pred)
    fp = fg_p & ~tp
    fn = fg_t & ~tp
    for mask, colour, alpha in ((tp, TP_COLOUR, 0.55), (fn, FN_COLOUR, 0.85), (fp, FP_COLOUR, 0.85)):
        out[mask] = (1 - alpha) * gray[mask] + alpha * np.asarray(colour, np.float32)
    out[~valid] *= IGNORED_DIM
    return out.round().clip(0, 255).astype(np.uint8)


def panel_figure(
    display: np.ndarray, truth: np.ndarray, pred: np.ndarray, colors: Sequence[tuple[int, int, int]],
    *, ignore_index: int = 255,
) -> bytes:
    """Image | ground truth | prediction | errors, one row."""
    h, w = truth.shape
    fig = _figure(12.0, 12.0 * h / (4 * w) + 0.4)
    axes = fig.subplots(1, 4)
    truth_rgb = colorize(np.where(truth == ignore_index, 255, truth), colors)
    truth_rgb[truth == ignore_index] = (90, 90, 90)
    panels = [(display, "image"), (truth_rgb, "ground truth"), (colorize(pred, colors), "prediction"),
              (error_overlay(display, truth, pred, ignore_index), "errors: FP red, FN blue")]
    for ax, (img, name) in zip(axes, panels, strict=True):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    return png_bytes(fig)
