"""A tiny calibrated artifact (temperature != 1, vector scaling) and small DRIVE-like data."""

from pathlib import Path

import pytest

from tests.evaluation_fixtures import drive_like, tiny_artifact
from unetkit.config import DataConfig, TrainConfig, to_dict

CALIBRATED = dict(temperature=1.7, class_scale=(1.2, 0.8), class_bias=(0.1, -0.2), head_scale=3.0)


@pytest.fixture
def artifact_path(tmp_path: Path) -> Path:
    return tiny_artifact(tmp_path / "model.unetkit", seed=3, **CALIBRATED)


@pytest.fixture
def data_and_model(tmp_path: Path) -> tuple[Path, Path]:
    """DRIVE-like data (keys 21-24) and an artifact whose recorded split validates on 24."""
    data = drive_like(tmp_path / "d", n_images=4, size=(56, 52))
    train_config = to_dict(TrainConfig(data=DataConfig(data=str(data), val_keys=("24",))))
    return data, tiny_artifact(tmp_path / "m.unetkit", seed=2, head_scale=4.0, train_config=train_config)
