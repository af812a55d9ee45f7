"""Model artifacts whose uncertainty is known by construction, and small image folders.

`designed_artifact`: a real U-Net (depth 1, no norm) whose weights pass the pixel's intensity
straight through the skip connection to the head, so p(class 1) = sigmoid(slope * (x/255 - 0.5)).
Dark and bright pixels are confident, mid-grey ones (x ~ 128) are a coin toss. With `shift` ("left", "up")
the first convolution reads that neighbour of the pixel instead, so the model is not flip-invariant
("up" is invariant under the left-right mirror, not under the other views).
`constant_artifact`: every weight zero, the head's bias fixed: the same probabilities everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetkit.artifact import ArtifactMeta, save_artifact
from unetkit.config import ModelConfig
from unetkit.models import build_model

CLASSES = ("background", "object")
COLORS = ((0, 0, 0), (230, 25, 75))


def _meta(cfg: ModelConfig) -> ArtifactMeta:
    return ArtifactMeta(model=cfg, class_names=CLASSES, class_colors=COLORS, mean=(0.0,), std=(255.0,),
                        patch_size=(32, 32), name="designed")


def _zeroed(cfg: ModelConfig) -> torch.nn.Module:
    net = build_model(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    return net


CFG = ModelConfig(in_channels=1, out_channels=2, depth=1, base_width=2, norm="none")


SHIFTS = {None: (1, 1), "left": (1, 0), "up": (0, 1)}  # the first convolution's tap: the pixel or a neighbour


def designed_artifact(path: Path, slope: float = 20.0, shift: str | None = None) -> Path:
    net = _zeroed(CFG)
    with torch.no_grad():
        net.encoder[0].conv1.conv.weight[(0, 0, *SHIFTS[shift])] = 1.0
        net.encoder[0].conv2.conv.weight[0, 0, 1, 1] = 1.0
        net.decoder[0].conv1.conv.weight[0, 0, 1, 1] = 1.0  # channel 0 of cat([skip, up]) = the skip
        net.decoder[0].conv2.conv.weight[0, 0, 1, 1] = 1.0
        net.head.conv.weight[1, 0, 0, 0] = slope
        net.head.conv.bias[1] = -0.5 * slope
    return save_artifact(path, net, _meta(CFG))


def constant_artifact(path: Path, logit: float = 0.7) -> Path:
    net = _zeroed(CFG)
    with torch.no_grad():
        net.head.conv.bias[1] = logit
    return save_artifact(path, net, _meta(CFG))


def write_gray(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").save(path)
    return path


def disc_image(size: int, inside: float, outside: float, noise: float = 3.0, seed: int = 0) -> np.ndarray:
    """A disc of intensity `inside` on `outside`, with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    return np.where(disc, inside, outside) + rng.normal(0, noise, (size, size))


@pytest.fixture
def designed(tmp_path: Path) -> Path:
    return designed_artifact(tmp_path / "designed.unetkit")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """Four images, from clear to ambiguous (expected order, most uncertain first:
    ambiguous, faint, half, clear)."""
    folder = tmp_path / "unlabelled"
    write_gray(folder / "clear.png", disc_image(48, 235, 20, seed=1))
    write_gray(folder / "faint.png", disc_image(48, 140, 115, noise=1.0, seed=2))
    write_gray(folder / "ambiguous.png", disc_image(48, 131, 124, seed=3))
    half = disc_image(48, 235, 20, seed=4)
    half[:, 24:] = disc_image(48, 131, 124, seed=5)[:, 24:]
    write_gray(folder / "half.png", half)
    return folder
