"""Small synthetic data and a tiny, fast training config shared by the training tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.mlflow_fixtures import mlflow_server, mlflow_template, mlflow_uri  # noqa: F401 - fixtures
from unetkit.config import AugmentConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unetkit.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), n_images=6, size=(48, 48), seed=0)


@pytest.fixture
def tiny_config(shapes_data: Path, tmp_path: Path):
    """Factory: a 2-level, width-4 U-Net on 32-px patches (milliseconds per step on one core)."""

    def make(out: str = "run", data: Path | None = None, **changes) -> TrainConfig:
        return replace(_base(data or shapes_data, tmp_path / out), **changes)

    return make


def _base(data: Path, out_dir: Path) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(data=str(data), val_fraction=0.34, patch_size=(32, 32), batch_size=4, seed=0),
        augment=AugmentConfig(enabled=False),
        model=ModelConfig(base_width=4, depth=2, norm="batch"),
        optim=OptimConfig(lr=3e-3, warmup_steps=2, schedule="cosine"),
        steps=12,
        val_every=6,
        precision="fp32",  # the tests that need bf16 or auto say so
        memory_format="contiguous",
        seed=0,
        out_dir=str(out_dir),
        progress=False,
    )
