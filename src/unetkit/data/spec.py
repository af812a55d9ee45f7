"""What a data set is: where its files are and what its mask values mean.

`DatasetSpec` holds path templates (`training/images/{key}_training.tif`) relative to `root`, the
classes in index order (`classes[i].value` is the raw mask value or RGB colour of class `i`) and the
raw values to ignore. `detect_spec(root)` infers one from a folder; `save_spec`/`load_spec` keep it
as `unetkit-dataset.json`; `decode_mask(raw, spec)` turns a raw mask into a label map.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetkit.data.formats import LAYOUTS, PAINTED_LAYOUTS, Found, detect_layout
from unetkit.data.io import read_mask, read_palette, write_text_atomic
from unetkit.data.layout import KEY, image_files, match_folders
from unetkit.data.manifest import SPLITS, ManifestRow, read_json, read_manifest
from unetkit.data.raster import VOID
from unetkit.errors import DataError

IGNORE_INDEX = 255
SPEC_FILENAME = "unetkit-dataset.json"
SPEC_FORMAT = "unetkit-dataset"
MAX_CLASSES = 64  # more distinct values than this is an image or an instance map, not a class mask

Value = int | tuple[int, int, int]

_IMAGE_DIRS = ("images", "image", "imgs", "img", "inputs", "input", "raw")
_LABEL_TOKENS = ("label", "manual", "gt", "annot", "seg", "truth", "target")
_ROI_TOKENS = ("roi", "fov", "mask")
_SPLIT_DIRS = ("train", "training")


@dataclass(frozen=True)
class ClassInfo:
    name: str
    value: Value  # gray/palette value, or an (r, g, b) colour for colour-coded masks
    color: tuple[int, int, int] | None = None  # for display


@dataclass(frozen=True)
class DatasetSpec:
    root: str
    images: str = ""  # template relative to root, with {key}; empty when a manifest lists the files
    masks: str = ""
    roi: str = ""  # empty: no region-of-interest masks
    classes: tuple[ClassInfo, ...] = ()
    ignore_values: tuple[Value, ...] = ()
    manifest: str = ""  # a CSV/JSON list of files instead of templates
    layout: str = ""  # a published layout read as it is (`unetkit.data.formats`) instead of templates
    splits: tuple[tuple[str, tuple[str, ...]], ...] = ()  # the data set's own (train|val|test, keys)
    unlabelled: tuple[tuple[str, int], ...] = ()  # (folder or file under root, n images) it holds without labels

    def __post_init__(self) -> None:
        if self.layout and self.layout not in LAYOUTS:
            raise DataError(f"dataset layout {self.layout!r}; expected one of {', '.join(LAYOUTS)}")
        for name, _ in self.splits:
            if name not in SPLITS:
                raise DataError(f"dataset split {name!r}; expected one of {', '.join(SPLITS)}")
        if not self.manifest and not self.layout:
            for name in ("images", "masks") + (("roi",) if self.roi else ()):
                if KEY not in getattr(self, name):
                    raise DataError(
                        f"dataset {name} template {getattr(self, name)!r} has no {KEY} placeholder"
                    )
        if not 1 <= len(self.classes) <= IGNORE_INDEX:
            raise DataError(f"dataset has {len(self.classes)} classes; expected 1 to {IGNORE_INDEX}")
        values = [c.value for c in self.classes] + list(self.ignore_values)
        if len(set(values)) != len(values):
            raise DataError(f"dataset class/ignore values repeat: {values}; each value means one thing")
        if len({isinstance(v, tuple) for v in values}) > 1:
            raise DataError("dataset mixes gray values and RGB colours; use one kind of mask value")

    @property
    def colour_coded(self) -> bool:
        return isinstance(self.classes[0].value, tuple)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def split_map(self) -> dict[str, tuple[str, ...]]:
        """The data set's own splits: {"train": keys, "val": keys, "test": keys} (those it has)."""
        return dict(self.splits)

    @property
    def source(self) -> str:
        """Where the samples come from, one line (the templates: two)."""
        if self.layout:
            return f"layout {self.layout} ({LAYOUTS[self.layout]})"
        if self.manifest:
            return f"manifest {self.manifest}"
        return f"images {self.images}\n  masks  {self.masks}"

    def describe_splits(self) -> str:
        return "splits: " + (", ".join(f"{name} {len(keys)}" for name, keys in self.splits) or "none")

    def describe(self) -> str:
        """A few printable lines (for `unetkit init-dataset`)."""
        lines = [f"data set at {self.root}", f"  {self.source}"]
        if self.splits:
            lines.append(f"  {self.describe_splits()}")
        for where, n in self.unlabelled:
            lines.append(f"  unlabelled: {n} image{'s' if n != 1 else ''} in {where} (no labels: not trained or "
                         "scored; `unetkit predict` segments them)")
        if self.roi:
            lines.append(f"  roi    {self.roi} (pixels outside are ignored)")
        lines += [f"  class {i}: {c.name} = {_fmt(c.value)}" for i, c in enumerate(self.classes)]
        if self.ignore_values:
            painted = self.layout in PAINTED_LAYOUTS and VOID in self.ignore_values
            lines.append(f"  ignored values: {', '.join(_fmt(v) for v in self.ignore_values)}"
                         + (f" ({'' if len(self.ignore_values) == 1 else f'{VOID}: '}where objects of different "
                            "classes overlap)" if painted else ""))
        return "\n".join(lines)


