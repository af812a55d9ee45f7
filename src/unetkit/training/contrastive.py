"""Dense contrastive pretraining (`PretrainConfig.objective = "contrastive"`): two views of one region,
the same pixel told apart from every other pixel.

A region of `patch + shift` pixels is cut from a normalized image (flipped as a whole), and
two `patch` crops of it are taken at independent offsets up to `shift` (`pair_batch`), so every pixel
of their overlap has a known place in both. Each crop is recoloured on its own (`recolour`: per-channel
contrast and brightness, Gaussian noise, sometimes a 3x3 blur). The U-Net maps each crop to a
`EMBED_CHANNELS`-channel embedding per pixel; `dense_info_nce` samples `points` pixels of the overlap
per crop (mostly where the image has texture: `texture`) and scores the InfoNCE loss of the pairs (the same pixel in the two views) against every other
sampled pixel of the batch, both ways. To win, the network must describe a pixel by its surroundings
(which vessel, which edge) and not by its colour: what a segmentation encoder needs, learned without
labels. This is the dense variant of SimCLR-style contrastive learning (as in PixPro / DenseCL), in its
simplest form: no momentum encoder, no projection head beyond the U-Net's own 1x1 head.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

EMBED_CHANNELS = 32  # per-pixel embedding: the U-Net's head during contrastive pretraining


def pair_batch(images: list[np.ndarray], patch: tuple[int, int], batch: int, shift: int,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(view a, view b, offsets): two (N, C, ph, pw) crops of one random region of each of `batch`
    random images (normalized, already padded to `patch`), and (N, 2) the (dy, dx) such that pixel
    (y, x) of b is pixel (y + dy, x + dx) of a. Offsets reach `shift` pixels at most (fewer where the
    image is smaller than `patch + shift`)."""
    ph, pw = patch
    a_views, b_views, offsets = [], [], []
    for i in rng.integers(0, len(images), batch):
        im = images[i]
        sy, sx = min(shift, im.shape[1] - ph), min(shift, im.shape[2] - pw)
        y = rng.integers(0, im.shape[1] - ph - sy + 1)
        x = rng.integers(0, im.shape[2] - pw - sx + 1)
        region = im[:, y : y + ph + sy, x : x + pw + sx]
        if rng.random() < 0.5:  # flips of the region keep the two crops' offsets' meaning
            region = region[:, :, ::-1]
        if rng.random() < 0.5:
            region = region[:, ::-1, :]
        (ay, ax), (by, bx) = [(int(rng.integers(0, sy + 1)), int(rng.integers(0, sx + 1))) for _ in range(2)]
        a_views.append(np.ascontiguousarray(region[:, ay : ay + ph, ax : ax + pw]))
        b_views.append(np.ascontiguousarray(region[:, by : by + ph, bx : bx + pw]))
        offsets.append((by - ay, bx - ax))
    return (torch.from_numpy(np.stack(a_views)), torch.from_numpy(np.stack(b_views)),
            torch.tensor(offsets, dtype=torch.long))


def box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """The mean of each pixel's `size` x `size` neighbourhood (N, C, H, W), over the pixels inside the image."""
    return F.avg_pool2d(x, size, stride=1, padding=size // 2, count_include_pad=False)


def recolour(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each crop of a normalized batch (N, C, H, W) recoloured on its own: per-channel contrast
    x 0.6..1.4 and brightness +-0.4 (normalized units), Gaussian noise of standard deviation 0..0.2,
    and a 3x3 box blur for half of the crops."""
    n, c = x.shape[:2]
    contrast = 0.6 + 0.8 * torch.rand((n, c, 1, 1), generator=generator)
    brightness = 0.8 * torch.rand((n, c, 1, 1), generator=generator) - 0.4
    noise = 0.2 * torch.rand((n, 1, 1, 1), generator=generator) * torch.randn(x.shape, generator=generator)
    out = x * contrast + brightness + noise
    blur = torch.rand((n, 1, 1, 1), generator=generator) < 0.5
    return torch.where(blur, box_mean(out, 3), out)


def texture(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) how much each pixel's 5x5 neighbourhood varies (mean absolute difference from the 3x3
    mean, over channels): where there is something to tell a pixel by. A flat field (the black outside
    a fundus camera's field of view, an empty slide) scores ~0."""
    detail = (x - box_mean(x, 3)).abs().mean(1, keepdim=True)
    return box_mean(detail, 5)[:, 0]


def dense_info_nce(za: torch.Tensor, zb: torch.Tensor, offsets: torch.Tensor, points: int,
                   temperature: float, generator: torch.Generator, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The symmetric InfoNCE loss of `points` pixels per crop of the overlap of the two views'
    embeddings (N, D, H, W) (`offsets` as `pair_batch` gives them): a pixel's embedding in b must be
    nearer (cosine / `temperature`) to the same pixel's in a than to any other sampled pixel's of the batch.
    The pixels are drawn uniformly, or in proportion to `weights` (N, H, W) in b's frame (`texture`),
    so that flat background, where no pixel can be told from its neighbour, is seldom asked about."""
    n, _, h, w = za.shape
    qa, qb = [], []
    for k in range(n):
        dy, dx = int(offsets[k, 0]), int(offsets[k, 1])
        # b's pixel (y, x) is a's (y + dy, x + dx): both must lie inside their crops
        y0, y1, x0, x1 = max(0, -dy), min(h, h - dy), max(0, -dx), min(w, w - dx)
        if weights is None:
            yb = torch.randint(y0, y1, (points,), generator=generator)
            xb = torch.randint(x0, x1, (points,), generator=generator)
        else:
            p = weights[k, y0:y1, x0:x1].float().flatten()
            p = p + 0.05 * p.mean() + 1e-12  # every pixel keeps a chance
            flat = torch.multinomial(p, points, replacement=points > len(p), generator=generator)
            yb, xb = flat // (x1 - x0) + y0, flat % (x1 - x0) + x0
        qa.append(za[k, :, yb + dy, xb + dx].T)
        qb.append(zb[k, :, yb, xb].T)
    a = F.normalize(torch.cat(qa).float(), dim=1)
    b = F.normalize(torch.cat(qb).float(), dim=1)
    logits = a @ b.T / temperature
    target = torch.arange(len(logits))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
