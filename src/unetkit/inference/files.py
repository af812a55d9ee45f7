"""Segment image files with a model artifact and write masks, overlays and probability maps.

`predict_files` runs here, one input after another; `inference.distributed` spreads the same
per-input work (`predict_input`, and `streaming.predict_rows` for the stripes of a streamed input)
over a Ray cluster. An input too large for memory is streamed (`route`): read a band of rows at a
time and written as a tiled BigTIFF or zarr store; one that cannot be streamed is refused, with a
command that converts it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np

from unetkit.artifact import Artifact, load_artifact
from unetkit.config import OutputConfig, TileChoice, TileConfig, replace
from unetkit.data.io import (
    DEFAULT_MAX_PIXELS,
    image_header,
    read_image,
    write_png,
    write_text_atomic,
    write_tiff,
)
from unetkit.errors import ConfigError, DataError, InputError, UnetkitError
from unetkit.inference import vectorize
from unetkit.inference.backends import make_predictor
from unetkit.inference.outputs import colorize, overlay
from unetkit.inference.postprocess import apply_postprocess
from unetkit.inference.predict import VIEW_SETS, predict_tiled
from unetkit.inference.streaming import open_lazy, predict_stream
from unetkit.tracing import NO_TRACE, JobTrace, Tracing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp"}


def collect_inputs(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Files and folders -> (file, output stem relative to the out folder), sorted, names unique."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir() and not is_zarr(item):
            files = sorted(p for p in item.rglob("*") if (p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() or is_zarr(p))
                           and not any(is_zarr(parent) for parent in p.relative_to(item).parents if parent.name))
            if not files:
                raise InputError(f"{item}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}, .zarr)")
            found += [(p, p.relative_to(item).parent / output_stem(p)) for p in files]
        elif item.is_file() or is_zarr(item):
            found.append((item, Path(output_stem(item))))
        else:
            raise InputError(f"{item}: no such file or folder")
    seen: dict[Path, Path] = {}
    for path, stem in found:
        if stem in seen:
            raise InputError(f"{path} and {seen[stem]} would write the same output name '{stem}'; predict them separately")
        seen[stem] = path
    return found


def is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" and path.is_dir()


def output_stem(path: Path) -> str:
    """The name outputs start with: the file name without its suffix (and without `.ome`)."""
    stem = path.stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def tile_config_for(artifact: Artifact, choice: TileChoice = None) -> TileConfig:
    """The tiling to run `artifact` with: the model's own, with what `choice` sets in its place.

    The model's own tiling is an exported model's plan (`DeployedModel.tile_config`), or for an
    artifact TileConfig's defaults with the artifact's patch size as tile size, its TTA choice
    (`ArtifactMeta.tta`, `tta_temperature`), the views its training showed it (`trained_views`), the resolution it
    was trained at (`ArtifactMeta.resolution`) and its multi-scale choice (`ArtifactMeta.resolutions`). Only the fields
    `choice` sets override it (see `unetkit.config.TileChoice`); nothing is compared with a default.
    Views a mapping asks for must be among the model's own (`check_views`).
    """
    settings = tile_settings(choice)
    exported = callable(getattr(artifact, "tile_config", None))
    own = (artifact.tile_config() if exported  # type: ignore[attr-defined]
           else TileConfig(tile_size=tuple(artifact.meta.patch_size), tta=artifact.meta.tta,
                           tta_temperature=artifact.meta.tta_temperature,
                           tta_views=trained_views(artifact.meta.train_config), resolution=artifact.meta.resolution,
                           resolutions=tuple(artifact.meta.resolutions),
                           resolutions_temperature=artifact.meta.resolutions_temperature))
    if isinstance(choice, Mapping) and "tta_views" in settings:  # a complete TileConfig is taken as given
        check_views(settings["tta_views"], own.tta_views, artifact.path or "model")
    return artifact.tile_config(settings) if exported else replace(own, **settings)  # type: ignore[attr-defined]


def check_views(asked: str, own: str, where: object) -> None:
    """Refuse TTA views (`TileConfig.tta_views`) a model's own set does not hold: an upright model
    ("mirror") never saw the upside-down views of "flips" or the turns of "dihedral"."""
    if asked not in VIEW_SETS:
        raise ConfigError(f"tta_views '{asked}': expected one of {', '.join(VIEW_SETS)}")
    if not set(VIEW_SETS[asked]) <= set(VIEW_SETS[own]):
        fewer = [name for name, views in VIEW_SETS.items() if set(views) <= set(VIEW_SETS[own])]
        raise ConfigError(f"{where}: TTA views '{asked}' include views this model was not trained on (its own: "
                          f"'{own}'); choose {' or '.join(fewer)}")


def trained_views(train_config: Mapping[str, Any] | None) -> str:
    """The TTA views a model's training augmentation showed it: "mirror" for a model trained upright
    (`augment.flip_vertical` off), whose upside-down and rotated views would only add errors."""
    augment = (train_config or {}).get("augment", {})
    return "mirror" if augment.get("flip_vertical", True) is False else "dihedral"


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


# ---------------------------------------------------------------- in memory or streamed


CONVERT_HINT = ("convert it to a tiled BigTIFF first, e.g. `vips tiffsave {path} {stem}.tif --tile --tile-width 512 "
                "--tile-height 512 --bigtiff --compression deflate` (libvips) or `gdal_translate -co TILED=YES -co BIGTIFF=YES "
                "-co COMPRESS=DEFLATE {path} {stem}.tif` (GDAL), and predict that")


def in_memory_bytes(height: int, width: int, channels: int, classes: int, multiscale: bool = False) -> int:
    """About what predicting an image in memory holds: the decoded file and its float32 copy, the
    float32 probabilities and what labels and postprocessing make of them; multi-scale inference
    (`TileConfig.resolutions`) also holds the running sum and one scale's native-size maps."""
    return height * width * (8 * channels + 8 * classes * (2 if multiscale else 1) + 2)


