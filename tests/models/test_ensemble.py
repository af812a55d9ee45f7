"""The Ensemble network: its softmax is the members' mean probabilities, through every backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from unetkit.artifact import ArtifactMeta, load_artifact, save_artifact
from unetkit.config import ModelConfig
from unetkit.errors import ConfigError
from unetkit.models import build_model, fuse_for_inference
from unetkit.models.ensemble import Ensemble, ensemble_state

MEMBER = ModelConfig(in_channels=3, out_channels=3, base_width=4, depth=2)


def members(n: int) -> list[torch.nn.Module]:
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(build_model(MEMBER).eval())
    return out


def test_softmax_of_the_output_is_the_mean_of_the_members_probabilities() -> None:
    nets = members(3)
    ensemble = build_model(dataclasses.replace(MEMBER, ensemble=3)).eval()
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 3
    ensemble.load_state_dict(ensemble_state([n.state_dict() for n in nets]), strict=True)
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        want = torch.stack([torch.softmax(n(x), 1) for n in nets]).mean(0)
        got = torch.softmax(ensemble(x), 1)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # BatchNorm folding works member by member
    torch.testing.assert_close(fuse_for_inference(ensemble)(x), ensemble(x), atol=1e-4, rtol=0)


def test_an_ensemble_of_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="model.ensemble"):
        build_model(dataclasses.replace(MEMBER, ensemble=0))
    with pytest.raises(ValueError, match="at least 2 members"):
        Ensemble(members(1))


def test_ensemble_artifact_exports_to_onnx_and_int8_like_a_single_model(tmp_path) -> None:
    from unetkit.export.onnx import export_artifact, onnx_session, parity_diff
    from unetkit.export.quantize import quantize_graph

    nets = members(2)
    meta = ArtifactMeta(model=dataclasses.replace(MEMBER, ensemble=2), class_names=("a", "b", "c"),
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), patch_size=(32, 32), temperature=1.3)
    path = save_artifact(tmp_path / "ens.unetkit", ensemble_state([n.state_dict() for n in nets]), meta)
    art = load_artifact(path)
    result = export_artifact(art, tmp_path / "ens.onnx")  # refuses on a parity failure
    assert result.max_abs_diff < 1e-4
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    session = onnx_session(str(result.model_path))
    got = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        want = art.pipeline_module(probabilities=True)(torch.from_numpy(x)).numpy()
    assert any(o.shape == want.shape and np.allclose(o, want, atol=1e-5) for o in got)
    int8 = quantize_graph(result.model_path.read_bytes(), np.random.default_rng(1).random((8, 3, 32, 32), dtype=np.float32))
    assert parity_diff(int8, art, [x]) < 0.2  # runs, and stays near the fp32 probabilities
