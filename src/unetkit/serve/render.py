"""Turning a `Segmentation` into what the client asked for: PNG/TIFF bytes or the JSON summary.

RLE and polygons grow with the mask's boundaries, not its size: a noise image of 1000x1000 pixels
has about a million runs and as many polygon vertices (tens of MB of JSON, seconds of tracing).
`output_values` counts an upper bound of both from the label map (a few numpy passes) before any is
built, and `segment_json` refuses an answer over `max_output_values` (`OutputTooLarge`, HTTP 413).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from unetkit.errors import InputError
from unetkit.inference.outputs import colorize, display_image, overlay
from unetkit.inference.vectorize import labels_to_geojson, mask_to_rle
from unetkit.serve.encoding import png_bytes, tiff_bytes
from unetkit.serve.service import Segmentation

OUTPUTS = ("mask", "color", "overlay", "probabilities")
INCLUDES = ("rle", "polygons", "mask", "overlay", "image")


class OutputTooLarge(InputError):
    """The JSON answer asked for would hold more than `max_output_values` RLE runs and polygon vertices (HTTP 413)."""

    code = "output_too_large"


def output_values(labels: np.ndarray, include: set[str], num_classes: int) -> int:
    """An upper bound of the RLE counts plus polygon vertex coordinates `include` asks for."""
    total = 0
    if "rle" in include:  # every change of label in column-major order ends a run of two classes
        flat = labels.ravel(order="F")
        total += 2 * num_classes + 2 * int(np.count_nonzero(flat[1:] != flat[:-1]))
    if "polygons" in include:  # a ring has at most a vertex per boundary edge of its pixels, 2 numbers each
        edges = np.count_nonzero(labels[:, 1:] != labels[:, :-1]) + np.count_nonzero(labels[1:] != labels[:-1])
        total += 2 * 2 * (int(edges) + 2 * sum(labels.shape))
    return total


def binary_output(seg: Segmentation, image: np.ndarray, output: str) -> tuple[bytes, str]:
    """(body, media type) for `output` in OUTPUTS."""
    colors = seg.model.colors
    if output == "mask":
        return png_bytes(seg.labels), "image/png"
    if output == "color":
        return png_bytes(colorize(seg.labels, colors)), "image/png"
    if output == "overlay":
        return png_bytes(overlay(image, seg.labels, colors)), "image/png"
    if output == "probabilities":
        assert seg.probabilities is not None
        return tiff_bytes(seg.probabilities), "image/tiff"
    raise ValueError(f"output {output!r}: expected one of {OUTPUTS}")


def rgba_mask(labels: np.ndarray, colors: list[tuple[int, ...]], background: int = 0) -> np.ndarray:
    """Colour mask with a transparent background class (for drawing over the image)."""
    rgb = colorize(labels, colors)
    alpha = np.where(labels == background, 0, 255).astype(np.uint8)
    return np.dstack([rgb, alpha])


def segment_json(seg: Segmentation, image: np.ndarray, include: set[str], request_id: str,
                 timing: dict[str, float], tta: bool, max_output_values: int | None = None) -> dict[str, Any]:
    model = seg.model
    names = model.meta.class_names
    if max_output_values is not None and include & {"rle", "polygons"}:
        values = output_values(seg.labels, include, len(names))
        if values > max_output_values:
            raise OutputTooLarge(
                f"include={','.join(sorted(include & {'rle', 'polygons'}))} would hold about {values:,} numbers, over "
                f"max_output_values ({max_output_values:,}); ask for format=png (the mask) instead")
    body: dict[str, Any] = {
        "request_id": request_id, "model": model.name, "model_version": model.version, "model_role": model.role,
        "width": int(seg.labels.shape[1]), "height": int(seg.labels.shape[0]),
        "classes": seg.summary["classes"], "confidence": seg.summary["confidence"], "timing": timing, "tta": tta,
    }
    if "rle" in include:
        body["rle"] = {names[i]: mask_to_rle(seg.labels == i) for i in range(len(names))}
    if "polygons" in include:
        body["polygons"] = labels_to_geojson(seg.labels, names)
    if "mask" in include:
        body["mask_png"] = base64.b64encode(png_bytes(rgba_mask(seg.labels, model.colors))).decode()
    if "overlay" in include:
        body["overlay_png"] = base64.b64encode(png_bytes(overlay(image, seg.labels, model.colors))).decode()
    if "image" in include:
        body["image_png"] = base64.b64encode(png_bytes(display_image(image))).decode()
    return body
