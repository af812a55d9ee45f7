"""Synthetic textured images for the drift tests: a fresh sample, and colour-shifted, blurred and
rescaled copies (no real data needed)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

SIZE = (96, 112)


def textured_image(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> np.ndarray:
    """(3, H, W) float32 in 0-255: smooth shading, fine texture, a few bright blobs and dark
    thin lines (vessel-like), with per-image exposure and tint, like photographs of one scene type."""
    height, width = size
    shading = ndimage.gaussian_filter(rng.normal(0, 1, size), 12) * 400
    texture = ndimage.gaussian_filter(rng.normal(0, 1, size), 1.0) * 25
    yy, xx = np.mgrid[0:height, 0:width]
    blobs = np.zeros(size)
    for _ in range(rng.integers(1, 4)):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 14)
        blobs += 70 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    lines = np.zeros(size)
    for _ in range(rng.integers(2, 5)):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-0.4, 0.4) * width
        distance = np.abs((xx - width / 2) * np.sin(angle) - (yy - height / 2) * np.cos(angle) - offset)
        lines -= 60 * (distance < rng.uniform(0.8, 2.0))
    base = 110 + rng.normal(0, 8) + shading + texture + blobs + lines
    tint = np.array([1.0, 0.75, 0.5]) + rng.normal(0, 0.03, 3)
    noise = rng.normal(0, 4, (3, *size))
    return np.clip(base[None] * tint[:, None, None] + noise, 0, 255).astype(np.float32)


def textured_images(n: int, seed: int, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [textured_image(rng, size) for _ in range(n)]


def colour_shifted(image: np.ndarray) -> np.ndarray:
    """A warmer camera: red +10 %, blue -10 %, plus an offset of 8 in red."""
    gain = np.array([1.1, 1.0, 0.9], np.float32)[:, None, None]
    return np.clip(image * gain + np.array([8, 0, 0], np.float32)[:, None, None], 0, 255)


def blurred(image: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(image, (0, 1.5, 1.5)).astype(np.float32)


def rescaled(image: np.ndarray, factor: float = 0.75) -> np.ndarray:
    return ndimage.zoom(image, (1, factor, factor), order=1).astype(np.float32)


@pytest.fixture(scope="session")
def reference_images() -> list[np.ndarray]:
    return textured_images(40, seed=1)


@pytest.fixture(scope="session")
def fresh_images() -> list[np.ndarray]:
    return textured_images(30, seed=2)
