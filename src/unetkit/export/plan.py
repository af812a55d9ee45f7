"""The inference plan written beside an exported model (`model.onnx.json`).

Everything a plain ONNX Runtime + numpy user needs to reproduce unetkit's output from the graph
alone: input channels and intensity units, tile size, overlap, blending, padding, class names,
colours, postprocessing, how masks map to classes (for scoring), and which artifact (sha256) it
came from; the export adds the graph's own file name and sha256 (`model_file`, `model_sha256`).
`validation_sample` (when the artifact has one) is its labelled crops with fp32's labels on them:
what an exported model's automatic backend choice gates a reduced precision on. `drift_baseline`
(when the artifact has one) is the artifact's, so `unetkit drift` and `serve` monitor an exported
model as they do the artifact.
The graph already holds the normalization, the network and the calibrated softmax, so the plan's
activation is "none". `unetkit.export.deployed` runs a graph from it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from unetkit.artifact import Artifact, ValidationSample
from unetkit.config import TileConfig
from unetkit.data.io import file_sha256
from unetkit.errors import ConfigError

PLAN_FORMAT = "unetkit-inference-plan"
PLAN_VERSION = 2  # the newest plan this unetkit reads and writes; a plan says the oldest reader that computes
# it right (`plan_version`): 1 unless it needs what version 1 readers silently ignore (multi-scale, recalibrated means)
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "logits")
MIN_WEIGHT = 1e-3  # tiling.gaussian_weights' floor


def plan_path(model_path: str | Path) -> Path:
    """`model.onnx` -> `model.onnx.json`."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")




def plan_version(tile: TileConfig) -> int:
    """The oldest plan reader that predicts `tile` right: 2 where it averages several resolutions or
    recalibrates a mean (`resolutions`, `tta_temperature`, `resolutions_temperature`: fields a version 1
    reader ignores, so it would predict something else without a word), else 1, which every reader takes."""
    return 2 if tile.resolutions or tile.tta_temperature != 1.0 or tile.resolutions_temperature != 1.0 else 1


