"""Small model artifacts for the serving tests (built once per session, 64x64 patches, 3 classes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unetkit.artifact import ArtifactMeta, save_artifact
from unetkit.config import ModelConfig
from unetkit.models import build_model

CLASSES = ("background", "cell", "vessel")


def make_artifact(path: Path, seed: int, name: str = "tiny") -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(in_channels=3, out_channels=3, depth=2, base_width=8)
    meta = ArtifactMeta(model=cfg, class_names=CLASSES, mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0),
                        patch_size=(64, 64), name=name)
    return save_artifact(path, build_model(cfg).eval(), meta)


@pytest.fixture(scope="session")
def artifact_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("models") / "primary.unetkit", seed=0)


@pytest.fixture(scope="session")
def candidate_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("models") / "candidate.unetkit", seed=1, name="tiny-candidate")
