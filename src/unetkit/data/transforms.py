"""Synchronized image/label augmentation, batched on the training device with kornia.

Geometry (flips -- left-right, and upside-down unless `flip_vertical` is off --, rot90, rotation, scale) is one affine matrix per sample, applied with
`kornia.geometry.warp_affine` to the images (bilinear) and to the labels (nearest) alike; optional
elastic deformation shares one displacement field for both. Label pixels that come from outside the
image become `ignore_index`. Given a `size` smaller than its input, the augmenter warps the input's
centre into a patch of that size: the patch sampler crops `context_window` around each patch, so a
rotated corner or a zoomed-out border shows the image's real surroundings instead of padding.
Photometric changes (brightness, contrast, gamma, Gaussian noise, blur; for colour images
saturation and a shift per channel) touch the images only (the first
`image_channels` channels: channels past them are soft targets, a teacher's class probabilities,
warped bilinearly with the images); they are in units of the normalized intensity, so saturation
scales each pixel's distance from its channels' mean rather than an HSV saturation (kornia's needs
RGB in [0, 1]). Every random draw comes from
the augmenter's own `torch.Generator` (on the CPU, so a seed gives the same result on any device).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import elastic_transform2d, warp_affine

from unetkit.config import AugmentConfig

IGNORE_INDEX = 255


def geometric_chance(config: AugmentConfig) -> float:
    """The probability of rotation, scale and elastic deformation: `p_geometric`, unset `p`."""
    return config.p if config.p_geometric is None else config.p_geometric


def context_window(config: AugmentConfig, patch: tuple[int, int] | list[int]) -> tuple[int, int]:
    """The input (height, width) whose centre every geometry `config` draws maps onto a full `patch`:
    the patch's footprint rotated by up to `rotate_degrees` and zoomed out to `scale[0]`; the patch
    itself when augmentation has no such geometry (thin-structure plans: flips and rot90 only). The
    margin is whole on each side, so the patch is the window's exact centre."""
    h, w = int(patch[0]), int(patch[1])
    if not config.enabled or geometric_chance(config) <= 0:
        return h, w
    theta = math.radians(min(max(config.rotate_degrees, 0.0), 45.0))
    zoom = min(1.0, config.scale[0])
    if theta == 0 and zoom >= 1.0:
        return h, w
    cos, sin = math.cos(theta), math.sin(theta)
    need_h, need_w = (h * cos + w * sin) / zoom, (w * cos + h * sin) / zoom
    return h + 2 * math.ceil((need_h - h) / 2 - 1e-9), w + 2 * math.ceil((need_w - w) / 2 - 1e-9)


