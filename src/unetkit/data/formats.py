"""Data sets laid out as they are published, read without renaming anything.

Each reader turns a folder into `ManifestRow`s (key, image, mask, split[, channels]) and, where
the format names its classes, `(name, value, colour)` triples:

- `lists`: release list files `train.txt` / `val.txt` / `test.txt`, one `image label` pair per
  line, paths as in the release (SegNet's CamVid: `/SegNet/CamVid/train/x.png ...`); a path is
  found under the data folder by its longest existing tail.
- `folders`: sibling folders `X/` + `Xannot/` (or `X_labels/`, `Xmasks/`, ...), paired by file
  name; `train`, `val`, `test` folders give the split.
- `voc`: Pascal VOC / CVAT "Segmentation mask 1.1": `JPEGImages/`, `SegmentationClass/`
  (palette or colour PNGs), `labelmap.txt` (`name:r,g,b::`), `ImageSets/Segmentation/*.txt`.
- `nnunet`: nnU-Net raw: `dataset.json`, `imagesTr/{case}_0000{ending}` (one file per channel),
  `labelsTr/{case}{ending}`, `imagesTs/` with `labelsTs/` as the test split (without: unlabelled).
- `coco`: COCO JSON (`annotations/instances_train2017.json`, CVAT's `instances_default.json`, ...)
  beside the images (`train2017/`, `images/`); polygons and RLE painted by `coco.py`; the split from
  the file name; files without annotations (`image_info_test2017.json`) list unlabelled images.
- `labelstudio`: Label Studio's JSON export (brush / polygon labels, `labelstudio.py`) beside the images.

The masks of `coco` and `labelstudio` live in the annotation file: a row's `mask` is that file and its
`entry` the image id / task id in it; `read_label` paints them (and reads every other mask file).

Bad input is a `DataError` naming the file and what was expected, raised before anything is written.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetkit.data import coco, labelstudio
from unetkit.data.io import DEFAULT_MAX_PIXELS, image_size, is_image_file, read_mask, read_palette
from unetkit.data.layout import glob_template, image_files, match_folders
from unetkit.data.manifest import ManifestRow, read_json, split_name
from unetkit.data.raster import VOID
from unetkit.errors import DataError

Colour = tuple[int, int, int]
NamedClass = tuple[str, "int | Colour", "Colour | None"]  # (name, mask value, display colour)

LIST_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing")
MASK_SUFFIXES = ("annot", "_annot", "_labels", "_label", "labels", "masks", "_masks", "mask", "_mask", "_gt")
VOC_VOID = 255  # VOC palette masks mark object boundaries/void with 255
LAYOUTS = {  # name -> what it is, in detection order
    "nnunet": "nnU-Net raw: dataset.json, imagesTr/, labelsTr/",
    "voc": "Pascal VOC / CVAT segmentation mask: JPEGImages/, SegmentationClass/",
    "coco": "COCO JSON: annotations/*.json beside the images",
    "labelstudio": "Label Studio JSON export (brush/polygon labels)",
    "lists": "release list files: image label per line",
    "folders": "sibling folders X/ + Xannot/",
}
PAINTED_LAYOUTS = {"coco": "image", "labelstudio": "task"}  # masks painted from an annotation file: what an entry is


@dataclass(frozen=True)
class Found:
    """What a reader found: its rows and, when the format names them, the classes and ignore values;
    `unlabelled` counts the images it holds without labels, per folder: `(folder under root, n)`."""

    layout: str
    rows: list[ManifestRow]
    classes: list[NamedClass] | None = None
    ignore: tuple = ()
    unlabelled: tuple[tuple[str, int], ...] = ()


def detect_layout(root: Path) -> Found | None:
    """The first published layout `root` is in, or None (then the template detection applies)."""
    for layout, looks_like in _LOOKS_LIKE.items():
        if looks_like(root):
            return read_layout(layout, root)
    return None


def read_label(layout: str, mask: Path, entry: str, image: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A sample's raw mask: painted from an annotation file (`coco`, `labelstudio`: `entry` is the
    image / task id in `mask`), else read from the mask file."""
    if not entry:
        return read_mask(mask, max_pixels)
    if layout == "coco":
        return coco.coco_mask(mask, int(entry), max_pixels)
    if layout == "labelstudio":
        size = image_size(image) if image.is_file() else None
        return labelstudio.task_mask(mask, int(entry), max_pixels, size)
    raise DataError(f"{mask}: entry {entry} of a {layout or 'template'} data set; only coco and labelstudio have entries")


