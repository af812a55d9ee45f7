"""Label Studio's JSON export (brush and polygon labels) as class masks.

The export is a list of tasks: `{"id", "data": {"image": URL, ...}, "annotations": [{"result": [...],
"was_cancelled": false}]}`. A brush region is `{"type": "brushlabels", "original_width",
"original_height", "value": {"format": "rle", "rle": [bytes], "brushlabels": [label]}}`; a polygon
region `{"type": "polygonlabels", "value": {"points": [[x%, y%], ...], "polygonlabels": [label]}}`
(percent of the image size). Other region types (boxes, key points) are not masks and are left out.

The brush RLE (thi.ng `rle-pack`, decoded by `rle.brush_values`) packs the RGBA bytes of the brush
canvas, row-major; a pixel is painted where its alpha is >= 128.

Classes: unpainted pixels are `background` (0), then the labels found in the export in name order
(1, 2, ...). Overlaps of different labels are `raster.VOID` (ignored). The first annotation of a task
that was not cancelled counts; tasks without one are unlabelled. A task's `data.split` (a field
imported with the tasks: train, val or test) gives the split; Label Studio has no split of its own.
Images are found under the export's folder by the tail of their URL (`/data/upload/3/1a2b3c4d-x.png`
-> `x.png` too: Label Studio prefixes uploads with 8 hex digits).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from unetkit.data.layout import json_files
from unetkit.data.manifest import ManifestRow, file_version, json_starts_like, read_json, split_name
from unetkit.data.raster import paint, polygon_mask
from unetkit.data.rle import brush_values
from unetkit.errors import DataError

BACKGROUND = 0
ALPHA_THRESHOLD = 128
MASK_TYPES = ("brushlabels", "polygonlabels")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
_HEAD = 1 << 16


@dataclass(frozen=True)
class Task:
    id: int
    image: str  # data.image as exported
    split: str  # data.split, or ""
    regions: tuple[dict, ...] | None  # the counted annotation's mask regions; None: unlabelled


@dataclass(frozen=True)
class Export:
    path: Path
    tasks: dict[int, Task]  # in file order
    labels: tuple[str, ...]  # sorted; class value = index + 1


def looks_like_export(path: Path) -> bool:
    """A JSON list whose first task has an `"annotations": [` list (without parsing a large file)."""
    return json_starts_like(path, "[", r'"annotations"\s*:\s*\[', _HEAD)


def load_export(path: str | Path) -> Export:
    """The checked tasks of an export (parsed once per file version and process)."""
    return _load(*file_version(Path(path), "the Label Studio export"))


@functools.lru_cache(maxsize=8)
def _load(name: str, mtime_ns: int, size: int) -> Export:
    path = Path(name)
    data = read_json(path, "the Label Studio export")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected Label Studio's JSON export: a list of tasks")
    tasks: dict[int, Task] = {}
    labels: set[str] = set()
    for i, task in enumerate(data):
        if not isinstance(task, dict) or not isinstance(task.get("id"), int):
            raise DataError(f"{path}: task {i + 1}: expected an object with id, data, annotations")
        where = f"{path}: task {task['id']}"
        image = (task.get("data") or {}).get("image") if isinstance(task.get("data"), dict) else None
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: no data.image; expected the URL or path of the image the task labels")
        split = (task.get("data") or {}).get("split", "")
        if not isinstance(split, str):
            raise DataError(f"{where}: data.split {split!r}; expected train, val, test or nothing")
        regions = _regions(where, task.get("annotations"))
        for r in regions or ():
            labels.add(_label(where, r))
        tasks[task["id"]] = Task(task["id"], image, split, regions)
    return Export(path, tasks, tuple(sorted(labels)))


def _regions(where: str, annotations: object) -> tuple[dict, ...] | None:
    if annotations is None:
        return None
    if not isinstance(annotations, list):
        raise DataError(f"{where}: annotations: expected a list")
    for ann in annotations:
        if not isinstance(ann, dict) or not isinstance(ann.get("result", []), list):
            raise DataError(f"{where}: annotation {_short(ann)}; expected {{result: [...]}}")
        if not ann.get("was_cancelled"):
            return tuple(r for r in ann.get("result", []) if isinstance(r, dict) and r.get("type") in MASK_TYPES)
    return None


def _label(where: str, region: dict) -> str:
    value = region.get("value")
    names = value.get(region["type"]) if isinstance(value, dict) else None
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
        raise DataError(f"{where}: region {region.get('id', '')}: value.{region['type']} {_short(names)}; "
                        "expected one label name")
    return names[0]


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def find_image(export: Path, root: Path, url: str, task_id: int) -> Path:
    """The image file a task's URL names, under `root` (see the module docstring)."""
    parsed = urlparse(url)
    text = unquote(parse_qs(parsed.query).get("d", [parsed.path])[0])
    parts = [p for p in Path(text).parts if p not in ("/", "\\")]
    tails = [Path(*parts[i:]) for i in range(len(parts))]
    stripped = _UPLOAD_PREFIX.sub("", parts[-1]) if parts else ""
    names = [*tails, *([Path(stripped)] if stripped and stripped != parts[-1] else [])]
    for base in (root, root / "images", export.parent):
        for name in names:
            if (base / name).is_file():
                return base / name
    looked = ", ".join(dict.fromkeys(str(n) for n in names[-2:]))
    raise DataError(f"{export}: task {task_id}: image {url} not found under {root} (looked for {looked}); "
                    "expected the image files beside the export or in images/")