# ---------------------------------------------------------------- masks -> labels


def decode_mask(raw: np.ndarray, spec: DatasetSpec, path: str | Path = "mask") -> np.ndarray:
    """Raw mask values (or colours) -> `(H, W)` uint8 class indices; ignore values -> 255."""
    if (raw.ndim == 3) != spec.colour_coded:
        kind = "an RGB colour mask" if raw.ndim == 3 else "a gray/palette mask"
        want = "RGB colours" if spec.colour_coded else "gray/palette values"
        raise DataError(f"{path}: is {kind} but the dataset classes are {want}")
    codes = _codes(raw)
    known = np.array([_code(c.value) for c in spec.classes] + [_code(v) for v in spec.ignore_values])
    index = np.array(list(range(len(spec.classes))) + [IGNORE_INDEX] * len(spec.ignore_values), np.uint8)
    order = np.argsort(known)
    pos = np.minimum(np.searchsorted(known[order], codes), len(known) - 1)
    hit = known[order][pos] == codes
    if not hit.all():
        unexpected = [_fmt(_value(c, spec.colour_coded)) for c in np.unique(codes[~hit])[:10]]
        hint = (
            " (JPEG is lossy: store masks as PNG)" if Path(path).suffix.lower() in (".jpg", ".jpeg") else ""
        )
        raise DataError(
            f"{path}: unexpected mask values {', '.join(unexpected)}{hint}; expected "
            f"{', '.join(f'{_fmt(c.value)} ({c.name})' for c in spec.classes)}"
            + (f" or ignored {', '.join(_fmt(v) for v in spec.ignore_values)}" if spec.ignore_values else "")
            + f"; add them to classes or ignore_values in {SPEC_FILENAME}"
        )
    return index[order][pos]


def roi_inside(raw: np.ndarray) -> np.ndarray:
    """A region-of-interest mask as booleans: any non-zero value (or colour) is inside."""
    return raw.any(axis=-1) if raw.ndim == 3 else raw > 0


def _codes(raw: np.ndarray) -> np.ndarray:
    if raw.ndim == 3:
        rgb = raw.astype(np.int64)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return raw.astype(np.int64)


def _code(value: Value) -> int:
    return (value[0] << 16) | (value[1] << 8) | value[2] if isinstance(value, tuple) else int(value)


def _value(code: int, colour: bool) -> Value:
    code = int(code)
    return ((code >> 16) & 255, (code >> 8) & 255, code & 255) if colour else code


def _fmt(value: Value) -> str:
    return f"({value[0]}, {value[1]}, {value[2]})" if isinstance(value, tuple) else str(value)


# ---------------------------------------------------------------- detection


