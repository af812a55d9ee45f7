"""`unetkit.training.loop`: what the end of training's predictions cost against a validation pass."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from unetkit.data.dataset import LoadedSample
from unetkit.training.loop import end_pass_factor
from unetkit.training.modes import FP32, mode_by_name

SLOW = 0.03  # seconds a forward pass on a plain (not channels_last) input sleeps


class SlowWhenPlain(nn.Module):
    """A 1x1 convolution that is slow on the fp32 path inference takes (contiguous inputs) and fast on
    the channels_last inputs a `+cl` compute mode feeds it; raises where `forbid` is set."""

    def __init__(self, forbid: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.forbid = forbid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.forbid:
            raise AssertionError("predicted")
        if not x.is_contiguous(memory_format=torch.channels_last):
            time.sleep(SLOW)
        return self.conv(x)


def samples(n: int = 3) -> list[LoadedSample]:
    rng = np.random.default_rng(0)
    return [LoadedSample(f"s{i}", rng.random((3, 32, 32), dtype=np.float32), rng.integers(0, 2, (32, 32)))
            for i in range(n)]


VALIDATION = dict(mean=(0.5,) * 3, std=(0.25,) * 3, class_names=("a", "b"), patch_size=(32, 32))


def test_the_end_pass_factor_is_the_fp32_predictions_time_over_the_modes() -> None:
    cl = mode_by_name("fp32+cl", torch.device("cpu"))
    model = cl.prepare(SlowWhenPlain())
    factor = end_pass_factor(model, samples(), mode=cl, **VALIDATION)
    # 3 images, one tile each: the plain copy sleeps 3 x 30 ms where the channels_last pass takes ~1 ms
    assert factor > 5.0, factor
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)  # the run's model untouched
    assert model.training


def test_an_fp32_run_predicts_as_the_end_does_and_is_not_timed() -> None:
    assert end_pass_factor(SlowWhenPlain(forbid=True), samples(), mode=FP32, **VALIDATION) == 1.0
    assert end_pass_factor(SlowWhenPlain(forbid=True), [], mode=mode_by_name("fp32+cl"), **VALIDATION) == 1.0
