"""Folder layouts: path templates with a `{key}` placeholder, and how to find them in a folder.

A template such as `training/images/{key}_training.tif` is relative to the data root. A template
ending in `.*` (`images/{key}.*`) matches any image extension, for folders of mixed formats.
Keys come from file stems: either the stems themselves (`images/00.png` ↔ `labels/00.png`) or the
stems without the prefix/suffix common to a folder (`21_training` → `21`, `21_manual1` → `21`).
"""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from pathlib import Path

from unetkit.data.io import is_image_file

KEY = "{key}"
ANY_EXT = ".*"


def glob_template(root: Path, template: str) -> dict[str, list[Path]]:
    """key -> files matching `template` under `root` (more than one file means ambiguous)."""
    head, tail = template.split(KEY, 1)
    any_ext = tail.endswith(ANY_EXT)
    if any_ext:
        tail = tail[: -len(ANY_EXT)]
    pattern = glob.escape(f"{root}/{head}") + "*" + glob.escape(tail) + (".*" if any_ext else "")
    regex = re.compile(
        re.escape(head) + r"(?P<key>[^/]+?)" + re.escape(tail) + (r"\.[^./]+" if any_ext else "")
    )
    found: dict[str, list[Path]] = {}
    for name in sorted(glob.glob(pattern)):
        rel = Path(name).relative_to(root).as_posix()
        match = regex.fullmatch(rel)
        if match and (not any_ext or is_image_file(name)):
            found.setdefault(match["key"], []).append(Path(name))
    return found


def template_path(root: Path, template: str, key: str) -> Path:
    """The file for `key`; with a `.*` template the first existing match (or the pattern itself)."""
    rel = template.replace(KEY, key)
    if not rel.endswith(ANY_EXT):
        return root / rel
    stem = rel[: -len(ANY_EXT)]
    matches = [p for p in sorted(glob.glob(glob.escape(f"{root}/{stem}") + ".*")) if is_image_file(p)]
    return Path(matches[0]) if matches else root / rel


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def common_affixes(stems: list[str]) -> tuple[str, str]:
    """Prefix and suffix shared by all stems, never cutting into a run of digits or leaving a key empty."""
    if len(stems) < 2:
        return "", ""
    prefix = os.path.commonprefix(stems)
    suffix = os.path.commonprefix([s[::-1] for s in stems])[::-1]
    while prefix and prefix[-1].isdigit():
        prefix = prefix[:-1]
    while suffix and suffix[0].isdigit():
        suffix = suffix[1:]
    if len(prefix) + len(suffix) >= min(len(s) for s in stems):  # some key would be empty
        return "", ""
    return prefix, suffix


def folder_keys(folder: Path, strip: bool) -> tuple[str, dict[str, Path]]:
    """(template relative to `folder`, key -> file) for the image files in `folder`."""
    files = image_files(folder)
    counts = Counter(p.suffix for p in files)
    if not counts:
        return "", {}
    ext = counts.most_common(1)[0][0] if len(counts) == 1 else ANY_EXT
    if ext != ANY_EXT:
        files = [p for p in files if p.suffix == ext]
    stems = [p.stem for p in files]
    prefix, suffix = common_affixes(stems) if strip else ("", "")
    keys = {s[len(prefix) : len(s) - len(suffix)]: p for s, p in zip(stems, files, strict=True)}
    return f"{prefix}{KEY}{suffix}{ext}", keys


def match_folders(
    image_dir: Path, other_dir: Path, modes: tuple[bool, ...] = (False, True)
) -> tuple[str, str, int, bool]:
    """Templates (relative to each folder) pairing the two folders best, the number of pairs and
    whether keys are stems without the common affixes. Exact stems win ties."""
    best = ("", "", -1, False)
    for strip in modes:
        image_template, image_keys = folder_keys(image_dir, strip)
        other_template, other_keys = folder_keys(other_dir, strip)
        common = len(image_keys.keys() & other_keys.keys())
        if common > best[2]:
            best = (image_template, other_template, common, strip)
    return best


def json_files(root: Path) -> list[Path]:
    """JSON files where annotation files live: `annotations/*.json`, then `root/*.json` (not nnU-Net's
    `dataset.json`), each sorted."""
    folders = [root / "annotations", root]
    return [p for d in folders if d.is_dir() for p in sorted(d.glob("*.json")) if p.name != "dataset.json"]
