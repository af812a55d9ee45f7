"""Generated data sets for the demo, the tests and benchmarks (no download needed).

- `make_synthetic_dataset`: `images/*.png` (RGB) + `masks/*.png` (palette index masks) of noisy
  shapes: background, discs, rectangles and thin lines (the rare class, < 1 % of pixels).
- `make_drive_like_dataset`: the DRIVE layout as published, with its awkward file names: RGB TIFF
  images, GIF label masks (gray 0/255 or palette indices 0/1) and GIF field-of-view masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from skimage.draw import disk, line, rectangle

from unetkit.data.io import write_png, write_tiff

SYNTHETIC_CLASSES = ("background", "disc", "rectangle", "line")
SYNTHETIC_PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 60], [60, 90, 240]], np.uint8)
_CLASS_RGB = np.array([[70, 60, 50], [200, 90, 80], [90, 170, 90], [130, 140, 230]], np.float32)


def make_synthetic_dataset(
    root: str | Path, n_images: int = 8, size: int | tuple[int, int] = (96, 128), seed: int = 0
) -> Path:
    """Write `n_images` image/mask pairs (`size` = (H, W)) under `root`; returns `root`."""
    root = Path(root)
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        labels = _shapes(rng, height, width)
        write_png(root / "images" / f"img_{i:03d}.png", _render(rng, labels))
        write_png(root / "masks" / f"img_{i:03d}.png", labels, palette=SYNTHETIC_PALETTE)
    return root


def _shapes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    labels = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 3)):
        h, w = rng.integers(height // 8, height // 4 + 1), rng.integers(width // 8, width // 4 + 1)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        labels[rectangle((top, left), extent=(h, w), shape=labels.shape)] = 2
    for _ in range(rng.integers(1, 4)):
        radius = rng.integers(max(2, min(height, width) // 14), max(3, min(height, width) // 7))
        labels[disk((rng.integers(0, height), rng.integers(0, width)), radius, shape=labels.shape)] = 1
    for _ in range(rng.integers(1, 3)):  # thin lines: the rare class
        r0, r1 = rng.integers(0, height, 2)
        c0 = rng.integers(0, width // 2)
        c1 = min(width - 1, c0 + rng.integers(width // 6, width // 3))
        labels[line(int(r0), int(c0), int(r1), int(c1))] = 3
    return labels


def _render(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    height, width = labels.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    shading = 25 * np.sin(xx / width * np.pi * rng.uniform(0.5, 2)) * np.cos(yy / height * np.pi)
    image = _CLASS_RGB[labels] + shading[..., None] + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_drive_like_dataset(
    root: str | Path,
    n_images: int = 4,
    size: tuple[int, int] = (40, 36),
    seed: int = 0,
    label_mode: Literal["L", "P"] = "L",
    with_test: bool = True,
) -> Path:
    """DRIVE as published, small: `training/images/21_training.tif`, `training/1st_manual/21_manual1.gif`
    (vessels: L-mode 0/255, or P-mode indices 0/1 with `label_mode="P"`), `training/mask/21_training_mask.gif`
    (field of view, 0/255); `test/` has images and FOV masks but no labels. `size` = (H, W)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    fov = (((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2 <= 0.9).astype(
        np.uint8
    )
    for split, first, n in (("training", 21, n_images), ("test", 1, n_images if with_test else 0)):
        for key in range(first, first + n):
            vessels = _vessels(rng, height, width) * fov
            image = np.stack([150 - 60 * vessels, 80 - 30 * vessels, 40 - 10 * vessels], -1) * fov[..., None]
            image = np.clip(image + rng.normal(0, 6, image.shape) * fov[..., None], 0, 255).astype(np.uint8)
            write_tiff(root / split / "images" / f"{key:02d}_{split}.tif", image, compression="lzw")
            _save_gif(root / split / "mask" / f"{key:02d}_{split}_mask.gif", fov * 255, "L")
            if split == "training":
                manual = root / split / "1st_manual" / f"{key:02d}_manual1.gif"
                _save_gif(manual, vessels if label_mode == "P" else vessels * 255, label_mode)
    return root


def _vessels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    vessels = np.zeros((height, width), np.uint8)
    for _ in range(4):
        r0, r1 = rng.integers(0, height, 2)
        c0, c1 = rng.integers(0, width, 2)
        rows, cols = line(int(r0), int(c0), int(r1), int(c1))
        vessels[rows, cols] = 1
        vessels[np.minimum(rows + 1, height - 1), cols] = 1
    return vessels


def _save_gif(path: Path, array: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(array.astype(np.uint8), mode)
    if mode == "P":
        im.putpalette([0, 0, 0, 255, 255, 255])
    im.save(path, optimize=False)  # optimize would turn a gray GIF into a palette one