def inference_plan(
    artifact: Artifact, tile: TileConfig, *, precision: str = "fp32", opset: int = 17,
    parity: dict[str, Any] | None = None, quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The plan as plain JSON values; `tile.tile_size` must be resolved (not empty)."""
    if not tile.tile_size:
        raise ConfigError("inference_plan: tile.tile_size is empty; resolve it (e.g. the artifact's patch size) first")
    meta = artifact.meta
    size = [int(v) for v in tile.tile_size] * (2 if len(tile.tile_size) == 1 else 1)
    units = "raw intensities as stored in the file (0-255 for 8-bit, 0-65535 for 16-bit images), float32"
    plan: dict[str, Any] = {
        "format": PLAN_FORMAT,
        "version": plan_version(tile),
        "precision": precision,
        "opset": opset,
        "input": {
            "name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "channels": meta.model.in_channels,
            "units": units, "normalization": "inside the graph: (x - mean) / std per channel",
            "mean": list(meta.mean), "std": list(meta.std),
        },
        "outputs": {
            "probabilities": "(N, K, H, W) float32 calibrated softmax probabilities",
            "logits": "(N, K, H, W) float32 calibrated logits (logits * scale / temperature + bias)",
        },
        "tile": {
            "size": size, "overlap": tile.overlap, "blend": tile.blend, "sigma_scale": tile.sigma_scale,
            "min_weight": MIN_WEIGHT, "padding": tile.padding, "batch_size": tile.batch_size,
            "activation": "none", "tta": tile.tta, "tta_views": tile.tta_views,
            "tta_temperature": tile.tta_temperature,
            "tta_mean": "with tta the probabilities of the views (each mapped back) are averaged per tile, blended, and "
                        "recalibrated as softmax(log(mean) / tta_temperature)",
            "resolution": tile.resolution, "resolutions": list(tile.resolutions),
            "resolutions_temperature": tile.resolutions_temperature,
            "resampling": "at resolution r < 1 each image is first resized to round(r * H) x round(r * W) (bilinear, "
                          "antialiased), tiled as below, and the probabilities resized back to H x W (bilinear, "
                          "half-pixel centres); with resolutions (multi-scale) the image is predicted so at each, "
                          "the probabilities averaged and recalibrated as softmax(log(mean) / resolutions_temperature)",
            "placement": "per axis: one tile at 0 when the image is not larger than the tile (padded at the end); "
                         "otherwise ceil((size - tile) / floor(tile * (1 - overlap))) + 1 tiles, evenly spread, "
                         "the last flush with the end",
            "blending": "sum of weights * probabilities over tiles divided by the sum of weights; Gaussian weights "
                        "are exp(-d^2 / (2 (sigma_scale * n)^2)) per axis around (n - 1) / 2, max 1, floor min_weight",
        },
        "classes": list(meta.class_names),
        "colors": [list(c) for c in meta.colors()],
        "ignore_index": meta.ignore_index,
        "calibration": {"temperature": meta.temperature, "class_scale": list(meta.class_scale),
                        "class_bias": list(meta.class_bias), "applied": "inside the graph"},
        "postprocess": meta.postprocess,
        "data_spec": meta.data_spec,
        "artifact": {
            "name": meta.name, "path": str(artifact.path) if artifact.path else "",
            "sha256": file_sha256(artifact.path) if artifact.path else "",
            "weights_sha256": meta.weights_sha256, "meta_sha256": meta.meta_sha256, "created": meta.created,
        },
    }
    if meta.drift_baseline:  # `unetkit drift` and serve's drift monitor compare new images with it
        plan["drift_baseline"] = meta.drift_baseline
    sample = plan_sample(artifact)
    if sample is not None:
        plan["validation_sample"] = sample.to_dict()
    if parity is not None:
        plan["parity"] = parity
    if quantization is not None:
        plan["quantization"] = quantization
    return plan


def plan_sample(artifact: Artifact) -> ValidationSample | None:
    """The artifact's validation sample with fp32's labels on it (the artifact's torch pipeline), so that
    an exported model, which has no fp32 model beside it, can gate a reduced precision (an IR's bf16,
    an int8 graph on OpenVINO) against fp32 and the truth; None for artifacts without a sample."""
    sample = artifact.meta.sample()
    if sample is None:
        return None
    with torch.inference_mode():
        logits = artifact.pipeline_module()(torch.from_numpy(sample.float_images()))
    return dataclasses.replace(sample, fp32_labels=logits.argmax(1).numpy().astype(sample.labels.dtype))


def read_plan(path: str | Path) -> dict[str, Any]:
    """The plan beside `path` (an `.onnx` model or the `.json` itself)."""
    p = Path(path)
    p = p if p.suffix == ".json" else plan_path(p)
    try:
        plan = json.loads(p.read_text())
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the inference plan ({e.strerror})") from None
    except ValueError:
        raise ConfigError(f"{p}: the inference plan is not valid JSON") from None
    if plan.get("format") != PLAN_FORMAT:
        raise ConfigError(f"{p}: not a unetkit inference plan (format {plan.get('format')!r})")
    return plan


def tile_config_from_plan(plan: dict[str, Any]) -> TileConfig:
    """The engine's `TileConfig` for a plan (activation "none": the graph returns probabilities)."""
    t = plan["tile"]
    return TileConfig(tile_size=tuple(t["size"]), overlap=t["overlap"], blend=t["blend"], sigma_scale=t["sigma_scale"],
                      batch_size=t["batch_size"], padding=t["padding"], tta=t["tta"],
                      tta_views=t.get("tta_views", "dihedral"), tta_temperature=float(t.get("tta_temperature", 1.0)),
                      activation="none",
                      resolution=float(t.get("resolution", 1.0)),
                      resolutions=tuple(float(r) for r in t.get("resolutions", ())),
                      resolutions_temperature=float(t.get("resolutions_temperature", 1.0)))
