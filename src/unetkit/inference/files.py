"""Segment image files with a model artifact and write masks, overlays and probability maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import Artifact, load_artifact
from unetkit.config import TileChoice, TileConfig, replace
from unetkit.data.io import read_image, write_png, write_text_atomic, write_tiff
from unetkit.errors import InputError, UnetkitError
from unetkit.inference import vectorize
from unetkit.inference.backends import make_predictor
from unetkit.inference.outputs import colorize, overlay
from unetkit.inference.postprocess import apply_postprocess
from unetkit.inference.predict import predict_tiled

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp"}


def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Files and folders -> (file, output stem relative to the out folder), sorted, names unique."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise InputError(f"{item}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += [(p, p.relative_to(item).with_suffix("")) for p in files]
        elif item.is_file():
            found.append((item, Path(item.stem)))
        else:
            raise InputError(f"{item}: no such file or folder")
    seen: dict[Path, Path] = {}
    for path, stem in found:
        if stem in seen:
            raise InputError(f"{path} and {seen[stem]} would write the same output name '{stem}'; predict them separately")
        seen[stem] = path
    return found


def tile_config_for(artifact: Artifact, choice: TileChoice = None) -> TileConfig:
    """The tiling to run `artifact` with: the model's own, with what `choice` sets in its place.

    The model's own tiling is an exported model's plan (`DeployedModel.tile_config`), or for an
    artifact TileConfig's defaults with the artifact's patch size as tile size. Only the fields
    `choice` sets override it (see `unetkit.config.TileChoice`); nothing is compared with a default.
    """
    settings = tile_settings(choice)
    if callable(getattr(artifact, "tile_config", None)):
        return artifact.tile_config(settings)  # type: ignore[attr-defined]
    return replace(TileConfig(tile_size=tuple(artifact.meta.patch_size)), **settings)


def tile_settings(choice: TileChoice) -> dict[str, Any]:
    """The TileConfig fields `choice` sets: a mapping's own, every field of a complete TileConfig
    except its activation (the model's predictor decides that), none for None. An empty tile size
    leaves the size to the model."""
    if isinstance(choice, TileConfig):
        settings = {f.name: getattr(choice, f.name) for f in fields(TileConfig) if f.name != "activation"}
    else:
        settings = dict(choice or {})
    if not settings.get("tile_size", True):
        del settings["tile_size"]
    return settings


def labels_from_probabilities(probabilities: np.ndarray, artifact: Artifact) -> np.ndarray:
    """Arg-max, or the artifact's tuned postprocessing when it has one."""
    if artifact.meta.postprocess:
        return apply_postprocess(probabilities, artifact.meta.postprocess)
    return probabilities.argmax(axis=0).astype(np.uint8)


def predict_files(
    model: str | Path | Artifact,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: TileChoice = None,
    *,
    colour: bool = False,
    probabilities: bool = False,
    overlays: bool = False,
    geojson: bool = False,
    coco: bool = False,
    backend: str = "auto",
    progress: bool = True,
) -> list[Path]:
    """Write `<stem>_mask.png` (+ `_overlay.png`, `_prob.tif`, `.geojson`) for each input and, with
    `coco`, one `coco.json` for all of them; returns the files written.

    `model`: an artifact (path or loaded) or an exported model opened with
    `unetkit.export.deployed.load_model` (same `meta`, plus its own predictor and tiling).
    `config`: the tiling asked for, over the model's own (`tile_config_for`).

    GeoJSON polygons are in pixel coordinates, or in map coordinates when the input is a GeoTIFF
    (see `inference.vectorize`). A bad input file does not stop the others; they are all
    reported at the end.
    """
    import json

    from tqdm import tqdm

    artifact = load_artifact(model) if isinstance(model, (str, Path)) else model
    files = collect_inputs(inputs)
    predictor = make_predictor(artifact, backend=backend)
    tile = tile_config_for(artifact, config)
    colors = artifact.meta.colors()
    out = Path(out_dir)
    written: list[Path] = []
    failed: list[str] = []
    names = artifact.meta.class_names
    coco_images: list[dict] = []
    coco_anns: list[dict] = []
    for path, stem in tqdm(files, desc="predict", unit="img", disable=not progress or len(files) < 2):
        try:
            image = read_image(path)
            probs = predict_tiled(predictor, image, tile)
        except UnetkitError as e:
            failed.append(str(e) if str(path) in str(e) else f"{path}: {e}")  # every message names its file
            continue
        labels = labels_from_probabilities(probs, artifact)
        target = out / stem
        target.parent.mkdir(parents=True, exist_ok=True)
        mask_file = target.with_name(target.name + "_mask.png")
        write_png(mask_file, colorize(labels, colors) if colour else labels)
        written.append(mask_file)
        if overlays:
            written.append(write_png(target.with_name(target.name + "_overlay.png"), overlay(image, labels, colors)))
        if probabilities:
            written.append(write_tiff(target.with_name(target.name + "_prob.tif"), probs.astype(np.float32)))
        if geojson:
            features = vectorize.labels_to_geojson(labels, names, transform=vectorize.read_geotransform(path),
                                                   properties={"image": str(path)})
            written.append(write_text_atomic(target.with_name(target.name + ".geojson"), json.dumps(features)))
        if coco:
            image_id = len(coco_images) + 1
            coco_images.append({"id": image_id, "file_name": str(stem), "height": labels.shape[0], "width": labels.shape[1]})
            coco_anns += vectorize.coco_annotations(labels, names, image_id=image_id, first_id=len(coco_anns) + 1)
    if coco and coco_images:
        doc = {"images": coco_images, "annotations": coco_anns, "categories": vectorize.coco_categories(names)}
        written.append(write_text_atomic(out / "coco.json", json.dumps(doc)))
    if failed:
        raise InputError(f"{len(failed)} of {len(files)} inputs failed (the others were written to {out}): " + "; ".join(failed))
    return written
