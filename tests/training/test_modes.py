"""Compute modes: which modes a config allows on a device, and what a mode does to model and input."""

from __future__ import annotations

import pytest
import torch

from unetkit.config import ModelConfig
from unetkit.errors import ConfigError
from unetkit.models import build_model
from unetkit.training.modes import ComputeMode, candidate_modes, mode_by_name

CPU = torch.device("cpu")


def names(modes) -> list[str]:
    return [m.name for m in modes]


def test_auto_on_a_cpu_leaves_every_mode_to_measurement_fp32_first_then_the_least_like_it():
    assert names(candidate_modes("auto", "auto", CPU)) == ["fp32", "bf16+cl", "bf16", "fp32+cl"]
    assert names(candidate_modes("bf16", "auto", CPU)) == ["bf16+cl", "bf16"]
    assert names(candidate_modes("auto", "contiguous", CPU)) == ["fp32", "bf16"]
    assert names(candidate_modes("fp32", "channels_last", CPU)) == ["fp32+cl"]


@pytest.mark.parametrize("bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_keeps_the_fixed_rule(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    (mode,) = candidate_modes("auto", "auto", torch.device("cuda"))
    assert mode.name == expected and mode.scale_loss == (expected == "fp16") and not mode.channels_last


def test_unknown_values_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="precision: expected one of"):
        candidate_modes("off", "auto", CPU)
    with pytest.raises(ConfigError, match="memory_format: expected one of"):
        candidate_modes("auto", "nhwc", CPU)
    with pytest.raises(ConfigError, match="compute mode"):
        mode_by_name("bf16+nhwc")


def test_channels_last_changes_strides_not_weights_and_autocast_computes_in_bf16():
    mode = mode_by_name("bf16+cl")
    assert mode == ComputeMode("bf16", channels_last=True)
    model = mode.prepare(build_model(ModelConfig(base_width=4, depth=2)))
    conv = next(p for p in model.parameters() if p.dim() == 4)
    assert conv.dtype == torch.float32 and conv.is_contiguous(memory_format=torch.channels_last)
    x = mode.input(torch.randn(2, 3, 16, 16))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with mode.autocast("cpu"):
        assert model(x).dtype == torch.bfloat16
