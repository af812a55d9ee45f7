import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from unetkit.errors import ConfigError
from unetkit.inference import backends
from unetkit.inference.backends import (
    OnnxPredictor,
    TorchPredictor,
    export_onnx,
    fold_batchnorm,
    make_predictor,
)


@pytest.fixture
def batch(rng):
    return rng.uniform(0, 1, (3, 2, 20, 28)).astype(np.float32)


def reference(net, batch):
    with torch.no_grad():
        return net(torch.from_numpy(batch)).numpy()


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_predictor_matches_the_module(net, batch, channels_last):
    predictor = TorchPredictor(net, channels_last=channels_last)
    out = predictor(batch)
    assert out.shape == (3, 3, 20, 28) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(net, batch), atol=1e-5)
    assert predictor.in_channels == 2


def test_batchnorm_folding_removes_norms_and_keeps_outputs(net, batch):
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    np.testing.assert_allclose(reference(folded, batch), reference(net, batch), atol=1e-5)


def test_onnx_predictor_matches_torch_predictor(net, batch):
    onnx_bytes = export_onnx(net, (1, 2, 20, 28))
    onnx = OnnxPredictor(onnx_bytes, threads=1)
    torch_out = TorchPredictor(net)(batch)
    np.testing.assert_allclose(onnx(batch), torch_out, atol=1e-4)
    assert onnx.in_channels == 2 and onnx.out_channels == 3


def test_onnx_exports_from_several_threads_at_once(net, batch):
    # torch.onnx.export has process-wide state: unlocked, concurrent exports failed with
    # "GLOBALS.in_onnx_export must be False" (two predictors built side by side)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: export_onnx(net, (1, 2, 20, 28)), range(8)))
    expected = reference(net, batch)
    for onnx_bytes in models:
        np.testing.assert_allclose(OnnxPredictor(onnx_bytes, threads=1)(batch), expected, atol=1e-4)


def test_onnx_predictor_from_path(net, batch, tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(export_onnx(net, (1, 2, 20, 28)))
    predictor = make_predictor(str(path))
    assert isinstance(predictor, OnnxPredictor)
    np.testing.assert_allclose(predictor(batch), reference(net, batch), atol=1e-4)


def test_compile_failure_falls_back_to_eager(net, batch, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    predictor = TorchPredictor(net, compile=True)
    with pytest.warns(UserWarning, match="torch.compile failed.*eager"):
        out = predictor(batch)
    np.testing.assert_allclose(out, reference(net, batch), atol=1e-5)
    assert predictor.compile is False


def test_auto_measures_once_and_caches_the_choice(net, make_net, tmp_path, monkeypatch):
    calls = []

    def fake_measure(module, tile, batch_size, threads, sample, gate_data=None):
        calls.append(tile)
        return backends.BackendMeasurement({"torch": 2.0, "onnx": 1.0})

    monkeypatch.setattr(backends, "measure_backends", fake_measure)
    first = make_predictor(net, "auto", tile_shape=(16, 16), cache_dir=tmp_path)
    second = make_predictor(net, "auto", tile_shape=(16, 16), cache_dir=tmp_path)
    assert isinstance(first, OnnxPredictor) and isinstance(second, OnnxPredictor)
    assert calls == [(16, 16)]
    table = json.loads((tmp_path / "backends.json").read_text())
    (entry,) = table.values()
    assert entry["backend"] == "onnx" and entry["seconds"] == {"torch": 2.0, "onnx": 1.0}
    make_predictor(make_net(seed=1), "auto", tile_shape=(16, 16), cache_dir=tmp_path)  # other weights
    assert len(calls) == 2
    assert isinstance(make_predictor(net, "torch", cache_dir=tmp_path), TorchPredictor)  # explicit override


def test_measure_backends_times_working_candidates(net):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timings = backends.measure_backends(net, (16, 16), batch_size=2, candidates=("torch", "onnx"), repeats=1).seconds
    assert set(timings) == {"torch", "onnx"} and all(t > 0 for t in timings.values())


def test_make_predictor_errors(net):
    with pytest.raises(ConfigError, match="backend 'gpu'"):
        make_predictor(net, "gpu")
    with pytest.raises(ConfigError, match="expected an artifact"):
        make_predictor(42, "torch")


def test_artifact_pipeline_is_wrapped_with_its_patch_size(net):
    class FakeArtifact:
        class meta:
            patch_size = (32, 32)

        def pipeline_module(self):
            return net

    predictor = make_predictor(FakeArtifact(), "torch")
    assert predictor.tile_size == (32, 32) and predictor.in_channels == 2


def test_batchnorm_folding_on_a_unetkit_unet(rng):
    from unetkit.config import ModelConfig
    from unetkit.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(in_channels=1, out_channels=2, base_width=4, depth=2)).eval()
    x = rng.uniform(0, 1, (1, 1, 20, 20)).astype(np.float32)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    np.testing.assert_allclose(reference(folded, x), reference(model, x), atol=1e-4)


def test_predict_image_with_a_saved_artifact(tmp_path, monkeypatch, rng):
    from unetkit.artifact import ArtifactMeta, load_artifact, save_artifact
    from unetkit.config import ModelConfig, TileConfig
    from unetkit.inference.predict import predict_image, predict_tiled
    from unetkit.models import build_model

    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, out_channels=2, base_width=4, depth=2)
    meta = ArtifactMeta(model=cfg, class_names=("bg", "fg"), mean=(100.0,), std=(50.0,), patch_size=(32, 32))
    artifact = load_artifact(save_artifact(tmp_path / "m.safetensors", build_model(cfg), meta))
    image = rng.uniform(0, 255, (1, 40, 50)).astype(np.float32)
    probs = predict_image(artifact, image)  # auto backend, tile = the artifact's patch size
    assert probs.shape == (2, 40, 50)
    cache = (tmp_path / "cache" / "backends.json").read_text()
    assert cache.count(artifact.meta.weights_sha256) == 1
    expected = predict_tiled(TorchPredictor(artifact.pipeline_module()), image, TileConfig(tile_size=(32, 32)))
    (choice,) = [v for k, v in json.loads(cache).items() if artifact.meta.weights_sha256 in k]
    if choice.get("precision", "fp32") == "fp32":
        np.testing.assert_allclose(probs, expected, atol=1e-4)
    else:  # a reduced precision auto chose behind the parity gate (bf16 where the CPU has it)
        assert (probs.argmax(0) == expected.argmax(0)).mean() >= 0.995
        np.testing.assert_allclose(probs, expected, atol=0.05)
