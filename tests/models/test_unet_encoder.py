"""The built-in U-Net's encoder: which keys it is, and its weights file round trip and refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from unetkit.config import ModelConfig
from unetkit.errors import ArtifactError
from unetkit.models import build_model
from unetkit.models.unet_encoder import (
    encoder_state,
    is_encoder_key,
    load_unet_encoder,
    read_unet_encoder,
    save_unet_encoder,
)

TINY = ModelConfig(in_channels=3, out_channels=3, base_width=4, depth=2)


def test_encoder_keys_are_the_down_path_of_single_models_and_ensemble_members() -> None:
    assert is_encoder_key("encoder.0.conv1.conv.weight") and is_encoder_key("bottom.conv2.norm.bias")
    assert is_encoder_key("members.1.downs.0.op.conv.weight") and is_encoder_key("module.encoder.1.conv1.conv.weight")
    assert not any(is_encoder_key(k) for k in ("decoder.0.conv1.conv.weight", "head.conv.weight", "ups.0.conv.weight",
                                                "members.0.head.conv.bias"))
    model = build_model(TINY)
    keys = set(encoder_state(model))
    assert keys and all(is_encoder_key(k) for k in keys)
    assert {k for k in model.state_dict() if is_encoder_key(k)} == keys


def test_round_trip_copies_the_encoder_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model(TINY)
    path = save_unet_encoder(tmp_path / "enc.safetensors", encoder_state(source), TINY, (1.0, 2.0, 3.0),
                             (4.0, 5.0, 6.0), {"objective": "mim", "steps": 3})
    torch.manual_seed(1)
    target = build_model(replace(TINY, out_channels=5, attention=True))  # another decoder: fine
    head_before = target.head.conv.weight.clone()
    meta = load_unet_encoder(target, path)
    for key, value in encoder_state(source).items():
        assert torch.equal(target.state_dict()[key], value)
    assert torch.equal(target.head.conv.weight, head_before)
    assert meta["architecture"]["base_width"] == 4 and meta["widths"] == [4, 8, 16]
    assert meta["normalization"] == {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}
    assert meta["pretraining"]["objective"] == "mim"


def test_refusals_name_the_file_key_and_shapes(tmp_path: Path) -> None:
    path = save_unet_encoder(tmp_path / "enc.safetensors", encoder_state(build_model(TINY)), TINY, (0.0,) * 3,
                             (1.0,) * 3, {})
    wider = build_model(replace(TINY, base_width=8))
    with pytest.raises(ArtifactError, match=r"enc.safetensors: 'bottom.conv1.conv.weight' has shape \[16, 8, 3, 3\], "
                                            r"the model's is \[32, 16, 3, 3\]"):
        load_unet_encoder(wider, path)
    deeper = build_model(replace(TINY, depth=3))
    with pytest.raises(ArtifactError, match="bottom.conv1.conv.weight"):
        load_unet_encoder(deeper, path)
    with pytest.raises(ArtifactError, match="not found"):
        read_unet_encoder(tmp_path / "none.safetensors")
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"encoder.0.x": torch.zeros(1)}, str(plain), metadata={"other": json.dumps({})})
    with pytest.raises(ArtifactError, match="without 'unetkit_encoder' metadata"):
        read_unet_encoder(plain)