class Augmenter:
    def __init__(self, config: AugmentConfig, seed: int = 0, ignore_index: int = IGNORE_INDEX,
                 image_channels: int | None = None) -> None:
        self.config = config
        self.ignore_index = ignore_index
        self.image_channels = image_channels  # None: every channel is the image's
        self.generator = torch.Generator().manual_seed(seed)
        self._p_geometric = geometric_chance(config)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`images (N, C, H, W)` normalized float, `labels (N, H, W)` integer -> augmented copies, of
        `size` (at most the input's; default the input's): its centre, seen through the geometry."""
        out = (int(size[0]), int(size[1])) if size is not None else tuple(images.shape[-2:])
        if out[0] > images.shape[-2] or out[1] > images.shape[-1]:
            raise ValueError(f"size {out}: expected at most the input's {tuple(images.shape[-2:])}")
        if not self.config.enabled:
            return _centre(images, out), _centre(labels, out)
        images, labels = self._geometry(images, labels, out)
        c = self.image_channels
        if c is None or c >= images.shape[1]:
            return self._photometric(images), labels
        return torch.cat([self._photometric(images[:, :c]), images[:, c:]], 1), labels

    # ------------------------------------------------------------ geometry

    def _geometry(self, images: torch.Tensor, labels: torch.Tensor,
                  out: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, n = self.config, images.shape[0]
        height, width = out
        matrix = self._affine(n, tuple(images.shape[-2:]), out)
        elastic = cfg.elastic_alpha > 0 and self._chance(n, self._p_geometric).any()
        if matrix is None:
            images, labels = _centre(images, out), _centre(labels, out)
            if not elastic:
                return images, labels
        shifted = (labels.to(images.dtype) + 1).unsqueeze(1)  # 0 after warping = came from outside
        if matrix is not None:
            matrix = matrix.to(images.device, images.dtype)
            images = warp_affine(images, matrix, (height, width), mode="bilinear", align_corners=True)
            shifted = warp_affine(shifted, matrix, (height, width), mode="nearest", align_corners=True)
        if elastic:
            noise = (torch.rand((n, 2, height, width), generator=self.generator) * 2 - 1).to(images)
            sigma = max(4.0, min(height, width) / 8)
            kernel = int(2 * round(3 * sigma) + 1)
            alpha = (cfg.elastic_alpha, cfg.elastic_alpha)
            images = elastic_transform2d(images, noise, (kernel, kernel), (sigma, sigma), alpha)
            shifted = elastic_transform2d(
                shifted, noise, (kernel, kernel), (sigma, sigma), alpha, mode="nearest"
            )
        shifted = shifted.squeeze(1).round().long()
        labels = torch.where(shifted == 0, self.ignore_index, shifted - 1).to(labels.dtype)
        return images, labels

    def _affine(self, n: int, size: tuple[int, int], out: tuple[int, int]) -> torch.Tensor | None:
        """(N, 2, 3) pixel-space matrices taking the input's centre to the output's, or None for the
        identity (then the output is the input's centre crop)."""
        cfg = self.config
        height, width = out
        angle = torch.zeros(n, dtype=torch.float64)
        scale = torch.ones(n, dtype=torch.float64)
        flip_x, flip_y = torch.ones(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        if cfg.flip:
            flip_x = torch.where(self._chance(n, 0.5), -1.0, 1.0).double()
            if cfg.flip_vertical:
                flip_y = torch.where(self._chance(n, 0.5), -1.0, 1.0).double()
        if cfg.rot90:
            steps = torch.randint(0, 4, (n,), generator=self.generator)
            if height != width:
                steps = steps - steps % 2  # 90° would not fit a non-square patch: 0° or 180°
            angle += steps.double() * 90
        if cfg.rotate_degrees > 0:
            turn = self._uniform(n, -cfg.rotate_degrees, cfg.rotate_degrees)  # drawn before the chance, as always
            angle += turn * self._chance(n, self._p_geometric)
        lo, hi = cfg.scale
        if (lo, hi) != (1.0, 1.0):
            scale = torch.where(self._chance(n, self._p_geometric), self._uniform(n, lo, hi), scale)
        if not cfg.flip and not cfg.rot90 and cfg.rotate_degrees <= 0 and (lo, hi) == (1.0, 1.0):
            return None
        radians = angle * math.pi / 180
        cos, sin = torch.cos(radians) * scale, torch.sin(radians) * scale
        cx, cy = (size[1] - 1) / 2, (size[0] - 1) / 2  # the input's centre
        ox, oy = (width - 1) / 2, (height - 1) / 2  # the output's
        # output = R·S·F (input - centre) + output centre, F = diag(flip_x, flip_y)
        a, b = cos * flip_x, -sin * flip_y
        c, d = sin * flip_x, cos * flip_y
        tx, ty = ox - a * cx - b * cy, oy - c * cx - d * cy
        return torch.stack([torch.stack([a, b, tx], -1), torch.stack([c, d, ty], -1)], 1).float()

    # ------------------------------------------------------------ photometric

    def _photometric(self, images: torch.Tensor) -> torch.Tensor:
        cfg, n = self.config, images.shape[0]

        def per_sample(values: torch.Tensor) -> torch.Tensor:
            return values.to(images).view(n, 1, 1, 1)

        if cfg.brightness > 0:
            shift = self._uniform(n, -cfg.brightness, cfg.brightness) * self._chance(n)
            images = images + per_sample(shift)
        if cfg.contrast > 0:
            factor = torch.where(self._chance(n), self._uniform(n, 1 - cfg.contrast, 1 + cfg.contrast), 1.0)
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = (images - mean) * per_sample(factor) + mean
        if cfg.gamma > 0:
            gamma = torch.where(self._chance(n), torch.exp(self._uniform(n, -cfg.gamma, cfg.gamma)), 1.0)
            low = images.amin(dim=(1, 2, 3), keepdim=True)
            span = (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
            images = ((images - low) / span).clamp(0, 1) ** per_sample(gamma) * span + low
        if cfg.noise_std > 0:
            std = self._uniform(n, 0, cfg.noise_std) * self._chance(n)
            noise = torch.randn(images.shape, generator=self.generator).to(images)
            images = images + noise * per_sample(std)
        if cfg.blur_sigma > 0:
            chosen = self._chance(n)
            if chosen.any():
                sigma = self._uniform(n, 0.1, cfg.blur_sigma)[chosen].float().to(images.device)
                kernel = int(2 * math.ceil(3 * cfg.blur_sigma) + 1)
                idx = chosen.nonzero().squeeze(1).to(images.device)
                blurred = gaussian_blur2d(images[idx], kernel, torch.stack([sigma, sigma], -1))
                images = images.index_copy(0, idx, blurred)
        # colour last: a config without it draws the same random numbers as before it existed
        channels = images.shape[1]
        if channels > 1 and cfg.saturation > 0:
            factor = torch.where(self._chance(n), self._uniform(n, 1 - cfg.saturation, 1 + cfg.saturation), 1.0)
            grey = images.mean(dim=1, keepdim=True)
            images = grey + (images - grey) * per_sample(factor)
        if channels > 1 and cfg.channel_shift > 0:
            shift = self._uniform(n * channels, -cfg.channel_shift, cfg.channel_shift).view(n, channels)
            shift = shift * self._chance(n).view(n, 1)
            images = images + shift.to(images).view(n, channels, 1, 1)
        return images

    # ------------------------------------------------------------ randomness

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator, dtype=torch.float64)

    def _chance(self, n: int, p: float | None = None) -> torch.Tensor:
        return torch.rand(n, generator=self.generator) < (self.config.p if p is None else p)

    def state_dict(self) -> dict[str, Any]:
        """The generator state as a list of ints (JSON-ready, never pickled)."""
        return {"generator": self.generator.get_state().tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


def _centre(array: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre `size` of the last two axes (the window's patch; whole margins on each side)."""
    dh, dw = (array.shape[-2] - size[0]) // 2, (array.shape[-1] - size[1]) // 2
    if dh == 0 and dw == 0:
        return array
    return array[..., dh : dh + size[0], dw : dw + size[1]]