def detect_spec(root: str | Path) -> DatasetSpec:
    """Infer the layout and classes of a data folder (see the module docstring of `layout`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; give a data folder, a dataset JSON or a manifest CSV")
    found = detect_layout(root)
    if found is not None:
        return _layout_spec(root, found)
    base = _find_base(root)
    folders = [d for d in sorted(base.iterdir()) if d.is_dir() and image_files(d)]
    image_dir = next((d for name in _IMAGE_DIRS for d in folders if d.name.lower() == name), None)
    if image_dir is None:
        raise DataError(f"{base}: no image folder (looked for {', '.join(_IMAGE_DIRS)})")
    others = [d for d in folders if d != image_dir]
    labels = [d for d in others if any(t in d.name.lower() for t in _LABEL_TOKENS)]
    rois = [d for d in others if d not in labels and any(t in d.name.lower() for t in _ROI_TOKENS)]
    if not labels:  # a lone "masks" folder holds the labels
        labels, rois = rois[:1], []
    if not labels:
        raise DataError(
            f"{base}: no mask folder next to {image_dir.name}/ (looked for names containing "
            f"{', '.join(_LABEL_TOKENS + _ROI_TOKENS)}); found {[d.name for d in others]}"
        )
    scored = [match_folders(image_dir, d) + (d,) for d in labels]
    image_t, mask_t, pairs, strip, mask_dir = max(scored, key=lambda s: (s[2], "1st" in s[4].name))
    if pairs == 0:
        raise DataError(
            f"{base}: no file in {image_dir.name}/ pairs with one in {mask_dir.name}/ by name; "
            f"write a manifest CSV with image,mask columns"
        )
    roi_t, roi_dir = "", None
    for d in rois:
        _, t, n, _ = match_folders(image_dir, d, modes=(strip,))
        if n > 0:
            roi_t, roi_dir = t, d
            break

    def rel(folder: Path, template: str) -> str:
        return f"{folder.relative_to(root).as_posix()}/{template}"

    classes, ignore = detect_classes(image_files(mask_dir))
    return DatasetSpec(
        root=str(root),
        images=rel(image_dir, image_t),
        masks=rel(mask_dir, mask_t),
        roi=rel(roi_dir, roi_t) if roi_dir else "",
        classes=classes,
        ignore_values=ignore,
    )


def _layout_spec(root: Path, found: Found) -> DatasetSpec:
    if not found.rows:
        raise DataError(f"{root}: {LAYOUTS[found.layout]}, but no image/mask pairs were found")
    if found.classes:
        classes = tuple(ClassInfo(n, v, c) for n, v, c in found.classes)
        ignore = tuple(found.ignore)
    else:
        classes, ignore = detect_classes([r.mask for r in found.rows if r.mask.is_file()])
    return DatasetSpec(
        root=str(root), classes=classes, ignore_values=ignore, layout=found.layout, splits=splits_of(found.rows),
        unlabelled=found.unlabelled,
    )


def splits_of(rows: Sequence[ManifestRow]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(split, keys) for each split the rows name, in train, val, test order."""
    return tuple(
        (name, tuple(r.key for r in rows if r.split == name)) for name in SPLITS if any(r.split == name for r in rows)
    )


