"""One self-contained HTML evaluation report: inline CSS, figures as base64 PNG, no scripts.

    result = evaluate_model(model, data, on_image=(worst := WorstImages(k=4)))
    write_report("report.html", result, worst.images(), colors=artifact.meta.colors())

Sections (each a `<section id=...>`): summary, metrics (per-class table, micro and macro means),
confusion (heatmap), calibration (reliability diagram with ECE), distribution (per-image scores),
worst (the k worst images as image / ground truth / prediction / error overlay), settings.
"""

from __future__ import annotations

import base64
import heapq
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import default_palette
from unetkit.data.io import write_text_atomic
from unetkit.evaluation import figures
from unetkit.inference.outputs import display_image

SECTIONS = ("summary", "metrics", "confusion", "calibration", "distribution", "worst", "settings")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:0 0 12px;border-bottom:2px solid #e3e7ee;padding-bottom:6px}
.sub{color:#5a6475;margin-bottom:18px}
section{min-width:0;background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(20,30,50,.08);padding:18px 22px;margin:18px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 140px;background:#f7f9fc;border:1px solid #e3e7ee;border-radius:8px;padding:10px 14px}
.card .v{font-size:22px;font-weight:600}.card .k{color:#5a6475;font-size:13px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 9px;text-align:right;border-bottom:1px solid #edf0f4;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f1f4f8;font-weight:600;font-size:13px}
tr.mean td{font-weight:600;background:#fafbfd}td.na{color:#a0a8b5}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:0 18px}
.figs{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
img{max-width:100%;height:auto}.note{color:#5a6475;font-size:13px;margin:8px 0 0}
.worst figure{margin:0 0 14px}.worst figcaption{color:#5a6475;font-size:13px}
code{background:#f1f4f8;padding:1px 4px;border-radius:4px}
.legend span{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px -1px 10px}
"""

COLUMNS = (  # (key in a per_class row, header, digits)
    ("iou", "IoU", 4), ("dice", "Dice", 4), ("precision", "Precision", 4), ("recall", "Recall", 4),
    ("boundary_iou_micro", "Boundary IoU", 4), ("hd95_mean", "HD95 px", 2), ("assd_mean", "ASSD px", 2),
    ("nsd_mean", "NSD", 4), ("cldice_macro", "clDice", 4), ("auc_roc", "AUC", 4), ("average_precision", "AP", 4),
)


@dataclass(order=True)
class WorstImage:
    score: float
    key: str = field(compare=False)
    display: np.ndarray = field(compare=False, repr=False)  # (H, W, 3) uint8
    truth: np.ndarray = field(compare=False, repr=False)
    prediction: np.ndarray = field(compare=False, repr=False)


class WorstImages:
    """`evaluate_model(on_image=...)` collector of the k images with the lowest per-image foreground
    Dice (images without any foreground in truth or prediction are skipped). Memory: k images.
    A sample without an image (saved predictions scored by `evaluate_folder`) shows on grey."""

    def __init__(self, k: int = 4, metric: str = "dice") -> None:
        self.k = k
        self.metric = metric
        self._heap: list[tuple[float, int, WorstImage]] = []  # max-heap on score via negation
        self._seen = 0

    def __call__(self, sample: Any, probabilities: np.ndarray, labels: np.ndarray, row: dict[str, Any]) -> None:
        scores = [v[self.metric] for name, v in list(row["classes"].items())[1:] if v.get(self.metric) is not None]
        if not scores or self.k <= 0:
            return
        score = float(np.mean(scores))
        if len(self._heap) == self.k and -self._heap[0][0] <= score:
            return
        display = display_image(sample.image) if sample.image is not None else np.full((*labels.shape, 3), 96, np.uint8)
        item = WorstImage(score, sample.key, display, sample.labels.copy(), labels.copy())
        self._seen += 1
        entry = (-score, self._seen, item)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def images(self) -> list[WorstImage]:
        """Worst first."""
        return sorted(item for _, _, item in self._heap)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return '<td class="na">–</td>'
    if isinstance(v, int):
        return f"<td>{v:,}</td>"
    return f"<td>{v:.{digits}f}</td>"


def _mean(values: Sequence[Any]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def metrics_table(result: dict[str, Any]) -> str:
    rows = result["per_class"]
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    head = "".join(f"<th>{h}</th>" for _, h, _ in cols)
    body = []
    for r in rows:
        cells = "".join(_fmt(r.get(k), d) for k, _, d in cols)
        body.append(f"<tr><td>{html.escape(r['class'])}</td>{cells}{_fmt(r.get('true_pixels'))}</tr>")
    macro = result.get("macro", {})
    foreground = rows[1:] if len(rows) > 1 else rows
    fg_means = {k: _mean([r.get(k) for r in foreground]) for k, _, _ in cols}
    for label, src in (("mean (pooled pixels, micro)", result), ("mean foreground (micro)", None),
                       ("mean per image (macro)", macro)):
        if src is None:  # every column: the mean over foreground classes
            vals = fg_means | {"iou": result.get("mean_iou_foreground"), "dice": result.get("mean_dice_foreground")}
        else:
            vals = {k: src.get(f"mean_{k}") for k in ("iou", "dice", "precision", "recall")}
        cells = "".join(_fmt(vals.get(k), d) for k, _, d in cols)
        body.append(f'<tr class="mean"><td>{label}</td>{cells}<td></td></tr>')
    return f"<table><tr><th>class</th>{head}<th>true px</th></tr>{''.join(body)}</table>"


def summary_cards(result: dict[str, Any]) -> str:
    cards = [("mIoU", result.get("mean_iou")), ("foreground Dice", result.get("mean_dice_foreground")),
             ("pixel accuracy", result.get("pixel_accuracy")), ("ECE", result.get("calibration", {}).get("ece"))]
    fg = result.get("foreground", {})
    if len(fg) == 1:
        entry = next(iter(fg.values()))
        cards += [("AUC", entry.get("auc_roc")), ("AP", entry.get("average_precision"))]
    html_cards = "".join(
        f'<div class="card"><div class="k">{k}</div><div class="v">{"–" if v is None else f"{v:.4f}"}</div></div>'
        for k, v in cards
    )
    return f'<div class="cards">{html_cards}</div>'


def render_report(
    result: dict[str, Any],
    worst: Sequence[WorstImage] = (),
    *,
    colors: Sequence[tuple[int, int, int]] | None = None,
    title: str = "Segmentation evaluation",
    calibration: dict[str, Any] | None = None,
    ignore_index: int = 255,
) -> str:
    """The HTML text. `calibration` (a `calibrate_model` summary) adds before/after curves."""
    names = [r["class"] for r in result["per_class"]]
    colors = list(colors or default_palette(len(names)))
    cal = result.get("calibration", {})
    curves = {"this model": cal.get("reliability")} if cal.get("reliability") else {}
    eces = {"this model": cal.get("ece")}
    if calibration:
        curves = {"before calibration": calibration["reliability_before"], "after calibration": calibration["reliability_after"]}
        eces = {"before calibration": calibration["ece_before"], "after calibration": calibration["ece_after"]}
    worst_html = "".join(
        f'<figure>{_img(figures.panel_figure(w.display, w.truth, w.prediction, colors, ignore_index=ignore_index), w.key)}'
        f"<figcaption>{html.escape(w.key)}: mean foreground Dice {w.score:.4f}</figcaption></figure>"
        for w in worst
    ) or '<p class="note">No image with foreground to show.</p>'
    legend = (f'<p class="note legend">Error overlay:<span style="background:rgb{figures.TP_COLOUR}"></span>correct foreground'
              f'<span style="background:rgb{figures.FP_COLOUR}"></span>false positive<span style="background:rgb{figures.FN_COLOUR}"></span>false negative; '
              "ignored / outside the ROI dimmed.</p>")
    settings = {
        "model": result.get("model"), "data": result.get("data"), "images": result.get("images"),
        "evaluated pixels": result.get("pixels"), "temperature": result.get("temperature"),
        "vector scaling": result.get("vector_scaling"), "postprocess": result.get("postprocess") or "arg-max (none)",
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    settings_rows = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:left'><code>{html.escape(str(v))}</code></td></tr>"
                            for k, v in settings.items())
    cal_note = (f"ECE {cal.get('ece', float('nan')):.4f}, MCE {cal.get('mce', float('nan')):.4f} over "
                f"{sum(cal['reliability']['count']):,} pixels (top-class confidence, 15 bins)." if cal.get("reliability") else "")
    parts = [
        f"<h1>{html.escape(title)}</h1><div class='sub'>{html.escape(str(result.get('model', '')))} on "
        f"{html.escape(str(result.get('data', '')))} · {result.get('images')} images</div>",
        f'<section id="summary"><h2>Summary</h2>{summary_cards(result)}</section>',
        f'<section id="metrics"><h2>Metrics per class</h2>{metrics_table(result)}<p class="note">Micro: pixels pooled over '
        "images. Macro: mean of per-image scores. A class absent from truth and prediction is left out of means. "
        "Boundary IoU, HD95 and ASSD (pixels) are for foreground classes; HD95/ASSD average the images where both masks "
        "are non-empty.</p></section>",
        '<div class="grid"><section id="confusion"><h2>Confusion matrix</h2><div class="figs">'
        f'{_img(figures.confusion_figure(result["confusion_matrix"], names), "confusion matrix")}</div></section>',
        '<section id="calibration"><h2>Calibration</h2><div class="figs">'
        f'{_img(figures.reliability_figure(curves, eces), "reliability diagram") if curves else ""}</div>'
        f'<p class="note">{cal_note}</p></section></div>',
        '<section id="distribution"><h2>Per-image scores</h2><div class="figs">'
        f'{_img(figures.distribution_figure(result["per_image"], names), "per-image dice")}</div></section>',
        f'<section id="worst" class="worst"><h2>Worst {len(worst)} images</h2>{legend}{worst_html}</section>',
        f'<section id="settings"><h2>Settings</h2><table>{settings_rows}</table></section>',
    ]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><main>{''.join(parts)}</main></body></html>\n")


def write_report(path: str | Path, result: dict[str, Any], worst: Sequence[WorstImage] = (), **kwargs: Any) -> Path:
    """Render and write the report atomically; returns its path."""
    return write_text_atomic(Path(path), render_report(result, worst, **kwargs))
