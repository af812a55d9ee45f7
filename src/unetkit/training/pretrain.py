"""Self-supervised pretraining of the built-in U-Net's encoder on unlabelled images (`unetkit pretrain`).

images (a folder, or a list of files), resampled to `resolution` of their side when the fine-tuning
run trains reduced (`DataConfig.resolution`) -> per-channel normalization from them -> random crops with
flips/rot90 -> a corruption -> the whole U-Net (out_channels = in_channels) restores the clean crop
-> AdamW, cosine schedule, within a wall-clock budget (`BudgetClock`) -> the encoder's weights, or
with `keep: network` the encoder's and the decoder's (`unetkit.models.unet_encoder`, with
architecture, widths, normalization and how they were trained).

Objectives (`PretrainConfig.objective`):
- `mim`, masked-image modelling: `mask_ratio` of a grid of `mask_patch`-pixel squares is set to the
  mean (0 after normalization); the loss is the mean squared error on the masked pixels only, so the
  network must infer them from their context (vessels continue, textures repeat), not copy them
  through the skip connections.
- `denoise`: Gaussian noise of `noise_std` (normalized units) on every pixel; mean squared error on
  all pixels.
- `contrastive`: no restoration; two recoloured crops of one region, shifted against each other, and
  the InfoNCE loss of each pixel's embedding in both against the other pixels'
  (`unetkit.training.contrastive`).
Which pays on DRIVE at CPU budgets: docs/benchmarks.md ("Self-supervised pretraining").
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.config import (
    PRETRAIN_KEEPS,
    PRETRAIN_OBJECTIVES,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
)
from unetkit.data.fingerprint import channel_stats
from unetkit.data.io import is_image_file, read_image
from unetkit.data.resample import check_resolution, resample_image
from unetkit.errors import ConfigError, DataError
from unetkit.models import build_model
from unetkit.models.unet_encoder import encoder_state, network_state, save_unet_encoder
from unetkit.runtime import keep_freed_memory
from unetkit.training.budget import BudgetClock
from unetkit.training.contrastive import EMBED_CHANNELS, dense_info_nce, pair_batch, recolour, texture
from unetkit.training.optim import build_optimizer, clip_gradients, set_lr
from unetkit.training.precision import ModeDecision, check_available, decide_mode
from unetkit.training.runlog import progress_bar

MIN_IMAGES = 1
CPU = torch.device("cpu")  # pretraining runs on the CPU
LOG_EVERY = 50


def image_list(source: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files of a folder (not recursive, sorted), or the given files; refuses none."""
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of images")
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))
    else:
        files = [Path(p) for p in source]
    if len(files) < MIN_IMAGES:
        raise DataError(f"{source}: no image files (expected PNG, TIFF, JPEG... images to pretrain on)")
    return files


def load_images(files: Sequence[Path]) -> list[np.ndarray]:
    images = [read_image(p) for p in files]
    channels = {im.shape[0] for im in images}
    if len(channels) > 1:
        first = next(p for p, im in zip(files, images, strict=True) if im.shape[0] != images[0].shape[0])
        raise DataError(f"{first}: {channels} channel counts among the images; pretraining needs one "
                        f"(the first image, {files[0]}, has {images[0].shape[0]})")
    return images


def check_config(config: PretrainConfig) -> None:
    if config.objective not in PRETRAIN_OBJECTIVES:
        raise ConfigError(f"pretrain.objective: expected one of {list(PRETRAIN_OBJECTIVES)}, got {config.objective!r}")
    if config.keep not in PRETRAIN_KEEPS:
        raise ConfigError(f"pretrain.keep: expected one of {list(PRETRAIN_KEEPS)}, got {config.keep!r}")
    if not 0.0 < config.mask_ratio < 1.0:
        raise ConfigError(f"pretrain.mask_ratio: expected a fraction in (0, 1), got {config.mask_ratio}")
    if config.mask_patch < 1 or config.batch_size < 1 or config.steps < 1:
        raise ConfigError("pretrain: mask_patch, batch_size and steps must be >= 1")
    if config.noise_std <= 0:
        raise ConfigError(f"pretrain.noise_std: expected a positive standard deviation, got {config.noise_std}")
    if config.contrastive_points < 1 or config.contrastive_temperature <= 0 or not 0 <= config.contrastive_shift < 1:
        raise ConfigError("pretrain: contrastive_points must be >= 1, contrastive_temperature > 0 and "
                          f"contrastive_shift a fraction of the patch in [0, 1); got {config.contrastive_points}, "
                          f"{config.contrastive_temperature}, {config.contrastive_shift}")
    check_resolution(config.resolution, "pretrain.resolution")
    if min(config.patch_size) < 2**config.depth:
        raise ConfigError(f"pretrain.patch_size: {list(config.patch_size)} is smaller than 2**depth = {2**config.depth}")


