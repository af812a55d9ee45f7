"""Encoder weights from local files: torchvision / timm / unetkit layouts, safetensors, and clear refusals."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from unetkit.config import ModelConfig
from unetkit.errors import ConfigError
from unetkit.models import build_model
from unetkit.models.encoders import ENCODERS, IMAGENET_MEAN
from unetkit.models.pretrained import (
    check_pretrained,
    encoder_state,
    input_normalization,
    load_pretrained_encoder,
)


def _imagenet_checkpoint(name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """A randomly initialised backbone in torchvision's key layout, with its ImageNet classifier."""
    torch.manual_seed(seed)
    state = ENCODERS.get(name).build(3).state_dict()
    for v in state.values():
        if v.is_floating_point():
            v.copy_(torch.randn_like(v))  # distinct from any fresh init, running stats included
    if name.startswith("resnet"):
        width = state["layer4.0.conv1.weight"].shape[0] * (4 if "layer4.0.conv3.weight" in state else 1)
        state |= {"fc.weight": torch.randn(1000, width), "fc.bias": torch.randn(1000)}
    else:
        state |= {"features.8.0.weight": torch.randn(1280, 320, 1, 1), "classifier.1.weight": torch.randn(1000, 1280)}
    return state


def _assert_encoder_equals(model, state, but=()):
    """Every encoder tensor equals the checkpoint's (`but`: keys compared by the caller)."""
    got = model.encoder.state_dict()
    for k in got:
        if k not in but:
            assert torch.equal(got[k], state[k]), k


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_resnet_weights_load_by_name_without_the_classifier(tmp_path, suffix):
    state = _imagenet_checkpoint("resnet18")
    path = tmp_path / f"resnet18{suffix}"
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    model = build_model(ModelConfig(encoder="resnet18", base_width=4))
    report = load_pretrained_encoder(model, path)
    _assert_encoder_equals(model, state)
    assert report.layout == "torchvision" and sorted(report.dropped) == ["fc.bias", "fc.weight"] and not report.adapted
    assert report.mean == IMAGENET_MEAN and report.loaded == len(model.encoder.state_dict())


