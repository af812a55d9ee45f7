"""Synthetic images and small model artifacts for the serving tests."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ("background", "cell", "vessel")


def make_artifact(path: Path, seed: int, name: str = "tiny", classes: tuple[str, ...] = CLASSES, **fields: Any) -> Path:
    """A random-weight 3-class U-Net (depth 2, width 8, 64x64 patches) saved as an artifact;
    `fields`: other ArtifactMeta fields (metrics, lineage...)."""
    import torch

    from unetkit.artifact import ArtifactMeta, save_artifact
    from unetkit.config import ModelConfig
    from unetkit.models import build_model

    torch.manual_seed(seed)
    cfg = ModelConfig(in_channels=3, out_channels=len(classes), depth=2, base_width=8)
    meta = ArtifactMeta(model=cfg, class_names=classes, mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0),
                        patch_size=(64, 64), name=name, **fields)
    return save_artifact(path, build_model(cfg).eval(), meta)


def synthetic_image(height: int = 96, width: int = 80, seed: int = 0) -> np.ndarray:
    """(3, H, W) float32 0-255: a bright disc on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 4) ** 2
    base = rng.normal(60, 15, (height, width)) + 140 * disc
    return np.clip(np.stack([base, base * 0.8, base * 0.6]), 0, 255).astype(np.float32)


def png_of(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.transpose(1, 2, 0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