def corrupt(x: torch.Tensor, config: PretrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted input, weight of each pixel in the loss (N,1,H,W)) for the objective."""
    n, _, h, w = x.shape
    if config.objective == "denoise":
        noise = torch.randn(x.shape, generator=generator) * config.noise_std
        return x + noise.to(x.device), torch.ones((n, 1, h, w), device=x.device)
    cells = (math.ceil(h / config.mask_patch), math.ceil(w / config.mask_patch))
    grid = (torch.rand((n, 1, *cells), generator=generator) < config.mask_ratio).float()
    mask = grid.repeat_interleave(config.mask_patch, 2).repeat_interleave(config.mask_patch, 3)[:, :, :h, :w]
    mask = mask.to(x.device)
    return x * (1.0 - mask), mask


def restoration_loss(output: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the weighted pixels (every channel)."""
    se = ((output.float() - target) ** 2 * weight).sum()
    return se / (weight.sum() * target.shape[1]).clamp_min(1.0)


class CropSampler:
    """Random `patch` crops of normalized images (reflect-padded when smaller), with flips and rot90."""

    def __init__(self, images: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float],
                 patch: tuple[int, int], batch: int, rng: np.random.Generator) -> None:
        m = np.asarray(mean, np.float32)[:, None, None]
        s = np.asarray(std, np.float32)[:, None, None]
        self.images = [_pad_to((im - m) / s, patch) for im in images]
        self.patch, self.batch, self.rng = patch, batch, rng

    def next_pair(self, shift: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Half a batch of regions, two crops of each up to `shift` of the patch apart (a step computes
        `batch` crops, as the other objectives' do), and their offsets (`unetkit.training.contrastive.pair_batch`)."""
        return pair_batch(self.images, self.patch, max(1, self.batch // 2), int(shift * min(self.patch)), self.rng)

    def next_batch(self) -> torch.Tensor:
        ph, pw = self.patch
        crops = []
        for i in self.rng.integers(0, len(self.images), self.batch):
            im = self.images[i]
            y = self.rng.integers(0, im.shape[1] - ph + 1)
            x = self.rng.integers(0, im.shape[2] - pw + 1)
            crop = im[:, y : y + ph, x : x + pw]
            if self.rng.random() < 0.5:
                crop = crop[:, :, ::-1]
            if ph == pw:
                crop = np.rot90(crop, int(self.rng.integers(0, 4)), axes=(1, 2))
            crops.append(np.ascontiguousarray(crop))
        return torch.from_numpy(np.stack(crops))


def _step_loss(model: torch.nn.Module, sampler: CropSampler, config: PretrainConfig, mode: Any,
               generator: torch.Generator) -> torch.Tensor:
    """The loss of one step of the objective, in float; the forward pass in `mode`."""
    if config.objective == "contrastive":
        a, b, offsets = sampler.next_pair(config.contrastive_shift)
        views = mode.input(torch.cat([recolour(a, generator), recolour(b, generator)]))
        with mode.autocast(CPU.type):
            z = model(views)
        return dense_info_nce(z[: len(a)], z[len(a):], offsets, config.contrastive_points,
                              config.contrastive_temperature, generator, weights=texture(b))
    clean = sampler.next_batch()
    corrupted, weight = corrupt(clean, config, generator)
    with mode.autocast(CPU.type):
        restored = model(mode.input(corrupted))
    return restoration_loss(restored, clean, weight)


def _pad_to(image: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    dh, dw = max(0, patch[0] - image.shape[1]), max(0, patch[1] - image.shape[2])
    if not dh and not dw:
        return image.astype(np.float32)
    mode = "reflect" if dh < image.shape[1] and dw < image.shape[2] else "edge"
    return np.pad(image, ((0, 0), (0, dh), (0, dw)), mode=mode).astype(np.float32)


def pretrain_mode(config: PretrainConfig, model: ModelConfig) -> ModeDecision:
    """The compute mode of the pretraining steps, decided as a training run's (`decide_mode`: the
    modes timed and health-checked on this network, crop and batch), a segmentation head standing in
    for the restoration head (the same cost but for the last 1x1 conv). On the AVX512-BF16 EPYC the
    DRIVE pretraining of a w32 d4 network ran fp32 at 1.68 s/step where training ran bf16+cl."""
    proxy = TrainConfig(model=dataclasses.replace(model, out_channels=max(2, model.out_channels)),
                        data=DataConfig(patch_size=tuple(config.patch_size), batch_size=config.batch_size),
                        precision=config.precision, memory_format=config.memory_format,
                        budget_seconds=config.budget_seconds, steps=config.steps, progress=False)
    check_available(config.precision, CPU, proxy.model, proxy.loss)
    return decide_mode(proxy, CPU)


def pretrain(config: PretrainConfig, *, images: Sequence[str | Path] | None = None,
             extra: Sequence[np.ndarray] = (), log: Callable[[str], Any] | None = None) -> Path:
    """Pretrain the encoder per `config` on `config.images` (or the `images` files), plus `extra` images
    already loaded ((C, H, W) raw units: a labelled data set's training images); returns the weights file.

    With `budget_seconds` the step count is fitted to the budget (measured steps, re-planned every
    ~5 %), else `steps` steps run. Writes only `config.out` (atomically), at the end."""
    started = time.perf_counter()
    check_config(config)
    clock = BudgetClock(config.budget_seconds)
    clock.end_passes = 0.0  # no validation: the end is one save
    files = image_list(images if images is not None else config.images)
    pictures = load_images(files)
    for im in extra:
        if im.shape[0] != pictures[0].shape[0]:
            raise DataError(f"{files[0]}: {pictures[0].shape[0]} channel(s), the labelled images have {im.shape[0]}; "
                            "pretrain on images like the ones to segment")
    pictures += [np.asarray(im, np.float32) for im in extra]
    pictures = [resample_image(p, config.resolution) for p in pictures]  # the scale fine-tuning trains at
    mean, std = channel_stats(pictures)
    channels = pictures[0].shape[0]
    contrastive = config.objective == "contrastive"
    model_cfg = ModelConfig(in_channels=channels, out_channels=EMBED_CHANNELS if contrastive else channels,
                            base_width=config.base_width,
                            depth=config.depth, norm=config.norm, input_norm=config.input_norm)
    torch.manual_seed(config.seed)
    keep_freed_memory()
    decision = pretrain_mode(config, model_cfg)
    mode = decision.mode
    model = mode.prepare(build_model(model_cfg))  # weights stay fp32 in every mode
    optim = OptimConfig(lr=config.lr, weight_decay=config.weight_decay, warmup_steps=max(1, min(200, config.steps // 30)))
    optimizer = build_optimizer(model, optim)
    sampler = CropSampler(pictures, mean, std, tuple(config.patch_size), config.batch_size,
                          np.random.default_rng(config.seed))
    generator = torch.Generator().manual_seed(config.seed + 1)
    total, decided, step, losses = config.steps if not clock.enabled else 10**7, False, 0, []
    bar = progress_bar(total if not clock.enabled else 0, 0, desc="pretrain") if config.progress else None
    if log:
        log(f"pretraining a w{config.base_width} d{config.depth} U-Net encoder on {len(pictures)} image(s) by "
            f"{config.objective} ({config.patch_size[0]}x{config.patch_size[1]} crops, batch {config.batch_size}"
            f"{f', at {config.resolution:g}x' if config.resolution != 1.0 else ''}; "
            f"{mode.name}: {decision.reason})")
    model.train()
    while step < total:
        t0 = time.perf_counter()
        lr = set_lr(optimizer, step, total if decided or not clock.enabled else max(step + 1, config.steps), optim)
        optimizer.zero_grad(set_to_none=True)
        loss = _step_loss(model, sampler, config, mode, generator)  # in float
        if not torch.isfinite(loss):
            raise ConfigError(f"pretraining diverged at step {step}: the loss is {float(loss)}; lower the lr")
        loss.backward()
        clip_gradients(model.parameters(), 12.0)
        optimizer.step()
        step += 1
        losses.append(float(loss.detach()))
        clock.record_step(time.perf_counter() - t0)
        if clock.enabled and clock.time_to_plan(decided, False):
            total, decided = max(step, clock.plan(step, 1)), True
            if bar is not None:
                bar.total = total
        if bar is not None:
            bar.set_postfix({"loss": f"{losses[-1]:.4f}", "lr": f"{lr:.2e}"}, refresh=False)
            bar.update(step - bar.n)
        if clock.enabled and clock.out_of_time():
            break
    if bar is not None:
        bar.close()
    window = max(1, min(50, len(losses) // 10))
    record = {"objective": config.objective, "steps": step, "seconds": round(time.perf_counter() - started, 1),
              "images": len(pictures), "patch_size": list(config.patch_size), "batch_size": config.batch_size,
              "resolution": config.resolution, "lr": config.lr, "seed": config.seed, "mode": mode.name, "loss_first": float(np.mean(losses[:window])),
              "loss_last": float(np.mean(losses[-window:]))}
    if config.objective == "mim":
        record |= {"mask_ratio": config.mask_ratio, "mask_patch": config.mask_patch}
    elif contrastive:
        record |= {"points": config.contrastive_points, "temperature": config.contrastive_temperature,
                   "shift": config.contrastive_shift, "embedding": EMBED_CHANNELS}
    else:
        record |= {"noise_std": config.noise_std}
    state = network_state(model) if config.keep == "network" else encoder_state(model)
    out = save_unet_encoder(config.out, state, model_cfg, tuple(mean), tuple(std), record)
    if log:
        log(f"{step} steps in {record['seconds']:.0f} s, {config.objective} loss {record['loss_first']:.4f} -> "
            f"{record['loss_last']:.4f}; {'encoder and decoder' if config.keep == 'network' else 'encoder'} weights: {out}")
    return out
