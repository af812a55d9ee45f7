"""The onnxruntime + numpy snippet of docs/export.md, executed: it reproduces unetkit's tiled output."""

import re
from pathlib import Path

import numpy as np
import pytest

from unetkit.artifact import load_artifact
from unetkit.config import TileConfig
from unetkit.export.onnx import export_artifact
from unetkit.inference.backends import make_predictor
from unetkit.inference.predict import predict_tiled

DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"


def snippet() -> dict:
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(code) == 1, "docs/export.md should hold exactly one python snippet"
    namespace: dict = {}
    exec(compile(code[0], str(DOC), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("tile", [TileConfig(), TileConfig(tile_size=(24, 40), overlap=0.5, padding="replicate"),
                                  TileConfig(blend="constant", overlap=0.1)])
def test_snippet_reproduces_unetkit(artifact_path, rng, tile):
    result = export_artifact(artifact_path, tile=tile)
    art = load_artifact(artifact_path)
    predict = snippet()["predict"]
    engine = make_predictor(art, "torch")
    for shape in ((3, 70, 61), (3, 20, 25)):  # larger than a tile, and smaller (padded)
        image = rng.uniform(0, 255, shape).astype(np.float32)
        want = predict_tiled(engine, image, TileConfig(**{**tile.__dict__, "tile_size": tuple(result.plan["tile"]["size"])}))
        got = predict(str(result.model_path), image)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4