def read_layout(layout: str, root: str | Path, classes: bool = True) -> Found:
    """The rows of `root` read as `layout`; with `classes=False` the (slower) class checks are skipped."""
    if layout == "voc":
        return _voc(Path(root), classes)
    readers: dict[str, Callable[[Path], Found]] = {
        "nnunet": _nnunet, "voc": _voc, "coco": _coco, "labelstudio": _labelstudio, "lists": _lists, "folders": _folders,
    }
    if layout not in readers:
        raise DataError(f"{root}: unknown layout {layout!r}; expected one of {', '.join(readers)}")
    return readers[layout](Path(root))


# ---------------------------------------------------------------- release list files


def _list_files(root: Path) -> list[Path]:
    return [root / f"{n}.txt" for n in LIST_NAMES if (root / f"{n}.txt").is_file()]


def _looks_like_lists(root: Path) -> bool:
    """A `train.txt` (or val/test) whose first line is two paths; any other text file is no list file."""
    for path in _list_files(root):
        try:
            first = next((ln for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()), "")
        except (OSError, UnicodeDecodeError):
            continue
        if len(first.split()) == 2:
            return True
    return False


def _lists(root: Path) -> Found:
    rows: list[ManifestRow] = []
    for list_file in _list_files(root):
        split = split_name(list_file.stem) or ""
        for lineno, line in _lines(list_file):
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{list_file}:{lineno}: expected `image label` (two paths), got {line!r}")
            image, mask = (_find(root, list_file, lineno, p) for p in parts)
            rows.append(ManifestRow("", image, mask, None, split))
    return Found("lists", _keyed(rows, root))


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the list file ({e})") from None
    return [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip() and not ln.startswith("#")]


def _find(root: Path, list_file: Path, lineno: int, text: str) -> Path:
    """The file a list names, as the release wrote it: the longest tail of its path under `root`."""
    parts = Path(text).parts
    for i in range(len(parts)):
        tail = Path(*parts[i:])
        if tail.is_absolute():
            continue
        for base in (list_file.parent, root):
            if (base / tail).is_file():
                return base / tail
    raise DataError(f"{list_file}:{lineno}: {text} not found under {root}; expected an existing file")


# ---------------------------------------------------------------- sibling folders


def _sibling_pairs(root: Path) -> list[tuple[Path, Path]]:
    dirs = {d.name: d for d in sorted(root.iterdir()) if d.is_dir()} if root.is_dir() else {}
    pairs = []
    for name, d in dirs.items():
        partner = next((dirs[name + s] for s in MASK_SUFFIXES if name + s in dirs), None)
        if partner is not None and image_files(d):
            pairs.append((d, partner))
    return pairs


def _folders(root: Path) -> Found:
    rows = []
    for image_dir, mask_dir in _sibling_pairs(root):
        image_t, mask_t, _, _ = match_folders(image_dir, mask_dir)
        image_keys = _keys_of(image_dir, image_t)
        mask_keys = _keys_of(mask_dir, mask_t)
        split = split_name(image_dir.name) or ""
        for key in sorted(image_keys.keys() | mask_keys.keys()):
            image = image_keys.get(key) or image_dir / image_t.replace("{key}", key)
            mask = mask_keys.get(key) or mask_dir / mask_t.replace("{key}", key)
            rows.append(ManifestRow(key, image, mask, None, split))
    return Found("folders", _unique_keys(rows, root))


def _keys_of(folder: Path, template: str) -> dict[str, Path]:
    return {k: files[0] for k, files in glob_template(folder, template).items()}


def _unique_keys(rows: list[ManifestRow], root: Path) -> list[ManifestRow]:
    """Keys are file stems; where stems repeat across folders, the image path under root."""
    counts = Counter(r.key for r in rows)
    return [
        r if counts[r.key] == 1 else dataclasses.replace(r, key=_rel(r.image, root))
        for r in rows
    ]


def _keyed(rows: list[ManifestRow], root: Path) -> list[ManifestRow]:
    rows = [dataclasses.replace(r, key=r.image.stem) for r in rows]
    rows = _unique_keys(rows, root)
    repeated = [k for k, n in Counter(r.key for r in rows).items() if n > 1]
    if repeated:
        raise DataError(f"{root}: image {repeated[0]} is listed more than once; each image once per data set")
    return rows