def test_wrapped_ddp_checkpoints_and_the_first_conv_adapt_to_one_channel(tmp_path):
    state = _imagenet_checkpoint("resnet34")
    torch.save({"epoch": 90, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ckpt.pt")
    model = build_model(ModelConfig(encoder="resnet34", in_channels=1, base_width=4))
    report = load_pretrained_encoder(model, tmp_path / "ckpt.pt")
    assert report.adapted == "3 -> 1"
    assert torch.allclose(model.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    _assert_encoder_equals(model, state, but=("conv1.weight",))


def _timm_name(key: str) -> str:
    """torchvision EfficientNet key -> timm's (written independently of the loader, from timm's module names)."""
    for tv, timm in (("features.0.0.", "conv_stem."), ("features.0.1.", "bn1.")):
        if key.startswith(tv):
            return timm + key[len(tv):]
    m = re.fullmatch(r"features\.(\d+)\.(\d+)\.block\.(\d+)\.(\w+)\.(\w+)", key)
    if not m:
        return key
    stage, block, layer, part, leaf = m.groups()
    if stage == "1":  # depthwise-separable: dw, se, pw
        names = {("0", "0"): "conv_dw", ("0", "1"): "bn1", ("1", "fc1"): "se.conv_reduce",
                 ("1", "fc2"): "se.conv_expand", ("2", "0"): "conv_pw", ("2", "1"): "bn2"}
    else:  # inverted residual: pw, dw, se, pwl
        names = {("0", "0"): "conv_pw", ("0", "1"): "bn1", ("1", "0"): "conv_dw", ("1", "1"): "bn2",
                 ("2", "fc1"): "se.conv_reduce", ("2", "fc2"): "se.conv_expand", ("3", "0"): "conv_pwl", ("3", "1"): "bn3"}
    return f"blocks.{int(stage) - 1}.{block}.{names[(layer, part)]}.{leaf}"


def test_timm_efficientnet_names_map_to_the_encoder(tmp_path):
    state = _imagenet_checkpoint("efficientnet-b0")
    timm = {_timm_name(k): v for k, v in state.items() if not k.startswith(("features.8.", "classifier."))}
    timm |= {"conv_head.weight": torch.randn(1280, 320, 1, 1), "classifier.weight": torch.randn(1000, 1280)}
    assert "blocks.1.0.conv_pwl.weight" in timm
    save_file(timm, str(tmp_path / "effnet.safetensors"))
    model = build_model(ModelConfig(encoder="efficientnet-b0", base_width=4))
    report = load_pretrained_encoder(model, tmp_path / "effnet.safetensors")
    assert report.layout == "timm" and len(report.dropped) == 2
    _assert_encoder_equals(model, state)


def test_unetkits_own_encoder_layout_round_trips_and_keeps_the_datas_normalization(tmp_path):
    cfg = ModelConfig(base_width=4, depth=3)
    torch.manual_seed(3)
    source = build_model(cfg)
    save_file(encoder_state(source), str(tmp_path / "encoder.safetensors"))
    save_file(source.state_dict(), str(tmp_path / "whole.safetensors"))  # a whole network: its encoder is taken
    for name in ("encoder.safetensors", "whole.safetensors"):
        torch.manual_seed(4)
        target = build_model(cfg)
        report = load_pretrained_encoder(target, tmp_path / name)
        assert report.layout == "unetkit" and report.mean is None
        for k, v in source.encoder.state_dict().items():
            assert torch.equal(target.encoder.state_dict()[k], v), k
        assert not torch.equal(target.head.conv.weight, source.head.conv.weight)  # the rest stays fresh


def test_weights_of_another_encoder_name_the_first_mismatching_key_and_both_shapes(tmp_path):
    torch.save(_imagenet_checkpoint("resnet50"), tmp_path / "r50.pth")
    with pytest.raises(ConfigError) as e:
        check_pretrained(ModelConfig(encoder="resnet18"), tmp_path / "r50.pth")
    assert "key 'layer1.0.conv1.weight' has shape (64, 64, 1, 1) in the file" in str(e.value)
    assert "expects (64, 64, 3, 3)" in str(e.value) and "\n" not in str(e.value)

    truncated = {k: v for k, v in _imagenet_checkpoint("resnet18").items() if not k.startswith("layer4.")}
    save_file(truncated, str(tmp_path / "part.safetensors"))
    with pytest.raises(ConfigError, match=r"key 'layer4.0.conv1.weight' \(512, 256, 3, 3\) is not in the file"):
        check_pretrained(ModelConfig(encoder="resnet18"), tmp_path / "part.safetensors")

    model = build_model(ModelConfig(base_width=4))  # ImageNet weights into the built-in encoder
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="is not in the file"):
        load_pretrained_encoder(model, tmp_path / "r50.pth")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed


def test_pickled_objects_and_missing_files_are_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1), "cfg": ModelConfig()}, tmp_path / "objects.pth")
    with pytest.raises(ConfigError, match="not loadable as weights only"):
        check_pretrained(ModelConfig(encoder="resnet18"), tmp_path / "objects.pth")
    with pytest.raises(ConfigError, match="weights file not found"):
        check_pretrained(ModelConfig(encoder="resnet18"), tmp_path / "none.pth")


def test_input_normalization_in_raw_units():
    mean, std = input_normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 3, 255.0)
    assert mean == pytest.approx((123.675, 116.28, 103.53)) and std == pytest.approx((58.395, 57.12, 57.375))
    mean, std = input_normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1, 4000.0)  # 16-bit gray
    assert mean == pytest.approx((0.449 * 65535,)) and std == pytest.approx((0.226 * 65535,))
    mean, _ = input_normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 4, 0.9)
    assert mean == pytest.approx((0.485, 0.456, 0.406, 0.485))
