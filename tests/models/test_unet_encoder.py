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
    network_state,
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


def test_a_network_file_carries_the_decoder_but_never_the_head(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = build_model(TINY)
    state = network_state(source)
    assert any(k.startswith("decoder.") for k in state) and any(k.startswith("ups.") for k in state)
    assert not any(k.startswith("head.") for k in state)
    path = save_unet_encoder(tmp_path / "net.safetensors", state, TINY, (0.0,) * 3, (1.0,) * 3, {"objective": "mim"})
    torch.manual_seed(1)
    target = build_model(replace(TINY, out_channels=5))
    head_before = target.head.conv.weight.clone()
    meta = load_unet_encoder(target, path)
    assert meta["parts"] == ["encoder", "decoder"]
    assert meta["architecture"]["upsample"] == "transpose" and meta["architecture"]["attention"] is False
    for key, value in state.items():
        assert torch.equal(target.state_dict()[key], value), key
    assert torch.equal(target.head.conv.weight, head_before)
    # a decoder of another shape is refused, naming the first key the file has no weights for
    with pytest.raises(ArtifactError, match=r"net.safetensors: no weights for the model's encoder and decoder key "
                                            r"'gates\.0\."):
        load_unet_encoder(build_model(replace(TINY, attention=True)), path)
    # an encoder-only file says so, and fits any decoder
    enc = save_unet_encoder(tmp_path / "enc.safetensors", encoder_state(source), TINY, (0.0,) * 3, (1.0,) * 3, {})
    assert read_unet_encoder(enc)[1]["parts"] == ["encoder"]
    assert "attention" not in read_unet_encoder(enc)[1]["architecture"]


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
