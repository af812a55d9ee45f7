"""Manifests: an explicit list of (image, mask, roi) files, as CSV or JSON.

CSV: a header with `image`, `mask` and optionally `roi`, `key` and `split` columns. JSON: a list of
objects with the same keys, or `{"samples": [...]}`. Relative paths are relative to the manifest's
folder. Without a `key`, the key is the image file's stem (its path without suffix when stems repeat).
`split` is `train`, `val` or `test` (`training`, `validation`, `testing` too), or empty.

`ManifestRow` is also what the readers of published layouts (`unetkit.data.formats`) produce.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from unetkit.config import DATA_SPLITS
from unetkit.errors import DataError

COLUMNS = ("image", "mask", "roi", "key", "split")
SPLITS = DATA_SPLITS
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test", "": ""}


@dataclass(frozen=True)
class ManifestRow:
    key: str
    image: Path
    mask: Path
    roi: Path | None
    split: str = ""  # train, val, test or "" (not assigned)
    channels: tuple[Path, ...] = ()  # further image files stacked as channels after `image`
    entry: str = ""  # the sample's record in `mask` when that is an annotation file (COCO image id, task id)


def read_manifest(path: str | Path) -> list[ManifestRow]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    records = _csv_records(path) if path.suffix.lower() == ".csv" else _json_records(path)
    rows = [_row(path, i, record) for i, record in enumerate(records)]
    stems = Counter(r.image.stem for r in rows)
    rows = [
        r if r.key else dataclasses.replace(r, key=_default_key(path, r.image, stems)) for r in rows
    ]
    repeated = [k for k, n in Counter(r.key for r in rows).items() if n > 1]
    if repeated:
        raise DataError(f"{path}: key {repeated[0]!r} appears more than once; keys must be unique")
    return rows


def _csv_records(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read the manifest ({e})") from None
    for column in ("image", "mask"):
        if column not in header:
            raise DataError(
                f"{path}: missing column '{column}'; expected a header with image, mask[, roi, key]"
            )
    unknown = [c for c in header if c not in COLUMNS]
    if unknown:
        raise DataError(f"{path}: unknown column '{unknown[0]}'; expected image, mask, roi, key, split")
    return records


def split_name(name: str) -> str | None:
    """`train`/`val`/`test` for a split's name in a file or folder name (`validation` -> `val`), else None."""
    return _SPLIT_NAMES.get(name.lower()) or None


def json_starts_like(path: Path, opener: str, pattern: str, head_bytes: int = 1 << 16) -> bool:
    """Whether the file's first `head_bytes` start with `opener` ("{" or "[") and match `pattern`:
    a JSON format recognised without parsing a large file."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            head = f.read(head_bytes)
    except OSError:
        return False
    return head.lstrip().startswith(opener) and re.search(pattern, head) is not None


def file_version(path: Path, what: str) -> tuple[str, int, int]:
    """(name, mtime_ns, size): a cache key for one version of a file; a DataError naming `what` when
    it cannot be read."""
    try:
        stat = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from None
    return str(path), stat.st_mtime_ns, stat.st_size


def read_json(path: Path, what: str = "the file") -> object:
    """Parsed JSON, or a DataError naming the file and what is wrong with it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _json_records(path: Path) -> list[dict]:
    data = read_json(path, "the manifest")
    if isinstance(data, dict) and set(data) == {"samples"}:
        data = data["samples"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f'{path}: expected a list of {{image, mask, roi}} objects or {{"samples": [...]}}')
    return data


def _row(path: Path, index: int, record: dict) -> ManifestRow:
    where = f"{path}: row {index + 1}"
    unknown = [k for k in record if k not in COLUMNS]
    if unknown:
        raise DataError(f"{where}: unknown key '{unknown[0]}'; expected image, mask, roi, key, split")
    values = {}
    for key in COLUMNS:
        value = record.get(key) or ""
        if not isinstance(value, str):
            raise DataError(f"{where}: {key}: expected a path string, got {value!r}")
        values[key] = value.strip()
    for key in ("image", "mask"):
        if not values[key]:
            raise DataError(f"{where}: {key} is empty; every row needs an image and a mask")
    if values["split"].lower() not in _SPLIT_NAMES:
        raise DataError(f"{where}: split {values['split']!r}; expected train, val, test or empty")
    base = path.parent
    return ManifestRow(
        split=_SPLIT_NAMES[values["split"].lower()],
        key=values["key"],
        image=base / values["image"],
        mask=base / values["mask"],
        roi=base / values["roi"] if values["roi"] else None,
    )


def _default_key(path: Path, image: Path, stems: Counter) -> str:
    if stems[image.stem] == 1:
        return image.stem
    try:
        return image.relative_to(path.parent).with_suffix("").as_posix()
    except ValueError:
        return image.with_suffix("").as_posix()
