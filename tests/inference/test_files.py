"""Which tiling a model runs with: the model's own, and only what the caller set in its place."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from tests.evaluation_fixtures import tiny_artifact
from tests.test_cli import engine_tilings

from unetkit.artifact import load_artifact
from unetkit.config import TileConfig
from unetkit.data.io import write_png
from unetkit.errors import ConfigError
from unetkit.inference.files import tile_config_for, tile_settings


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return tiny_artifact(tmp_path / "model.unetkit", seed=3)  # 32x32 patches


def test_an_artifact_tiles_at_its_patch_size_with_the_settings_given(artifact):
    art = load_artifact(artifact)
    own = TileConfig(tile_size=(32, 32))
    assert tile_config_for(art) == tile_config_for(art, {}) == own
    assert tile_config_for(art, {"overlap": 0.5, "tta": True}) == TileConfig(tile_size=(32, 32), overlap=0.5, tta=True)
    assert tile_config_for(art, {"tile_size": [48, 48]}) == TileConfig(tile_size=(48, 48))
    assert tile_config_for(art, {"tile_size": ()}) == own  # an empty size leaves it to the model
    # a complete TileConfig sets every field (the model's predictor decides the activation)
    complete = TileConfig(overlap=0.1, batch_size=2, activation="none")
    assert tile_config_for(art, complete) == TileConfig(tile_size=(32, 32), overlap=0.1, batch_size=2)
    assert tile_settings(None) == {} and "activation" not in tile_settings(complete)
    with pytest.raises(ConfigError, match="TileConfig: unknown key 'overlapp'"):
        tile_config_for(art, {"overlapp": 0.5})
    with pytest.raises(ConfigError, match="overlap: expected a number"):
        tile_config_for(art, {"overlap": "half"})


def test_predict_an_artifact_with_explicit_tiling(artifact, tmp_path, rng, monkeypatch):
    """An explicit value is used as given, also where it equals what the artifact implies or
    TileConfig's default; one that differs (a 48-pixel tile over the 32-pixel patch) changes the output."""
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "im.png", rng.integers(0, 255, (80, 75, 3), dtype=np.uint8))

    def predict(out: str, *flags: str) -> tuple[list[TileConfig], np.ndarray]:
        used = engine_tilings(monkeypatch, "predict", str(artifact), str(images), "--out", str(tmp_path / out),
                              "--probabilities", "--backend", "torch", *flags)
        return used, tifffile.imread(tmp_path / out / "im_prob.tif")

    own, p_own = predict("own")
    assert own == [TileConfig(tile_size=(32, 32))]
    same, p_same = predict("same", "--tile", "32", "--overlap", "0.25", "--no-tta")
    assert same == own and np.array_equal(p_same, p_own)
    bigger, p_bigger = predict("bigger", "--tile", "48", "--overlap", "0.5")
    assert bigger == [TileConfig(tile_size=(48, 48), overlap=0.5)]
    assert np.abs(p_bigger - p_own).max() > 1e-4