def task_mask(
    path: str | Path, task_id: int, max_pixels: int | None = None, size: tuple[int, int] | None = None
) -> np.ndarray:
    """The raw mask of one task: 0 unpainted, label i of `Export.labels` as i + 1, VOID on overlaps.
    `size` (height, width: the image's) is the size of an annotation without regions (all background)."""
    export = load_export(path)
    task = export.tasks.get(task_id)
    where = f"{path}: task {task_id}"
    if task is None or task.regions is None:
        raise DataError(f"{where}: no annotation in this export")
    if not task.regions and size is not None:
        return np.full(size, BACKGROUND, np.int32)
    sizes = {(r.get("original_height"), r.get("original_width")) for r in task.regions}
    if len(sizes) != 1 or not all(isinstance(v, int) and v > 0 for v in next(iter(sizes))):
        raise DataError(f"{where}: original_width/original_height {sorted(sizes, key=str)}; expected one positive size")
    height, width = next(iter(sizes))
    if max_pixels is not None and height * width > max_pixels:
        raise DataError(f"{where}: {width}x{height} is more than {max_pixels} pixels")
    value = {name: i + 1 for i, name in enumerate(export.labels)}
    layers = [(_region_mask(where, r, height, width), value[_label(where, r)]) for r in task.regions]
    return paint(layers, BACKGROUND, (height, width))


def _region_mask(where: str, region: dict, height: int, width: int) -> np.ndarray:
    value = region["value"]
    if region["type"] == "polygonlabels":
        points = np.asarray(value.get("points"), np.float64) if isinstance(value.get("points"), list) else None
        if points is None or points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
            raise DataError(f"{where}: polygon {_short(value.get('points'))}; expected [[x%, y%], ...] points")
        return polygon_mask(points * [width / 100, height / 100], height, width)
    if value.get("format") != "rle" or not isinstance(value.get("rle"), list):
        raise DataError(f"{where}: brush value format {value.get('format')!r}; expected \"rle\" with an rle byte list")
    flat = brush_values(value["rle"], where, expected=height * width * 4)  # RGBA bytes
    return flat.reshape(height, width, 4)[..., 3] >= ALPHA_THRESHOLD


# ---------------------------------------------------------------- the layout: one export, its images


def export_files(root: Path) -> list[Path]:
    """The Label Studio JSON exports among `root`'s JSON files (`layout.json_files`)."""
    return [p for p in json_files(root) if looks_like_export(p)]


def read_export_layout(root: Path) -> tuple[list[ManifestRow], list[tuple[str, int, None]], tuple[tuple[str, int], ...]]:
    """(rows: one per annotated task, `mask` the export, `entry` the task id; classes (name, value, None);
    unlabelled (export, n tasks)) of the one export in `root`."""
    exports = export_files(root)
    if len(exports) != 1:
        listed = ", ".join(p.name for p in exports) or "none"
        raise DataError(f"{root}: {len(exports)} Label Studio exports ({listed}); expected one JSON export per data set")
    path = exports[0]
    export = load_export(path)
    rows, unlabelled = [], 0
    for task in export.tasks.values():
        if task.regions is None:
            unlabelled += 1
            continue
        split = split_name(task.split) if task.split else ""
        if split is None:
            raise DataError(f"{path}: task {task.id}: data.split {task.split!r}; expected train, val, test or nothing")
        rows.append(ManifestRow("", find_image(path, root, task.image, task.id), path, None, split, entry=str(task.id)))
    classes: list[tuple[str, int, None]] = [("background", BACKGROUND, None)]
    classes += [(name, i + 1, None) for i, name in enumerate(export.labels)]
    return rows, classes, ((path.relative_to(root).as_posix(), unlabelled),) if unlabelled else ()