def _rel(path: Path, root: Path) -> str:
    try:
        return path.with_suffix("").relative_to(root).as_posix()
    except ValueError:
        return path.with_suffix("").as_posix()


# ---------------------------------------------------------------- Pascal VOC / CVAT


def read_labelmap(path: Path) -> list[tuple[str, Colour]]:
    """CVAT/VOC `labelmap.txt`: `name:r,g,b:parts:actions` per line, in class order."""
    classes = []
    for lineno, line in _lines(path):
        name, _, rest = line.partition(":")
        rgb = rest.split(":", 1)[0]
        try:
            colour = tuple(int(v) for v in rgb.split(","))
        except ValueError:
            colour = ()
        if not name or len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
            raise DataError(f"{path}:{lineno}: expected `name:r,g,b::`, got {line!r}")
        classes.append((name, colour))
    if not classes:
        raise DataError(f"{path}: no classes; expected one `name:r,g,b::` line per class")
    return classes  # type: ignore[return-value]


def _voc(root: Path, check_classes: bool = True) -> Found:
    mask_dir = root / "SegmentationClass"
    image_dir = next((root / n for n in ("JPEGImages", "images") if (root / n).is_dir()), None)
    if image_dir is None:
        raise DataError(f"{root}: SegmentationClass/ without JPEGImages/; expected the images in JPEGImages/")
    masks = {p.stem: p for p in image_files(mask_dir)}
    images = {p.stem: p for p in image_files(image_dir)}
    split_of: dict[str, str] = {}
    sets = root / "ImageSets" / "Segmentation"
    for list_file in sorted(sets.glob("*.txt")) if sets.is_dir() else []:
        split = split_name(list_file.stem)
        for lineno, line in _lines(list_file):
            stem = line.split()[0]
            if stem not in masks or stem not in images:
                what = "JPEGImages/" if stem not in images else "SegmentationClass/"
                raise DataError(f"{list_file}:{lineno}: {stem} has no file in {what}; expected an image and its mask")
            if split:
                split_of.setdefault(stem, split)
    rows = [
        ManifestRow(k, images.get(k, image_dir / f"{k}.jpg"), masks[k], None, split_of.get(k, ""))
        for k in sorted(masks)
    ]
    if not rows:
        raise DataError(f"{mask_dir}: no mask files; expected one PNG per labelled image")
    labelmap = root / "labelmap.txt"
    if not labelmap.is_file() or not check_classes:
        return Found("voc", rows)  # no labelmap.txt: the classes come from the masks
    named = read_labelmap(labelmap)
    classes, ignore = _voc_classes(named, [r.mask for r in rows], labelmap)
    return Found("voc", rows, classes, ignore)


def _voc_classes(
    named: list[tuple[str, Colour]], masks: list[Path], labelmap: Path
) -> tuple[list[NamedClass], tuple]:
    """Palette masks: class i is index i, its palette colour must be labelmap's; colour masks:
    every colour must be in labelmap.txt."""
    colours = [c for _, c in named]
    expected = ", ".join(f"{n} {c}" for n, c in named)
    kind = None
    for path in masks:
        raw = read_mask(path)
        this = "colour" if raw.ndim == 3 else "palette"
        if kind and this != kind:
            raise DataError(f"{path}: is a {this} mask but the others are {kind} masks; export all the same way")
        kind = this
        if raw.ndim == 3:
            codes = np.unique(raw.reshape(-1, 3), axis=0)
            unknown = [tuple(int(v) for v in c) for c in codes if tuple(int(v) for v in c) not in colours]
            if unknown:
                raise DataError(f"{path}: colour {unknown[0]} is not in {labelmap.name}; expected {expected}")
            continue
        palette = read_palette(path)
        for v in np.unique(raw).tolist():
            if v == VOC_VOID:
                continue
            colour = tuple(int(x) for x in palette[v]) if palette is not None and v < len(palette) else None
            if v >= len(named) or (colour is not None and colour != colours[v]):
                raise DataError(
                    f"{path}: palette index {v} (colour {colour}) is not class {v} of {labelmap.name}; expected {expected}"
                )
    if kind == "colour":
        return [(n, c, c) for n, c in named], ()
    return [(n, i, c) for i, (n, c) in enumerate(named)], (VOC_VOID,)