def route(path: Path, classes: int, max_memory: int | None = None, multiscale: bool = False) -> str:
    """"memory" or "stream": how `path` is predicted. An input is streamed when it is too large for
    memory (more pixels than `data.io.DEFAULT_MAX_PIXELS`, or `in_memory_bytes` above `max_memory`)
    and stored in chunks (tiled or striped TIFF / OME-TIFF) or a zarr store; one too large that is
    decoded whole (PNG, JPEG, a one-strip TIFF) is refused with a command that converts it."""
    if is_zarr(path):
        return "stream"
    try:
        header = image_header(path)
    except DataError as e:
        if "decompression bomb" not in str(e):
            return "memory"  # reading it reports what is wrong
        raise InputError(f"{path}: larger than an image can be decoded whole; " + CONVERT_HINT.format(
            path=path, stem=output_stem(path))) from None
    pixels = header.height * header.width
    need = in_memory_bytes(header.height, header.width, header.channels, classes, multiscale)
    too_big = pixels > DEFAULT_MAX_PIXELS or (max_memory is not None and need > max_memory)
    if not too_big:
        return "memory"
    if header.chunked:
        return "stream"
    why = (f"{pixels:,} pixels, over the in-memory limit of {DEFAULT_MAX_PIXELS:,}" if pixels > DEFAULT_MAX_PIXELS else
           f"about {need / 2**20:,.0f} MiB in memory, over --max-memory {max_memory / 2**20:,.0f} MiB")  # type: ignore[operator]
    kind = "one-strip TIFF" if header.format == "TIFF" else header.format
    raise InputError(f"{path}: {header.width}x{header.height} {kind} needs {why}, and a {kind} is decoded whole so it "
                     "cannot be streamed; " + CONVERT_HINT.format(path=path, stem=output_stem(path)))


def stream_outputs(out: Path, stem: Path, outputs: OutputConfig) -> list[tuple[Path, str]]:
    """The files of a streamed input: `<stem>_mask.tif|.zarr` (labels) and `<stem>_prob.tif|.zarr`
    (`(H, W, K)` float16)."""
    target = out / stem
    suffix = "." + outputs.stream_format
    files = [(target.with_name(target.name + "_mask" + suffix), "labels")]
    if outputs.probabilities:
        files.append((target.with_name(target.name + "_prob" + suffix), "float16"))
    return files


def streamed_extras(outputs: OutputConfig) -> list[str]:
    """Outputs asked for that a streamed input does not get (they need the whole label map)."""
    return [name for name in ("colour", "overlays", "geojson", "coco") if getattr(outputs, name)]


# ---------------------------------------------------------------- one input


