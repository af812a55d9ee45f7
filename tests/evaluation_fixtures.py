"""Small model artifacts and labelled data for the evaluation, calibration and report tests."""

from __future__ import annotations

from pathlib import Path

import torch

from unetkit.artifact import ArtifactMeta, save_artifact
from unetkit.config import ModelConfig
from unetkit.data.synthetic import make_drive_like_dataset
from unetkit.models import build_model

TINY = ModelConfig(in_channels=3, out_channels=2, depth=2, base_width=4)


def drive_like(root: Path, n_images: int = 3, size: tuple[int, int] = (48, 44)) -> Path:
    """DRIVE layout, small: vessels (0/255 GIF) with a field-of-view ROI; returns training/."""
    return make_drive_like_dataset(root, n_images=n_images, size=size, seed=1, with_test=False) / "training"


def tiny_artifact(
    path: Path, *, constant_logits: tuple[float, float] | None = None, head_scale: float = 1.0, seed: int = 0, **meta
) -> Path:
    """A 2-class tiny U-Net artifact. `constant_logits` zeroes the head's weights and sets its bias
    (the same logits for every pixel); `head_scale` multiplies the head (a more confident model);
    `meta["model"]` another architecture than TINY."""
    config = meta.pop("model", TINY)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    with torch.no_grad():
        model.head.conv.weight.mul_(head_scale)
        model.head.conv.bias.mul_(head_scale)
        if constant_logits is not None:
            model.head.conv.weight.zero_()
            model.head.conv.bias.copy_(torch.tensor(constant_logits))
    base = dict(model=config, class_names=("background", "vessel"), mean=(100.0, 50.0, 30.0), std=(40.0, 20.0, 10.0),
                patch_size=(32, 32))
    return save_artifact(path, model, ArtifactMeta(**(base | meta)))
