"""Synthetic images for the serving tests."""

from __future__ import annotations

import io

import numpy as np


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