@dataclass
class InputResult:
    """What predicting one input wrote and took. `coco_image` / `coco_annotations`: its COCO
    entries (ids are numbered over all inputs by `coco_document`)."""

    path: Path
    stem: Path
    written: list[Path]
    pixels: int
    seconds: float
    streamed: bool = False
    coco_image: dict[str, Any] | None = None
    coco_annotations: list[dict[str, Any]] = field(default_factory=list)


def predict_input(
    artifact: Any, predictor: Any, tile: TileConfig, path: Path, stem: Path, out: Path, outputs: OutputConfig, *,
    progress: bool = False, trace: JobTrace = NO_TRACE,
) -> InputResult:
    """Predict one input and write its outputs (each atomically); an in-memory input's masks,
    overlays, probabilities and GeoJSON, or a streamed input's tiled BigTIFF / zarr. `trace`: spans
    read -> forward -> postprocess -> write (a streamed input: one "stream" span) in the one open."""
    start = time.perf_counter()
    out.joinpath(stem).parent.mkdir(parents=True, exist_ok=True)
    if route(path, len(artifact.meta.class_names), outputs.max_memory, bool(tile.resolutions)) == "stream":
        with trace.span("stream"):
            return _predict_streamed(predictor, tile, path, stem, out, outputs, progress, start)
    with trace.span("read") as span:
        image = read_image(path)
        trace.annotate(span, **{"unetkit.image.shape": list(image.shape)})
    with trace.span("forward", **{"unetkit.backend": str(getattr(predictor, "backend", "")),
                                  "unetkit.tile": list(tile.tile_size), "unetkit.tta": tile.tta}):
        probs = predict_tiled(predictor, image, tile)
    with trace.span("postprocess"):
        labels = labels_from_probabilities(probs, artifact)
    names = artifact.meta.class_names
    target = out / stem
    with trace.span("write") as span:
        written = [write_png(target.with_name(target.name + "_mask.png"),
                             colorize(labels, artifact.meta.colors()) if outputs.colour else labels)]
        if outputs.overlays:
            written.append(write_png(target.with_name(target.name + "_overlay.png"),
                                     overlay(image, labels, artifact.meta.colors())))
        if outputs.probabilities:
            written.append(write_tiff(target.with_name(target.name + "_prob.tif"), probs.astype(np.float32)))
        if outputs.geojson:
            features = vectorize.labels_to_geojson(labels, names, transform=vectorize.read_geotransform(path),
                                                   properties={"image": str(path)})
            written.append(write_text_atomic(target.with_name(target.name + ".geojson"), json.dumps(features)))
        trace.annotate(span, **{"unetkit.files": [str(p) for p in written]})
    result = InputResult(path, stem, written, labels.size, time.perf_counter() - start)
    if outputs.coco:
        result.coco_image = {"file_name": str(stem), "height": labels.shape[0], "width": labels.shape[1]}
        result.coco_annotations = vectorize.coco_annotations(labels, names)
    return result


def _predict_streamed(predictor: Any, tile: TileConfig, path: Path, stem: Path, out: Path, outputs: OutputConfig,
                      progress: bool, start: float) -> InputResult:
    from tqdm import tqdm

    files = stream_outputs(out, stem, outputs)
    probabilities = files[1][0] if len(files) > 1 else None
    lazy = open_lazy(path)
    _, height, width = lazy.shape
    lazy.close()
    with tqdm(total=width * height, unit="px", unit_scale=True, desc=f"stream {path.name}", disable=not progress) as bar:
        predict_stream(predictor, path, files[0][0], tile, probabilities_path=probabilities,
                       max_memory=outputs.max_memory, on_rows=lambda rows: bar.update(rows * width))
    return InputResult(path, stem, [p for p, _ in files], height * width, time.perf_counter() - start, streamed=True)