def with_classes(
    spec: DatasetSpec,
    names: Sequence[str] | None = None,
    ignore: Sequence[Value] = (),
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> DatasetSpec:
    """`spec` with `ignore` values taken out of the classes (and ignored), then the remaining
    classes renamed and recoloured in index order (`unetkit init-dataset --ignore --names --colors`)."""
    classes = [c for c in spec.classes if c.value not in ignore]
    extra = tuple(v for v in ignore if v not in spec.ignore_values)
    for what, given in (("--names", names), ("--colors", colors)):
        if given is not None and len(given) != len(classes):
            listed = ", ".join(f"{_fmt(c.value)} ({c.name})" for c in classes)
            raise DataError(f"{what}: {len(given)} given for {len(classes)} classes; the classes are {listed}")
    if names is not None:
        classes = [dataclasses.replace(c, name=n) for c, n in zip(classes, names, strict=True)]
    if colors is not None:
        classes = [dataclasses.replace(c, color=tuple(k)) for c, k in zip(classes, colors, strict=True)]
    return dataclasses.replace(spec, classes=tuple(classes), ignore_values=spec.ignore_values + extra)


def parse_value(text: str, what: str = "value") -> Value:
    """A mask value as typed: `11` (gray/palette) or `r,g,b` (colour)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) == 1 and 0 <= numbers[0] <= 65535:
        return numbers[0]
    if len(numbers) == 3 and all(0 <= v <= 255 for v in numbers):
        return (numbers[0], numbers[1], numbers[2])
    raise DataError(f"{what} {text!r}: expected a mask value 0-65535 or a colour r,g,b")


def parse_color(text: str, what: str = "colour") -> tuple[int, int, int]:
    """A display colour as `#rrggbb`."""
    t = text.strip().removeprefix("#")
    if len(t) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in t):
        raise DataError(f"{what} {text!r}: expected a colour #rrggbb")
    return (int(t[0:2], 16), int(t[2:4], 16), int(t[4:6], 16))


def _find_base(root: Path) -> Path:
    names = {d.name.lower(): d for d in root.iterdir() if d.is_dir()}
    if any(n in names for n in _IMAGE_DIRS):
        return root
    for split in _SPLIT_DIRS:
        if split in names and any((names[split] / n).is_dir() for n in _IMAGE_DIRS):
            return names[split]
    raise DataError(
        f"{root}: found no images/ folder (or a train/ or training/ folder holding one); "
        f"subfolders: {sorted(names) or 'none'}. Write a manifest CSV with image,mask[,roi] columns"
    )


def detect_classes(mask_paths: Sequence[Path]) -> tuple[tuple[ClassInfo, ...], tuple[Value, ...]]:
    """Classes and ignore values from the values present in the masks."""
    if not mask_paths:
        raise DataError("no mask files to detect the classes from")
    values: set[Value] = set()
    kinds, palette = set(), None
    for path in mask_paths:
        raw = read_mask(path)
        kinds.add(raw.ndim)
        if raw.ndim == 3:
            values |= {_value(c, True) for c in np.unique(_codes(raw))}
        else:
            values |= {int(v) for v in np.unique(raw)}
            palette = palette if palette is not None else read_palette(path)
        if len(kinds) > 1:
            raise DataError(f"{path}: mixes colour and gray masks in one data set; convert them to one kind")
        if len(values) > MAX_CLASSES:
            raise DataError(
                f"{path}: masks hold more than {MAX_CLASSES} distinct values; expected a few class values "
                "(is this an image, an instance map or a lossy JPEG?). List the classes in " + SPEC_FILENAME
            )
    ordered = sorted(values)
    if 3 in kinds:  # names only from the data (`init-dataset --names`, labelmap.txt, dataset.json)
        return tuple(ClassInfo(f"class_{i}", v, v) for i, v in enumerate(ordered)), ()
    ignore: tuple[Value, ...] = ()
    if len(ordered) >= 3 and ordered[-1] == 255 and ordered[-2] < 128:  # VOC style: 255 = boundary/void
        ignore, ordered = (255,), ordered[:-1]

    def color(v: int) -> tuple[int, int, int] | None:
        return tuple(int(x) for x in palette[v]) if palette is not None and v < len(palette) else None

    return tuple(ClassInfo(f"class_{v}", v, color(v)) for v in ordered), ignore


def spec_for_classes(spec: DatasetSpec, data_spec: dict | None) -> DatasetSpec:
    """`spec` with the classes and ignore values of a trained model (its artifact's
    `{"classes": [{name, value, color}], "ignore_values": [...]}`), so masks decode as in training."""
    if not data_spec:
        return spec
    where = Path("artifact data_spec")
    infos = tuple(
        ClassInfo(
            _string(where, f"classes[{i}].name", c.get("name")),
            _mask_value(where, f"classes[{i}].value", c.get("value")),
            None if c.get("color") is None else _rgb(where, f"classes[{i}].color", list(c["color"])),
        )
        for i, c in enumerate(data_spec.get("classes", []))
    )
    ignore = tuple(_mask_value(where, "ignore_values", v) for v in data_spec.get("ignore_values", []))
    return dataclasses.replace(spec, classes=infos, ignore_values=ignore)


# ---------------------------------------------------------------- JSON


def save_spec(spec: DatasetSpec, path: str | Path) -> Path:
    """Write `spec` as JSON; `root` is stored relative to the JSON file's folder."""
    path = Path(path)
    data = {
        "format": SPEC_FORMAT,
        "version": 1,
        "root": _relative(spec.root, path.parent),
        "images": spec.images,
        "masks": spec.masks,
        "roi": spec.roi,
        "manifest": _relative(spec.manifest, path.parent) if spec.manifest else "",
        "classes": [{"name": c.name, "value": c.value, "color": c.color} for c in spec.classes],
        "ignore_values": list(spec.ignore_values),
    }
    if spec.layout:
        data["layout"] = spec.layout
    if spec.splits:
        data["splits"] = {name: list(keys) for name, keys in spec.splits}
    if spec.unlabelled:
        data["unlabelled"] = dict(spec.unlabelled)
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def load_spec(path: str | Path) -> DatasetSpec:
    """A spec JSON, a data folder (its `unetkit-dataset.json`, else detected) or a manifest CSV/JSON."""
    path = Path(path)
    if path.is_dir():
        return load_spec(path / SPEC_FILENAME) if (path / SPEC_FILENAME).is_file() else detect_spec(path)
    if not path.is_file():
        raise DataError(f"{path}: not found; expected a data folder, a dataset JSON or a manifest CSV")
    if path.suffix.lower() == ".csv":
        return _manifest_spec(path)
    data = read_json(path, "the dataset description")
    if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
        return _manifest_spec(path)
    return _spec_from_json(path, data)


def _manifest_spec(path: Path) -> DatasetSpec:
    rows = read_manifest(path)
    classes, ignore = detect_classes([r.mask for r in rows])
    return DatasetSpec(
        root=str(path.parent), classes=classes, ignore_values=ignore, manifest=str(path), splits=splits_of(rows)
    )


_FIELDS = {"format", "version", "root", "images", "masks", "roi", "manifest", "classes", "ignore_values",
           "layout", "splits", "unlabelled"}


def _spec_from_json(path: Path, data: dict) -> DatasetSpec:
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise DataError(f"{path}: unknown key '{unknown[0]}'; expected one of {sorted(_FIELDS)}")
    if data.get("version") != 1:
        raise DataError(f"{path}: version: expected 1, got {data.get('version')!r}")
    text = {k: _string(path, k, data.get(k, "")) for k in ("root", "images", "masks", "roi", "manifest", "layout")}
    splits = data.get("splits", {})
    ok = isinstance(splits, dict) and all(
        isinstance(v, list) and all(isinstance(k, str) for k in v) for v in splits.values()
    )
    if not ok:
        raise DataError(f"{path}: splits: expected {{\"train\": [keys], \"val\": [keys], \"test\": [keys]}}")
    unlabelled = data.get("unlabelled", {})
    if not isinstance(unlabelled, dict) or not all(_is_count(n) for n in unlabelled.values()):
        raise DataError(f"{path}: unlabelled: expected {{\"folder\": number of images}}")
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes:
        raise DataError(f"{path}: classes: expected a non-empty list of {{name, value, color}}")
    infos = []
    for i, c in enumerate(classes):
        where = f"classes[{i}]"
        if not isinstance(c, dict) or set(c) - {"name", "value", "color"} or not {"name", "value"} <= set(c):
            raise DataError(f"{path}: {where}: expected {{name, value[, color]}}, got {c!r}")
        color = None if c.get("color") is None else _rgb(path, f"{where}.color", c["color"])
        name = _string(path, f"{where}.name", c["name"])
        infos.append(ClassInfo(name, _mask_value(path, f"{where}.value", c["value"]), color))
    ignore = data.get("ignore_values", [])
    if not isinstance(ignore, list):
        raise DataError(f"{path}: ignore_values: expected a list, got {ignore!r}")
    root = Path(os.path.normpath(path.parent / (text.pop("root") or ".")))
    if text["manifest"]:
        text["manifest"] = str(path.parent / text["manifest"])
    return DatasetSpec(
        root=str(root),
        classes=tuple(infos),
        ignore_values=tuple(_mask_value(path, f"ignore_values[{i}]", v) for i, v in enumerate(ignore)),
        splits=tuple((name, tuple(keys)) for name, keys in splits.items()),
        unlabelled=tuple(unlabelled.items()),
        **text,
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _string(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise DataError(f"{path}: {key}: expected a string, got {value!r}")
    return value


def _mask_value(path: Path, key: str, value: object) -> Value:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return value
    if isinstance(value, (list, tuple)):
        return _rgb(path, key, list(value))
    raise DataError(f"{path}: {key}: expected an integer 0-65535 or [r, g, b], got {value!r}")


def _rgb(path: Path, key: str, value: object) -> tuple[int, int, int]:
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 255 for x in value)
    if not ok:
        raise DataError(f"{path}: {key}: expected [r, g, b] with values 0-255, got {value!r}")
    return (value[0], value[1], value[2])


def _relative(target: str | Path, start: Path) -> str:
    """`target` relative to `start` when inside it (the JSON travels with its data), else absolute."""
    target, start = Path(os.path.abspath(target)), Path(os.path.abspath(start))
    return target.relative_to(start).as_posix() or "." if target.is_relative_to(start) else str(target)
