"""Small generated data sets for the data tests (written to tmp paths, never the real data)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unetkit.data.synthetic import make_drive_like_dataset, make_synthetic_dataset


@pytest.fixture
def shapes(tmp_path: Path) -> Path:
    return make_synthetic_dataset(tmp_path / "shapes", n_images=6, size=(48, 64), seed=0)


@pytest.fixture(params=["L", "P"])
def drive(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """DRIVE as published (small): TIFF images, GIF labels (gray 0/255 or palette 0/1), GIF FOV masks."""
    return make_drive_like_dataset(tmp_path / "drive", n_images=4, size=(40, 36), label_mode=request.param)


@pytest.fixture
def drive_l(tmp_path: Path) -> Path:
    return make_drive_like_dataset(tmp_path / "drive", n_images=4, size=(40, 36), label_mode="L")