# ---------------------------------------------------------------- nnU-Net raw


def _nnunet(root: Path) -> Found:
    meta_path = root / "dataset.json"
    meta = read_json(meta_path, "dataset.json")
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected an object with channel_names, labels, file_ending")
    channels = meta.get("channel_names") or meta.get("modality")
    if not isinstance(channels, dict) or not channels:
        raise DataError(f"{meta_path}: channel_names: expected {{\"0\": \"name\", ...}}")
    ending = meta.get("file_ending", ".png")
    if not isinstance(ending, str) or not is_image_file(f"x{ending}"):
        raise DataError(f"{meta_path}: file_ending {ending!r}: unetkit reads 2-D images (.png, .tif, ...)")
    classes, ignore = _nnunet_labels(meta_path, meta.get("labels"))
    names = [str(channels[k]) for k in sorted(channels, key=int)]
    rows = _nnunet_cases(root, "imagesTr", "labelsTr", "train", names, ending)
    unlabelled: tuple[tuple[str, int], ...] = ()
    if (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir():
        rows += _nnunet_cases(root, "imagesTs", "labelsTs", "test", names, ending)
    elif (root / "imagesTs").is_dir():  # cases to predict on, not to score: reported, not sampled
        cases = _nnunet_cases(root, "imagesTs", "labelsTs", "test", names, ending)
        unlabelled = (("imagesTs", len(cases)),) if cases else ()
    return Found("nnunet", rows, classes, ignore, unlabelled)


def _nnunet_labels(path: Path, labels: object) -> tuple[list[NamedClass], tuple]:
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: labels: expected {{\"background\": 0, \"name\": 1, ...}}")
    pairs = []
    for k, v in labels.items():
        if isinstance(v, int) and not isinstance(v, bool):
            pairs.append((str(k), v))
        elif isinstance(v, str) and str(k).isdigit():  # nnU-Net v1: {"0": "background"}
            pairs.append((v, int(k)))
        else:
            raise DataError(f"{path}: labels.{k}: expected an integer label value (region-based labels are not supported)")
    ignore = tuple(v for n, v in pairs if n == "ignore")
    return [(n, v, None) for n, v in sorted(pairs, key=lambda p: p[1]) if n != "ignore"], ignore


def _nnunet_cases(root: Path, images: str, labels: str, split: str, channels: list[str], ending: str) -> list[ManifestRow]:
    image_dir, label_dir = root / images, root / labels
    if not image_dir.is_dir():
        raise DataError(f"{root}: no {images}/ folder; expected nnU-Net raw {images}/{{case}}_0000{ending}")
    pattern = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending))
    cases: dict[str, set[int]] = {}
    for p in sorted(image_dir.iterdir()):
        m = pattern.fullmatch(p.name)
        if m:
            cases.setdefault(m["case"], set()).add(int(m["channel"]))
    rows = []
    for case, present in sorted(cases.items()):
        for c, name in enumerate(channels):
            if c not in present:
                raise DataError(
                    f"{image_dir / f'{case}_{c:04d}{ending}'}: missing channel {c} ({name}) of case {case}; "
                    f"dataset.json lists {len(channels)} channel(s)"
                )
        files = [image_dir / f"{case}_{c:04d}{ending}" for c in range(len(channels))]
        rows.append(ManifestRow(case, files[0], label_dir / f"{case}{ending}", None, split, tuple(files[1:])))
    return rows


# ---------------------------------------------------------------- annotation files (coco.py, labelstudio.py)


def _coco(root: Path) -> Found:
    rows, classes, unlabelled = coco.read_coco_layout(root)
    return Found("coco", _keyed(rows, root), classes, (VOID,), unlabelled)


def _labelstudio(root: Path) -> Found:
    rows, classes, unlabelled = labelstudio.read_export_layout(root)
    return Found("labelstudio", _keyed(rows, root), classes, (VOID,), unlabelled)


_LOOKS_LIKE: dict[str, Callable[[Path], bool]] = {
    "nnunet": lambda root: (root / "dataset.json").is_file() and (root / "imagesTr").is_dir(),
    "voc": lambda root: (root / "SegmentationClass").is_dir(),
    "coco": lambda root: bool(coco.coco_files(root)),
    "labelstudio": lambda root: bool(labelstudio.export_files(root)),
    "lists": _looks_like_lists,
    "folders": lambda root: bool(_sibling_pairs(root)),
}
