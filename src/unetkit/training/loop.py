"""One optimizer step and one validation pass: free functions over plain values.

`train_step` runs forward (in the `ComputeMode`: autocast precision and memory format), the loss,
backward, gradient clipping and the optimizer step. `validate` predicts WHOLE validation images (sliding-window
inference through `unetkit.inference.predict.predict_tiled` when an image is larger than the
patch, one forward pass otherwise) and scores them with `unetkit.metrics` confusion matrices, so
ignore-index and ROI pixels never count. Model selection uses `SELECTION_METRIC`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from unetkit.config import TileConfig
from unetkit.errors import ConfigError
from unetkit.inference.predict import predict_tiled
from unetkit.metrics.summary import evaluate_samples
from unetkit.training.modes import FP32, ComputeMode
from unetkit.training.optim import clip_gradients


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    mode: ComputeMode,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float,
    step: int,
    teacher: torch.Tensor | None = None,
) -> dict[str, float]:
    """One optimizer step on a (normalized, augmented) batch; returns the loss terms and grad norm.
    `teacher`: a teacher's logits on the batch, the soft targets of a `DistillationLoss`."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with mode.autocast(images.device.type):
        outputs = model(mode.input(images))
    outputs = [o.float() for o in outputs] if isinstance(outputs, (list, tuple)) else outputs.float()
    loss = loss_fn(outputs, labels) if teacher is None else loss_fn(outputs, labels, teacher)
    if not torch.isfinite(loss):
        raise ConfigError(
            f"training diverged at step {step}: the loss is {float(loss.detach())}; lower optim.lr "
            f"or enable gradient clipping (optim.grad_clip)"
        )
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = clip_gradients(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        grad_norm = clip_gradients(model.parameters(), grad_clip)
        optimizer.step()
    value = float(loss.detach())
    terms: dict[str, float] = dict(getattr(loss_fn, "last_terms", {}) or {"total": value})
    return {"loss": terms.pop("total", value), **{f"loss_{k}": v for k, v in terms.items()},
            "grad_norm": grad_norm}


def torch_predictor(model: nn.Module, mean: Sequence[float], std: Sequence[float], device: torch.device,
                    mode: ComputeMode = FP32):
    """A predictor in the inference contract: raw-unit batch (N,C,h,w) numpy -> logits numpy."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    @torch.no_grad()
    def predictor(batch: np.ndarray) -> np.ndarray:
        x = (torch.as_tensor(batch, dtype=torch.float32, device=device) - mean_t) / std_t
        with mode.autocast(device.type):
            logits = model(mode.input(x))
        return logits.float().cpu().numpy()

    return predictor


def predict_whole(predictor, image: np.ndarray, patch_size: Sequence[int], tile_batch: int = 4,
                  resolution: float = 1.0) -> np.ndarray:
    """Class scores (K,H,W) for a whole image: sliding window when larger than the patch; a model
    trained at `resolution` < 1 sees the image resampled, and its scores come back at the native size."""
    if resolution == 1.0 and all(s <= p for s, p in zip(image.shape[1:], patch_size, strict=True)):
        return predictor(image[None])[0]
    return predict_tiled(predictor, image, TileConfig(tile_size=tuple(patch_size), batch_size=tile_batch,
                                                      resolution=resolution))


def validation_summary(
    model: nn.Module,
    val_samples: Sequence[Any],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    patch_size: Sequence[int],
    ignore_index: int = 255,
    device: torch.device | str = "cpu",
    mode: ComputeMode = FP32,
    resolution: float = 1.0,
    first_probabilities: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """`unetkit.metrics.summary.evaluate_samples` of the model on whole validation images (the same
    code as `unetkit evaluate`), with every image's confusion matrix in `per_image`; the images at
    their native resolution (a model trained at `resolution` predicts them resampled).
    `first_probabilities`: a list that receives the first image's class probabilities."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    predictor = torch_predictor(model, mean, std, device, mode)

    def predict_labels(image: np.ndarray) -> np.ndarray:
        probs = predict_whole(predictor, np.asarray(image, np.float32), patch_size, resolution=resolution)
        if first_probabilities is not None and not first_probabilities:
            first_probabilities.append(probs)
        return probs.argmax(0)

    try:
        return evaluate_samples(predict_labels, val_samples, class_names, ignore_index)
    finally:
        model.train(was_training)


def flat_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """The flat JSON values a validation logs: `pixel_accuracy`, `mean_iou`, `mean_dice`,
    `mean_iou_foreground`, `mean_dice_foreground` (the model-selection metric, `SELECTION_METRIC`),
    and `iou/<class>`, `dice/<class>`. Classes absent from truth and prediction are None (NaN) and
    not averaged."""
    keys = ["pixel_accuracy", "mean_iou", "mean_dice", "mean_iou_foreground", "mean_dice_foreground"]
    result: dict[str, float | None] = {k: summary[k] for k in keys if k in summary}
    for row in summary["per_class"]:
        result[f"iou/{row['class']}"] = row["iou"]
        result[f"dice/{row['class']}"] = row["dice"]
    return result


SELECTION_METRIC = "mean_dice_foreground"
