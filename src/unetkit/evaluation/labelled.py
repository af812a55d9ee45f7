"""Labelled images read with a model's classes, and the model's probabilities on them.

The data path of `unetkit evaluate`, of calibration and postprocessing tuning (`unetkit.tuning`),
and of the int8 gate: `load_labelled` decodes masks with the artifact's data spec (ROI folded into
`ignore_index`), `iter_probabilities` predicts each image by tiled inference, as `predict` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from unetkit.artifact import Artifact, load_artifact
from unetkit.config import TileChoice
from unetkit.data.dataset import load_samples
from unetkit.data.pairing import pair_samples
from unetkit.data.spec import load_spec, spec_for_classes
from unetkit.errors import DataError
from unetkit.inference.backends import make_predictor
from unetkit.inference.files import tile_config_for
from unetkit.inference.predict import predict_tiled


def load_labelled(
    model: str | Path | Artifact, data: str | Path, keys: Sequence[str] | None = None, progress: bool = True
) -> tuple[Artifact, list[Any]]:
    """(artifact, LoadedSamples) for a model and a labelled data folder / description / manifest.

    Masks decode with the model's classes; the ROI is folded into the labels as `ignore_index`.
    `model` may also be an exported model (`unetkit.export.deployed.load_model`): its plan's
    `meta` then stands in for the artifact's.
    """
    artifact = load_artifact(model) if isinstance(model, (str, Path)) else model
    spec = spec_for_classes(load_spec(data), artifact.meta.data_spec)
    samples = pair_samples(spec)
    if keys:
        wanted = set(keys)
        missing = wanted - {s.key for s in samples}
        if missing:
            raise DataError(f"{data}: no samples with keys {sorted(missing)}; available: {sorted(s.key for s in samples)[:20]}")
        samples = [s for s in samples if s.key in wanted]
    return artifact, load_samples(samples, spec, progress=progress)


def iter_probabilities(
    artifact: Artifact,
    samples: Sequence[Any],
    config: TileChoice = None,
    *,
    backend: str = "auto",
    logits: bool = False,
    progress: bool = True,
) -> Iterator[tuple[Any, np.ndarray]]:
    """(sample, (K,H,W) float32) per sample: calibrated probabilities by tiled inference, or with
    `logits` the Gaussian-blended logits of the artifact's pipeline (calibration applied)."""
    predictor = make_predictor(artifact, backend=backend)
    tile = tile_config_for(artifact, config)
    if logits:
        tile = replace(tile, activation="none")
    for s in tqdm(samples, desc="predict", unit="img", disable=not progress or len(samples) < 2):
        yield s, predict_tiled(predictor, s.image, tile)
