"""COCO annotation JSON (instances, stuff, CVAT / Roboflow / Label Studio "COCO" exports) as class masks.

A COCO file lists `images` (`id`, `file_name`, `width`, `height`), `categories` (`id`, `name`) and
`annotations` (`image_id`, `category_id`, `iscrowd`, `segmentation`). A segmentation is a list of
polygons `[[x1, y1, x2, y2, ...], ...]` or a run-length encoding `{"size": [h, w], "counts": ...}`
(uncompressed or pycocotools' compressed string; `rle.py` decodes both: no pycocotools).

`coco_mask(path, image_id)` paints one image's annotations into a raw mask of category ids:
- pixels no annotation covers: `background` (0; one above the largest id when a category uses 0;
  a category named "background" is used as it is);
- crowd regions (`iscrowd: 1`) paint their category first (a crowd of people is people; only the
  individuals are not outlined), then the other objects paint over them;
- where objects of different categories overlap, `raster.VOID` (ignored; see `raster.paint`).

`read_coco_layout(root)` finds the COCO files of a data folder (`coco_files`), their images and
splits (from the file names). Every file is checked when read (`load_coco`): an unknown image or category id, a polygon reaching
more than `SLACK` pixels outside its image, a malformed RLE is a `DataError` naming the file, the
annotation and what was expected. Files without `annotations` (COCO's `image_info_test*.json`) list
unlabelled images.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetkit.data.layout import json_files
from unetkit.data.manifest import ManifestRow, file_version, json_starts_like, read_json, split_name
from unetkit.data.raster import VOID, overlay, paint, polygon_mask
from unetkit.data.rle import rle_runs, runs_to_mask
from unetkit.errors import DataError

SLACK = 1.0  # pixels a polygon point may stray outside its image (annotation tools round outwards)
_HEAD = 1 << 16  # bytes read to recognise a COCO file without parsing it


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class CocoFile:
    path: Path
    images: dict[int, CocoImage]  # in file order
    categories: tuple[tuple[int, str], ...]  # (id, name) by id
    background: int  # raw value of pixels no annotation covers
    annotations: dict[int, list[dict]] | None  # image id -> its annotations; None: an unlabelled image list

    @property
    def labelled(self) -> bool:
        return self.annotations is not None


def looks_like_coco(path: Path) -> bool:
    """A JSON object whose start holds an `"images": [` list (without parsing a large file)."""
    return json_starts_like(path, "{", r'"images"\s*:\s*\[', _HEAD)


def load_coco(path: str | Path) -> CocoFile:
    """The checked contents of a COCO file (parsed once per file version and process)."""
    return _load(*file_version(Path(path), "the COCO file"))


@functools.lru_cache(maxsize=8)
def _load(name: str, mtime_ns: int, size: int) -> CocoFile:
    path = Path(name)
    data = read_json(path, "the COCO file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: expected a COCO object with images, annotations and categories lists")
    images: dict[int, CocoImage] = {}
    for i, im in enumerate(data["images"]):
        ok = isinstance(im, dict) and _int(im.get("id")) and isinstance(im.get("file_name"), str)
        ok = ok and _int(im.get("width")) and _int(im.get("height")) and im["width"] > 0 and im["height"] > 0
        if not ok:
            raise DataError(f"{path}: images[{i}]: expected {{id, file_name, width, height}}, got {_short(im)}")
        if im["id"] in images:
            raise DataError(f"{path}: images[{i}]: image id {im['id']} repeats; expected unique ids")
        images[im["id"]] = CocoImage(im["id"], im["file_name"], im["height"], im["width"])
    categories = _categories(path, data.get("categories"))
    background = _background(categories)
    if "annotations" not in data:
        return CocoFile(path, images, categories, background, None)
    if not isinstance(data["annotations"], list):
        raise DataError(f"{path}: annotations: expected a list of objects")
    known = dict(categories)
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotation {ann.get('id', i) if isinstance(ann, dict) else i}"
        if not isinstance(ann, dict):
            raise DataError(f"{where}: expected an object with image_id, category_id, segmentation")
        if ann.get("image_id") not in images:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in images; expected an id listed there")
        image = images[ann["image_id"]]
        where += f" (image {image.id}, {image.file_name})"
        if ann.get("category_id") not in known:
            listed = ", ".join(f"{c} ({n})" for c, n in categories[:10])
            raise DataError(f"{where}: unknown category_id {ann.get('category_id')!r}; expected one of {listed}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise DataError(f"{where}: iscrowd {ann.get('iscrowd')!r}; expected 0 or 1")
        _check_segmentation(where, ann.get("segmentation"), image)
        per_image[image.id].append(ann)
    return CocoFile(path, images, categories, background, per_image)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _categories(path: Path, cats: object) -> tuple[tuple[int, str], ...]:
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{path}: categories: expected a non-empty list of {{id, name}}")
    seen: dict[int, str] = {}
    for i, c in enumerate(cats):
        if not (isinstance(c, dict) and _int(c.get("id")) and isinstance(c.get("name"), str) and c["name"]):
            raise DataError(f"{path}: categories[{i}]: expected {{id, name}}, got {_short(c)}")
        if not 0 <= c["id"] < VOID:
            raise DataError(f"{path}: categories[{i}]: id {c['id']}; expected 0 to {VOID - 1}")
        if c["id"] in seen:
            raise DataError(f"{path}: categories[{i}]: id {c['id']} repeats; expected unique ids")
        seen[c["id"]] = c["name"]
    return tuple(sorted(seen.items()))


def _background(categories: tuple[tuple[int, str], ...]) -> int:
    named = [c for c, n in categories if n.lower() == "background"]
    if named:
        return named[0]
    ids = [c for c, _ in categories]
    return 0 if 0 not in ids else max(ids) + 1


def _check_segmentation(where: str, seg: object, image: CocoImage) -> None:
    if isinstance(seg, dict):
        rle_counts(seg, image, where)
        return
    if not isinstance(seg, list) or not seg:
        raise DataError(f"{where}: segmentation {_short(seg)}; expected polygons [[x1, y1, ...]] or an RLE "
                        "{size, counts} (a box alone is no mask)")
    for polygon in seg:
        try:
            points = np.asarray(polygon, np.float64) if isinstance(polygon, list) else np.zeros(0)
        except (TypeError, ValueError):
            points = np.zeros(0)
        if points.ndim != 1 or len(points) < 6 or len(points) % 2:
            raise DataError(f"{where}: polygon {_short(polygon)}; expected [x1, y1, x2, y2, x3, y3, ...] numbers")
        points = points.reshape(-1, 2)
        outside = ((points < -SLACK) | (points > np.array([image.width, image.height]) + SLACK)).any(axis=1)
        if outside.any() or not np.isfinite(points).all():
            x, y = points[np.argmax(outside | ~np.isfinite(points).all(axis=1))]
            raise DataError(f"{where}: polygon point ({x:g}, {y:g}) is outside the {image.width}x{image.height} "
                            f"image; expected x in 0..{image.width}, y in 0..{image.height}")


def rle_counts(rle: dict, image: CocoImage, where: str) -> np.ndarray:
    """The checked run lengths of an annotation's RLE, which must be its image's size."""
    if rle.get("size") != [image.height, image.width]:
        raise DataError(f"{where}: RLE size {_short(rle.get('size'))}; expected [height, width] = "
                        f"[{image.height}, {image.width}] of the image")
    return rle_runs(rle, where)


def coco_mask(path: str | Path, image_id: int, max_pixels: int | None = None) -> np.ndarray:
    """The raw mask of image `image_id` of the COCO file at `path`: category ids (module docstring)."""
    coco = load_coco(path)
    image = coco.images.get(image_id)
    if image is None or coco.annotations is None:
        raise DataError(f"{path}: image id {image_id} has no annotations in this file")
    if max_pixels is not None and image.height * image.width > max_pixels:
        raise DataError(f"{path}: image {image_id} is {image.width}x{image.height}, more than {max_pixels} pixels")
    shape = (image.height, image.width)
    layers: dict[bool, list[tuple[np.ndarray, int]]] = {True: [], False: []}
    for ann in coco.annotations[image_id]:
        layers[bool(ann.get("iscrowd", 0))].append((_shape_mask(ann, image, f"{path}: annotation"), ann["category_id"]))
    crowd = paint(layers[True], coco.background, shape)
    return overlay(paint(layers[False], coco.background, shape), crowd, coco.background)


def _shape_mask(ann: dict, image: CocoImage, where: str) -> np.ndarray:
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        return runs_to_mask(rle_counts(seg, image, where), image.height, image.width)
    mask = np.zeros((image.height, image.width), bool)
    for polygon in seg:
        mask |= polygon_mask(np.asarray(polygon, np.float64).reshape(-1, 2), image.height, image.width)
    return mask


# ---------------------------------------------------------------- the layout: files, images, splits

_COCO_OTHER = ("captions_", "person_keypoints_", "panoptic_")  # COCO files that hold no class masks
_COCO_NAMES = ("instances_", "stuff_", "image_info_")  # COCO's own names, which count in the data folder too


def coco_files(root: Path) -> list[Path]:
    """The COCO files of `root`: any in `annotations/`; in `root` itself only those named as COCO names
    them (`instances_*`, `stuff_*`, `image_info_*`, Roboflow's `*.coco.json`), so a `coco.json` of
    predictions beside `images/` + `masks/` (`unetkit rank --export`) leaves the masks the labels.
    Of those: `instances_*` (else `stuff_*`) with `image_info_*` image lists, else every COCO file
    except captions, key points and panoptic."""
    named = [p for p in json_files(root)
             if p.parent != root or p.name.startswith(_COCO_NAMES) or p.name.endswith(".coco.json")]
    found = [p for p in named if looks_like_coco(p)]
    for prefix in ("instances_", "stuff_"):
        if any(p.name.startswith(prefix) for p in found):
            return [p for p in found if p.name.startswith((prefix, "image_info_"))]
    return [p for p in found if not p.name.startswith(_COCO_OTHER)]


def _split_token(stem: str) -> tuple[str, str]:
    """(split, folder token) from a file name: `instances_train2017` -> (`train`, `train2017`)."""
    for token in reversed(re.split(r"[_\-.]", stem)):
        split = split_name(token.rstrip("0123456789"))
        if split:
            return split, token
    return "", ""


def read_coco_layout(root: Path) -> tuple[list[ManifestRow], list[tuple[str, int, None]], tuple[tuple[str, int], ...]]:
    """(rows: one per labelled image, `mask` its COCO file, `entry` its id; classes (name, value, None);
    unlabelled (file, n images)) of the COCO files of `root`."""
    files = coco_files(root)
    if not files:
        raise DataError(f"{root}: no COCO JSON in annotations/; expected e.g. annotations/instances_train.json")
    rows: list[ManifestRow] = []
    unlabelled: list[tuple[str, int]] = []
    first: CocoFile | None = None
    for path in files:
        data = load_coco(path)
        if not data.labelled:
            unlabelled.append((path.relative_to(root).as_posix(), len(data.images)))
            continue
        if first is None:
            first = data
        elif data.categories != first.categories:
            raise DataError(f"{path}: categories differ from {first.path.name}'s; expected the same categories "
                            "in every COCO file of a data set")
        split, token = _split_token(path.stem)
        bases = [root / "images" / token, root / token] if token else []
        bases = [b for b in [*bases, root / "images", root, path.parent] if b.is_dir()]
        for image in data.images.values():
            found = _image_file(bases, image.file_name)
            if found is None:
                looked = ", ".join(f"{b.relative_to(root).as_posix()}/" for b in bases)
                raise DataError(f"{path}: image {image.id} {image.file_name} not found in {looked}; "
                                "expected the image files beside the annotations")
            rows.append(ManifestRow("", found, path, None, split, entry=str(image.id)))
    if first is None:
        raise DataError(f"{files[0]}: no annotations in any COCO file; expected one with an annotations list")
    classes: list[tuple[str, int, None]] = [(n, c, None) for c, n in first.categories]
    if first.background not in [c for c, _ in first.categories]:
        classes.insert(0, ("background", first.background, None))
    return rows, classes, tuple(unlabelled)


def _image_file(bases: list[Path], file_name: str) -> Path | None:
    names = [file_name, Path(file_name).name]
    return next((b / n for b in bases for n in names if (b / n).is_file()), None)
