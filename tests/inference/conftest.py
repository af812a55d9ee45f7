"""Small deterministic networks and predictors for the inference tests."""

import numpy as np
import pytest
import torch
from torch import nn


def small_net(in_channels: int = 2, classes: int = 3, seed: int = 0) -> nn.Module:
    """Three 3x3 convolutions (receptive field 7 px) with a BatchNorm; zero padding makes tile
    borders differ from the whole-image prediction, which is what blending must hide."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, classes, 3, padding=1),
    )
    with torch.no_grad():
        bn = net[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


class NumpyPredictor:
    """The contract without torch overhead in the tests: a callable over numpy batches."""

    def __init__(self, module: nn.Module, in_channels: int | None = None) -> None:
        self.module = module
        self.in_channels = in_channels
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape)
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch)).numpy()


@pytest.fixture
def make_net():
    return small_net


@pytest.fixture
def net() -> nn.Module:
    return small_net()


@pytest.fixture
def predictor(net: nn.Module) -> NumpyPredictor:
    return NumpyPredictor(net, in_channels=2)


@pytest.fixture
def image(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 1, (2, 70, 61)).astype(np.float32)
