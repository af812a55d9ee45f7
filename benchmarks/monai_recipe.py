"""The peer: a plain MONAI recipe for 2D binary segmentation, trained within a wall-clock budget.

BasicUNet (16..128 channels), random 128x128 patches with flips/rot90, DiceCE loss, Adam with a
cosine decay fitted to the budget, no tuning; sliding-window inference with MONAI's defaults.
This is what a MONAI user would write in an afternoon; benchmarks run it side by side with unetkit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Pair:
    key: str
    image: np.ndarray  # (C,H,W) float32 in [0, 1]
    labels: np.ndarray  # (H,W) int64 in {0, 1}
    roi: np.ndarray  # (H,W) bool


def train_monai(train: list[Pair], budget_s: float, seed: int = 0, patch: int = 128, batch: int = 8,
                lr: float = 1e-3, log=print, validate=None, validations: int = 10):
    """Train BasicUNet for `budget_s` seconds of training wall clock.

    Returns (network in eval mode, steps, curve). With `validate(net) -> score`, the network is
    scored `validations` times at even intervals; that time is NOT charged to the budget, and
    `curve` lists (training minutes, score) for a time-to-quality plot.
    """
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    in_ch = train[0].image.shape[0]
    net = BasicUNet(spatial_dims=2, in_channels=in_ch, out_channels=2, features=(16, 32, 64, 128, 128, 16))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def sample_batch():
        xs, ys = [], []
        for _ in range(batch):
            p = train[rng.integers(len(train))]
            _, h, w = p.image.shape
            y0, x0 = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
            x = p.image[:, y0 : y0 + patch, x0 : x0 + patch]
            y = p.labels[y0 : y0 + patch, x0 : x0 + patch]
            k = int(rng.integers(4))
            x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
            if rng.random() < 0.5:
                x, y = x[:, :, ::-1], y[:, ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))[:, None]

    start = time.perf_counter()
    excluded = 0.0  # seconds spent validating
    planned = None
    step = 0
    curve: list[tuple[float, float]] = []
    next_val = budget_s / validations
    net.train()
    while True:
        elapsed = time.perf_counter() - start - excluded
        if validate is not None and elapsed >= next_val:
            t0 = time.perf_counter()
            net.eval()
            curve.append((elapsed / 60, float(validate(net))))
            net.train()
            excluded += time.perf_counter() - t0
            next_val += budget_s / validations
        if elapsed >= budget_s * 0.97:
            break
        if step == 20 and planned is None:  # fit the cosine schedule to the budget
            planned = max(21, int(budget_s * 0.97 / (elapsed / 20)))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=planned - 20)
        x, y = sample_batch()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if planned is not None:
            sched.step()
        step += 1
        if step % 200 == 0:
            log(f"monai step {step} loss {loss.item():.4f} {elapsed:.0f}s")
    net.eval()
    if validate is not None:
        curve.append(((time.perf_counter() - start - excluded) / 60, float(validate(net))))
    return net, step, curve


def predict_monai(net, image: np.ndarray, patch: int = 128) -> np.ndarray:
    """Vessel probability (H,W) with MONAI's default sliding-window settings."""
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(image)[None], (patch, patch), 4, net)
    return torch.softmax(logits, 1)[0, 1].numpy()
