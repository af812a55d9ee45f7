"""Rank a folder of unlabelled images by how uncertain the model is about them.

    files -> read_image -> artifact pipeline (8 TTA views, or one pass) -> uncertainty scores
          -> sort (entropy | margin | tta | combined) -> near-duplicates marked -> CSV

Inference is `unetkit.inference`'s: the same predictor (`make_predictor`), tiling and TTA views
(`iter_view_probabilities`) as `unetkit predict`, so the ranked predictions are the ones the
export hands to annotators. A file that cannot be read or predicted is reported by name and the
others are ranked. Memory: one image and a few probability maps at a time.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.active.diversity import difference_hash, mark_duplicates
from unetkit.active.uncertainty import ImageUncertainty, combined_scores, score_image
from unetkit.config import RankConfig, TileChoice, TileConfig
from unetkit.data.io import is_image_file, read_image, write_text_atomic
from unetkit.errors import InputError, UnetkitError
from unetkit.export.deployed import DeployedModel, load_model
from unetkit.inference.backends import make_predictor
from unetkit.inference.files import labels_from_probabilities, tile_config_for
from unetkit.inference.outputs import argmax_labels
from unetkit.inference.predict import Predictor, iter_view_probabilities, predict_tiled

MEASURES = ("entropy", "margin", "tta")
LabelsFn = Callable[[np.ndarray], np.ndarray]  # probabilities (K, H, W) -> label map (H, W)


@dataclass(frozen=True)
class RankedImage:
    path: Path
    name: str  # path relative to the ranked folder, with "/" separators
    scores: dict[str, float]  # entropy, margin, tta, tta_flip, combined
    height: int
    width: int
    class_fractions: tuple[float, ...]  # predicted share of the pixels per class
    seconds: float
    duplicate_of: str | None = None  # the name of a higher-ranked near-copy


@dataclass(frozen=True)
class Ranking:
    images: list[RankedImage]  # most uncertain first
    failed: list[str]  # "file: what was wrong", one per file that was skipped
    class_names: tuple[str, ...]
    config: RankConfig
    seconds: float = 0.0

    def score(self, image: RankedImage) -> float:
        return image.scores[self.config.by]

    def top(self, k: int) -> list[RankedImage]:
        """The `k` most uncertain images that are not near-copies of a higher-ranked one."""
        return [im for im in self.images if im.duplicate_of is None][:k]


def list_images(folder: str | Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Image files (any format unetkit reads) in `folder`, sorted; `exclude` (e.g. the export
    folder inside it) is skipped."""
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: is a file; expected a folder of images")
    candidates = root.rglob("*") if recursive else root.iterdir()
    skip = exclude.resolve() if exclude is not None else None
    files = sorted(
        p for p in candidates
        if is_image_file(p) and p.is_file() and not (skip is not None and skip in p.resolve().parents)
    )
    if not files:
        where = "or its subfolders " if recursive else ""
        has_subfolders = not recursive and any(p.is_dir() for p in root.iterdir())
        hint = " (add --recursive to look into its subfolders)" if has_subfolders else ""
        raise InputError(f"{root}: the folder {where}holds no images (.png .tif .tiff .gif .jpg .jpeg .bmp){hint}")
    return files


@dataclass(frozen=True)
class Scorer:
    """What ranking and export need of a model: a predictor, its classes and colours, the tile
    settings and how probabilities become a label map."""

    predictor: Predictor
    class_names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    tile: TileConfig
    labels_fn: LabelsFn = argmax_labels
    model_version: str = "unetkit"

    @classmethod
    def from_artifact(cls, model: str | Path | Any, tile: TileChoice = None, backend: str = "auto") -> Scorer:
        """The model's pipeline (calibration included), its tiling with what `tile` sets in its place
        (`tile_config_for`), and its tuned postprocessing for the label maps, as in `unetkit predict`.
        `model`: an artifact or an exported `.onnx` / OpenVINO `.xml` with its plan (a path, or loaded
        by `export.deployed.load_model`), which runs on its own runtime and tiles as its plan says."""
        artifact = load_model(model) if isinstance(model, (str, Path)) else model
        meta = artifact.meta
        sha = artifact.model_sha256 if isinstance(artifact, DeployedModel) else meta.weights_sha256
        return cls(make_predictor(artifact, backend=backend), tuple(meta.class_names), tuple(meta.colors()),
                   tile_config_for(artifact, tile), lambda p: labels_from_probabilities(p, artifact),
                   f"{meta.name} {sha[:12]}")

    def uncertainty(self, image: np.ndarray, config: RankConfig) -> ImageUncertainty:
        """Scores of one image: from the TTA views (`self.tile.tta_views`) with `config.tta`, else from one
        prediction."""
        tile = replace(self.tile, tta=False)
        if config.tta:
            return score_image(iter_view_probabilities(self.predictor, image, tile), config, self.tile.tta_temperature)
        return score_image(predict_tiled(self.predictor, image, tile), config)


