"""Exported graph = the artifact's torch pipeline; the plan beside it; refusal on parity failure."""

import json

import numpy as np
import pytest
import torch

import unetkit.export.onnx as export_onnx_module
from tests.evaluation_fixtures import TINY, tiny_artifact
from unetkit.artifact import load_artifact
from unetkit.config import ExportConfig, TileConfig, replace
from unetkit.data.io import file_sha256
from unetkit.export.onnx import ParityError, export_artifact, onnx_session
from unetkit.export.plan import read_plan, tile_config_from_plan
from unetkit.inference.backends import OnnxPredictor, exported_onnx, make_predictor
from unetkit.inference.predict import predict_tiled


def test_probabilities_and_logits_match_torch_on_odd_sizes(artifact_path, rng):
    result = export_artifact(artifact_path)
    art = load_artifact(artifact_path)
    assert result.model_path == artifact_path.with_suffix(".onnx") and result.max_abs_diff <= 1e-4
    session = onnx_session(result.model_path)
    uncalibrated = art.with_meta(temperature=1.0, class_scale=(), class_bias=()).pipeline_module(probabilities=True)
    for shape in ((1, 3, 37, 53), (3, 3, 45, 29), (2, 3, 32, 32)):
        x = rng.uniform(0, 255, shape).astype(np.float32)
        probs, logits = session.run(["probabilities", "logits"], {"image": x})
        with torch.inference_mode():
            want_p = art.pipeline_module(probabilities=True)(torch.from_numpy(x)).numpy()
            want_l = art.pipeline_module()(torch.from_numpy(x)).numpy()
            plain = uncalibrated(torch.from_numpy(x)).numpy()
        assert probs.shape == want_p.shape == (shape[0], 2, *shape[2:])
        assert np.abs(probs - want_p).max() <= 1e-4
        assert np.abs(logits - want_l).max() <= 1e-3
        assert np.abs(probs - plain).max() > 1e-2  # the calibration really is inside the graph
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("change", [{"norm": "group"}, {"norm": "instance"}, {"input_norm": "image"}],
                         ids=["group", "instance", "input-standardized"])
def test_per_image_norms_export_with_parity(tmp_path, change, rng):
    """GroupNorm/InstanceNorm (R9 below batch 4) and the per-image input standardization (`model.input_norm`)."""
    path = tiny_artifact(tmp_path / "m.unetkit", seed=4, model=replace(TINY, **change))
    result = export_artifact(path)  # refuses (ParityError) when the graph and torch disagree
    assert result.max_abs_diff <= 1e-4
    x = rng.uniform(0, 255, (1, 3, 40, 36)).astype(np.float32)
    with torch.inference_mode():
        want = load_artifact(path).pipeline_module(probabilities=True)(torch.from_numpy(x)).numpy()
    assert np.abs(onnx_session(result.model_path).run(["probabilities"], {"image": x})[0] - want).max() <= 1e-4


def test_plan_holds_what_a_plain_runtime_user_needs(artifact_path):
    result = export_artifact(artifact_path, artifact_path.parent / "out" / "m.onnx", tile=TileConfig(overlap=0.5))
    plan = json.loads((artifact_path.parent / "out" / "m.onnx.json").read_text())
    assert plan == read_plan(result.model_path) == result.plan
    meta = load_artifact(artifact_path).meta
    assert plan["tile"] | {"placement": "", "blending": "", "resampling": "", "tta_mean": ""} == {
        "size": [32, 32], "overlap": 0.5, "blend": "gaussian", "sigma_scale": 0.125, "min_weight": 1e-3,
        "padding": "reflect", "batch_size": 4, "activation": "none", "tta": False, "tta_views": "dihedral",
        "tta_temperature": 1.0, "tta_mean": "",
        "resolution": 1.0, "resolutions": [], "resolutions_temperature": 1.0, "placement": "", "blending": "",
        "resampling": ""}
    assert tile_config_from_plan(plan).resolution == 1.0  # a model trained at half size would say 0.5 here
    assert tile_config_from_plan({**plan, "tile": {**plan["tile"], "resolution": 0.5}}).resolution == 0.5
    assert plan["classes"] == ["background", "vessel"] and plan["colors"] == [list(c) for c in meta.colors()]
    assert plan["input"]["channels"] == 3 and plan["input"]["mean"] == [100.0, 50.0, 30.0]
    assert "raw intensities" in plan["input"]["units"]
    assert plan["calibration"]["temperature"] == 1.7 and plan["calibration"]["class_scale"] == [1.2, 0.8]
    assert plan["postprocess"] == meta.postprocess
    assert plan["artifact"]["sha256"] == file_sha256(artifact_path)
    assert plan["artifact"]["weights_sha256"] == meta.weights_sha256
    assert plan["model_sha256"] == file_sha256(result.model_path)
    assert plan["parity"]["max_abs_diff"] <= plan["parity"]["tolerance"] == 1e-4
    assert tile_config_from_plan(plan) == TileConfig(tile_size=(32, 32), overlap=0.5, activation="none")


def test_parity_failure_refuses_and_leaves_no_file(artifact_path, monkeypatch):
    out = artifact_path.parent / "bad.onnx"
    out.write_bytes(b"previous export")
    reference = export_onnx_module.torch_probabilities
    monkeypatch.setattr(export_onnx_module, "torch_probabilities", lambda art, batch: reference(art, batch) + 3e-4)
    with pytest.raises(ParityError, match=r"bad.onnx: .* by 0\.0003\d* \(max .*\), more than parity_tolerance 0.0001; nothing was written"):
        export_artifact(artifact_path, out)
    assert out.read_bytes() == b"previous export"  # the old file is untouched, no plan, no temporary files
    assert sorted(p.name for p in out.parent.iterdir()) == ["bad.onnx", "model.unetkit"]
    result = export_artifact(artifact_path, out, ExportConfig(parity_tolerance=1e-3))  # a looser tolerance accepts it
    assert 2e-4 < result.max_abs_diff <= 1e-3 and out.read_bytes()[:4] != b"prev"


def test_engine_runs_the_exported_model_like_the_artifact(artifact_path, rng):
    result = export_artifact(artifact_path)
    art = load_artifact(artifact_path)
    image = rng.uniform(0, 255, (3, 70, 61)).astype(np.float32)
    want = predict_tiled(make_predictor(art, "torch"), image, TileConfig(tile_size=(32, 32)))
    from_path = make_predictor(str(result.model_path))
    assert isinstance(from_path, OnnxPredictor) and from_path.tile_size == (32, 32) and from_path.output_name == "logits"
    assert np.abs(predict_tiled(from_path, image, TileConfig()) - want).max() <= 1e-4
    probs_out = OnnxPredictor(result.model_path, output="probabilities")
    assert np.abs(predict_tiled(probs_out, image, TileConfig(activation="none")) - want).max() <= 1e-4
    assert exported_onnx(art) == result.model_path  # --backend onnx reuses it
    assert isinstance(make_predictor(art, "onnx"), OnnxPredictor)
    with pytest.raises(Exception, match="no output 'scores'"):
        OnnxPredictor(result.model_path, output="scores")


def test_export_of_another_file_is_not_reused(artifact_path, tmp_path):
    export_artifact(artifact_path)
    artifact_path.write_bytes(artifact_path.read_bytes())  # same bytes: still reused
    assert exported_onnx(load_artifact(artifact_path)) is not None
    from tests.evaluation_fixtures import tiny_artifact

    tiny_artifact(artifact_path, seed=9)  # retrained in place: the old export no longer matches
    assert exported_onnx(load_artifact(artifact_path)) is None