def coco_document(results: Sequence[InputResult], class_names: Sequence[str]) -> dict[str, Any]:
    """One COCO document for the inputs' results, numbered in their order (images from 1,
    annotations from 1), whichever order they were predicted in."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for r in results:
        if r.coco_image is None:
            continue
        images.append({"id": len(images) + 1, **r.coco_image})
        for ann in r.coco_annotations:
            annotations.append({**ann, "id": len(annotations) + 1, "image_id": len(images)})
    return {"images": images, "annotations": annotations, "categories": vectorize.coco_categories(class_names)}


def failure_message(path: Path, error: Exception) -> str:
    return str(error) if str(path) in str(error) else f"{path}: {error}"  # every message names its file


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
    stream_format: str = "tif",
    max_memory: int | None = None,
    backend: str = "auto",
    progress: bool = True,
    on_note: Callable[[str], None] | None = None,
    tracing: Tracing | None | Literal["env"] = "env",
) -> list[Path]:
    """Write `<stem>_mask.png` (+ `_overlay.png`, `_prob.tif`, `.geojson`) for each input and, with
    `coco`, one `coco.json` for all of them; returns the files written. An input too large for
    memory is streamed to `<stem>_mask.tif|.zarr` (+ `_prob`), see `OutputConfig`.

    `model`: an artifact (path or loaded) or an exported model opened with
    `unetkit.export.deployed.load_model` (same `meta`, plus its own predictor and tiling).
    `config`: the tiling asked for, over the model's own (`tile_config_for`).

    GeoJSON polygons are in pixel coordinates, or in map coordinates when the input is a GeoTIFF
    (see `inference.vectorize`). A bad input file does not stop the others; they are all
    reported at the end. `on_note` receives what the user should know (a streamed input gets no
    overlay), once each.

    `tracing`: OpenTelemetry spans of the run ("env": as the standard OTEL_* variables say, off when
    they say nothing; `unetkit.tracing`): a "predict" root (a child of the `TRACEPARENT` variable's
    trace), one "predict input" span per input with read -> forward -> postprocess -> write inside,
    a failed input's span marked as an error.
    """
    from tqdm import tqdm

    artifact = load_artifact(model) if isinstance(model, (str, Path)) else model
    outputs = OutputConfig(colour=colour, probabilities=probabilities, overlays=overlays, geojson=geojson, coco=coco,
                           stream_format=stream_format, max_memory=max_memory)  # type: ignore[arg-type]
    files = collect_inputs(inputs)
    tracer = Tracing.from_environment(service="unetkit-predict") if tracing == "env" else tracing
    trace = JobTrace(tracer, "predict", {"unetkit.model": str(getattr(artifact, "path", "") or artifact.meta.name),
                                         "unetkit.inputs": len(files), "unetkit.backend.asked": backend})
    try:
        with trace.span("load model") as span:
            predictor = make_predictor(artifact, backend=backend)
            trace.annotate(span, **{"unetkit.backend": str(getattr(predictor, "backend", backend))})
        tile = tile_config_for(artifact, config)
        out = Path(out_dir)
        results: list[InputResult] = []
        failed: list[str] = []
        for path, stem in tqdm(files, desc="predict", unit="img", disable=not progress or len(files) < 2):
            with trace.span("predict input", **{"unetkit.input": str(path)}) as span:
                try:
                    results.append(predict_input(artifact, predictor, tile, path, stem, out, outputs, progress=progress,
                                                 trace=trace))
                except UnetkitError as e:
                    failed.append(failure_message(path, e))
                    trace.failed(span, failed[-1])
                else:
                    trace.annotate(span, **{"unetkit.pixels": results[-1].pixels})
    except BaseException as e:
        trace.close(e)
        raise
    trace.close(failure=f"{len(failed)} of {len(files)} inputs failed" if failed else "",
                **{"unetkit.predicted": len(results), "unetkit.failed": len(failed)})
    for note in run_notes(results, outputs, artifact):
        (on_note or print)(note)
    written = [p for r in results for p in r.written]
    if coco and any(r.coco_image for r in results):
        written.append(write_text_atomic(out / "coco.json", json.dumps(coco_document(results, artifact.meta.class_names))))
    if failed:
        if len(files) == 1:
            raise InputError(failed[0])
        raise InputError(f"{len(failed)} of {len(files)} inputs failed (the others were written to {out}): " + "; ".join(failed))
    return written


def run_notes(results: Sequence[InputResult], outputs: OutputConfig, artifact: Any) -> list[str]:
    """What a user should know about streamed inputs: the outputs they did not get, and that their
    masks are arg-max when the model has tuned postprocessing."""
    streamed = [r for r in results if r.streamed]
    if not streamed:
        return []
    notes = [f"streamed {len(streamed)} large input(s) to tiled {outputs.stream_format} outputs (masks as class indices)"]
    if extras := streamed_extras(outputs):
        notes.append(f"not written for streamed inputs (they need the whole label map in memory): {', '.join(extras)}")
    if artifact.meta.postprocess:
        notes.append("streamed masks are the arg-max: the model's tuned postprocessing needs the whole image")
    return notes