def rank_images(
    scorer: Scorer,
    files: Sequence[Path],
    config: RankConfig = RankConfig(),
    *,
    root: Path | None = None,
    progress: bool = False,
) -> Ranking:
    """Score every file and sort, most uncertain first (ties by name). Unreadable files, or files
    the model cannot take (wrong channel count...), are listed in `failed`, not raised."""
    from tqdm import tqdm

    start = time.perf_counter()
    rows: list[RankedImage] = []
    hashes: list[np.ndarray] = []
    failed: list[str] = []
    k = len(scorer.class_names)
    for path in tqdm(files, desc="rank", unit="img", disable=not progress or len(files) < 2):
        t0 = time.perf_counter()
        try:
            image = read_image(path)
            result = scorer.uncertainty(image, config)
        except UnetkitError as e:
            message = str(e)
            failed.append(message if str(path) in message else f"{path}: {message}")
            continue
        labels = scorer.labels_fn(result.probabilities)
        fractions = np.bincount(labels.ravel(), minlength=k)[:k] / labels.size
        name = path.relative_to(root).as_posix() if root is not None else path.name
        rows.append(RankedImage(path, name, dict(result.scores), int(image.shape[1]), int(image.shape[2]),
                                tuple(float(f) for f in fractions), time.perf_counter() - t0))
        hashes.append(difference_hash(image))
    if not rows:
        raise InputError(f"none of the {len(files)} images could be ranked: " + "; ".join(failed[:5])
                         + (f"; and {len(failed) - 5} more" if len(failed) > 5 else ""))
    combined = combined_scores({m: np.array([r.scores[m] for r in rows]) for m in MEASURES})
    rows = [replace(r, scores={**r.scores, "combined": float(c)}) for r, c in zip(rows, combined, strict=True)]
    order = sorted(range(len(rows)), key=lambda i: (-rows[i].scores[config.by], rows[i].name))
    rows, hashes = [rows[i] for i in order], [hashes[i] for i in order]
    if config.dedup_bits > 0:
        marks = mark_duplicates(hashes, config.dedup_bits)
        rows = [r if m is None else replace(r, duplicate_of=rows[m].name) for r, m in zip(rows, marks, strict=True)]
    return Ranking(rows, failed, scorer.class_names, config, time.perf_counter() - start)


def rank_folder(
    scorer: Scorer, folder: str | Path, config: RankConfig = RankConfig(), *, exclude: Path | None = None, progress: bool = False
) -> Ranking:
    """`rank_images` over the images of `folder` (`config.recursive`: and its subfolders)."""
    files = list_images(folder, config.recursive, exclude)
    return rank_images(scorer, files, config, root=Path(folder), progress=progress)


# ---------------------------------------------------------------- CSV


def csv_header(class_names: Sequence[str]) -> list[str]:
    return ["rank", "file", "score", "entropy", "margin", "tta", "tta_flip", "combined", "height", "width",
            *[f"fraction_{name}" for name in class_names], "duplicate_of", "seconds"]


def ranking_csv(ranking: Ranking) -> str:
    """One row per ranked image, most uncertain first; `score` is the column sorted by. Scores
    without a value (TTA measures when TTA was off) are empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(ranking.class_names))
    for i, im in enumerate(ranking.images, start=1):
        def number(v: float) -> str:
            return "" if math.isnan(v) else f"{v:.6f}"

        writer.writerow([
            i, im.name, number(ranking.score(im)),
            *[number(im.scores[m]) for m in ("entropy", "margin", "tta", "tta_flip", "combined")],
            im.height, im.width, *[f"{f:.6f}" for f in im.class_fractions],
            im.duplicate_of or "", f"{im.seconds:.3f}",
        ])
    return buffer.getvalue()


def write_ranking_csv(ranking: Ranking, path: str | Path) -> Path:
    """Write `ranking_csv` atomically."""
    return write_text_atomic(path, ranking_csv(ranking))


def ranking_table(ranking: Ranking, rows: int = 10):  # -> rich.table.Table
    """The first `rows` entries as a rich table for the terminal."""
    from rich.table import Table

    table = Table(title=f"most uncertain of {len(ranking.images)} images (by {ranking.config.by}, {ranking.config.aggregate})")
    for column in ("rank", "file", "score", "entropy", "margin", "tta", "note"):
        table.add_column(column, justify="left" if column in ("file", "note") else "right")
    for i, im in enumerate(ranking.images[:rows], start=1):
        values = [im.scores[m] for m in ("entropy", "margin", "tta")]
        note = f"near-copy of {im.duplicate_of}" if im.duplicate_of else ""
        table.add_row(str(i), im.name, f"{ranking.score(im):.3f}", *["-" if math.isnan(v) else f"{v:.3f}" for v in values], note)
    return table
