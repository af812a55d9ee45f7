"""load_training_data: split, loading, normalization, and the bounded validation sample."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from unetkit.config import DataConfig
from unetkit.errors import ConfigError
from unetkit.training.prepare import load_training_data


@pytest.fixture(scope="module")
def twelve(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unetkit.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("twelve"), n_images=12, size=(40, 40), seed=3)


def test_a_large_validation_split_is_cut_to_an_evenly_spread_sample_after_the_fingerprint(twelve: Path) -> None:
    config = DataConfig(data=str(twelve), val_fraction=0.5)
    whole = load_training_data(config)
    assert len(whole.val) == 6
    lines: list[str] = []
    cut = load_training_data(replace(config, val_images=3), log=lines.append)
    keys = [s.key for s in whole.val]
    assert [s.key for s in cut.val] == [keys[0], keys[2], keys[5]]  # first, middle, last
    assert [s.key for s in cut.train] == [s.key for s in whole.train]  # training is untouched
    assert cut.fingerprint == whole.fingerprint and cut.mean == whole.mean  # of the whole data set
    assert "validation: 3 of 6 validation images, evenly spread (data.val_images)" in lines
    assert len(load_training_data(replace(config, val_images=6)).val) == 6  # not over the split's size


def test_a_negative_validation_sample_is_refused_before_any_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.val_images: expected 0 \(all\) or a positive number of images, got -1"):
        load_training_data(DataConfig(data=str(tmp_path / "missing"), val_images=-1))
