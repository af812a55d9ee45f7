"""Segmentation losses as pure tensor functions.

Every function takes `logits (N, K, *spatial)` (2-D or 3-D, any float dtype; computed in float32)
and `labels (N, *spatial)` int64 class indices, and returns a scalar tensor.

* K > 1: multi-class, probabilities by softmax over dim 1; labels in [0, K).
* K = 1: binary, the single channel is the foreground logit (sigmoid); labels in {0, 1}.

Pixels whose label equals `ignore_index` are excluded from every numerator and denominator: the
loss value and its gradient do not depend on the logits there. When every pixel is ignored the
loss is 0 (still connected to the graph, so `backward()` works and gives zero gradients).

Overlap losses (Dice, Tversky) are computed from soft tp/fp/fn counts summed over the spatial
axes and, with `batch_dice=True` (nnU-Net's "batch Dice"), over the batch too. Absent-class
policy: a class with no labelled pixel in the batch (or in the sample, with `batch_dice=False`)
is left out of the mean over classes. Its false positives are still penalized: they are false
negatives of the present classes (softmax) and are caught by cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------- shared preparation


def _prepare(logits: Tensor, labels: Tensor, ignore_index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes/values; return (float32 logits, labels with ignored pixels set to 0, valid mask)."""
    if logits.ndim < 3:
        raise ValueError(f"logits must be (N, K, *spatial), got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(
            f"labels shape {tuple(labels.shape)} does not match logits {tuple(logits.shape)}; "
            f"expected (N, *spatial) = {expected}"
        )
    if labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).long()
    n_classes = max(logits.shape[1], 2)
    lo, hi = (int(v) for v in torch.aminmax(safe)) if safe.numel() else (0, 0)
    if lo < 0 or hi >= n_classes:
        bad = hi if hi >= n_classes else lo
        raise ValueError(
            f"label value {bad} is outside [0, {n_classes}) and is not ignore_index={ignore_index}"
        )
    return logits.float(), safe, valid


def _probabilities(logits: Tensor) -> Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _one_hot(safe: Tensor, num_channels: int) -> Tensor:
    if num_channels == 1:
        return safe.unsqueeze(1).float()
    return F.one_hot(safe, num_channels).movedim(-1, 1).float()


def _zero(logits: Tensor) -> Tensor:
    """A zero that keeps the graph connected (for batches where every pixel is ignored)."""
    return logits.sum() * 0.0


def soft_counts(probs: Tensor, onehot: Tensor, valid: Tensor, batch: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Soft (tp, fp, fn) per class over valid pixels: shape (K,) if `batch` else (N, K)."""
    mask = valid.unsqueeze(1).to(probs.dtype)
    p = probs * mask
    g = onehot * mask
    dims = tuple(range(2, probs.ndim))
    if batch:
        dims = (0, *dims)
    tp = (p * g).sum(dims)
    return tp, p.sum(dims) - tp, g.sum(dims) - tp


def _class_slice(num_channels: int, include_background: bool) -> slice:
    """Channels that take part in an overlap loss (K = 1 has only the foreground channel)."""
    return slice(0, None) if num_channels == 1 or include_background else slice(1, None)


def _mean_over_present(score: Tensor, present: Tensor, logits: Tensor) -> Tensor:
    """1 - mean(score) over present classes; 0 when no class is present."""
    if not bool(present.any()):
        return _zero(logits)
    return 1.0 - score[present].mean()


# ---------------------------------------------------------------- pixel-wise losses


def cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    weight: Sequence[float] | Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """Mean (class-weighted) cross-entropy over valid pixels.

    With `weight`, the mean is weighted: sum(w[y] * nll) / sum(w[y]) (PyTorch's convention). For
    K = 1 this is binary cross-entropy on the foreground logit and `weight` has 2 entries
    (background, foreground).
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    if logits.shape[1] == 1:
        z = logits[:, 0]
        nll = -torch.where(safe == 1, F.logsigmoid(z), F.logsigmoid(-z))
    else:
        nll = -torch.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    w = valid.float()
    if weight is not None:
        wt = torch.as_tensor(weight, dtype=torch.float32, device=logits.device)
        n_classes = max(logits.shape[1], 2)
        if wt.shape != (n_classes,):
            raise ValueError(f"class weights: expected {n_classes} values, got {tuple(wt.shape)}")
        w = w * wt[safe]
    total = w.sum()
    if float(total) == 0.0:
        return _zero(logits)
    return (nll * w).sum() / total


def focal_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """Focal loss (Lin et al. 2017): mean over valid pixels of -alpha_t (1 - p_t)**gamma log p_t.

    `alpha`: for K = 1 a float, the weight of the foreground (background gets 1 - alpha); for K > 1
    a sequence of K per-class weights. None means alpha_t = 1. gamma = 0 and alpha None is CE.
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    if logits.shape[1] == 1:
        z = logits[:, 0]
        log_pt = torch.where(safe == 1, F.logsigmoid(z), F.logsigmoid(-z))
    else:
        log_pt = torch.log_softmax(logits, dim=1).gather(1, safe.unsqueeze(1)).squeeze(1)
    loss = -((1.0 - log_pt.exp()).clamp_min(0.0) ** gamma) * log_pt
    if alpha is not None:
        if logits.shape[1] == 1:
            if not isinstance(alpha, (int, float)):
                raise ValueError("focal alpha: binary (K=1) logits take one float (foreground weight)")
            a = torch.tensor([1.0 - alpha, float(alpha)], device=logits.device)
        else:
            a = torch.as_tensor(alpha, dtype=torch.float32, device=logits.device)
            if a.shape != (logits.shape[1],):
                raise ValueError(f"focal alpha: expected {logits.shape[1]} per-class values, got {alpha!r}")
        loss = loss * a[safe]
    n = valid.sum()
    if int(n) == 0:
        return _zero(logits)
    return (loss * valid).sum() / n


# ---------------------------------------------------------------- overlap losses


def soft_dice_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    include_background: bool = True,
    batch_dice: bool = True,
    smooth: float = 1e-5,
    ignore_index: int = 255,
) -> Tensor:
    """1 - mean soft Dice, Dice_c = (2 tp + smooth) / (2 tp + fp + fn + smooth).

    Classes absent from the labels are left out of the mean (module docstring). For K = 1 the
    Dice is that of the foreground (sigmoid) and `include_background` has no effect.
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    k = logits.shape[1]
    tp, fp, fn = soft_counts(_probabilities(logits), _one_hot(safe, k), valid, batch_dice)
    cls = _class_slice(k, include_background)
    tp, fp, fn = tp[..., cls], fp[..., cls], fn[..., cls]
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    return _mean_over_present(dice, (tp + fn) > 0, logits)


def tversky_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    include_background: bool = True,
    batch_dice: bool = True,
    smooth: float = 1e-5,
    ignore_index: int = 255,
) -> Tensor:
    """1 - mean Tversky index, TI_c = (tp + smooth) / (tp + alpha fp + beta fn + smooth).

    Salehi et al. 2017: alpha weights false positives, beta false negatives (beta > alpha favours
    recall); alpha = beta = 0.5 is the soft Dice loss. Same class handling as `soft_dice_loss`.
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    k = logits.shape[1]
    tp, fp, fn = soft_counts(_probabilities(logits), _one_hot(safe, k), valid, batch_dice)
    cls = _class_slice(k, include_background)
    tp, fp, fn = tp[..., cls], fp[..., cls], fn[..., cls]
    ti = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    return _mean_over_present(ti, (tp + fn) > 0, logits)


def lovasz_softmax_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    include_background: bool = True,
    ignore_index: int = 255,
    sample: float = 1.0,
) -> Tensor:
    """Lovász-softmax (Berman et al. 2018): the mean over present classes of the Lovász extension of
    the Jaccard loss, a convex surrogate of 1 - IoU_c that equals it exactly on hard (0/1)
    probabilities, so it trains for the score that mIoU benchmarks report.

    Per class c, over the valid pixels of the whole batch (like batch Dice): the errors
    m_i = |[y_i = c] - p_ic| sorted decreasingly, and the loss sum_i m_(i) (J(i) - J(i-1)), where J(i)
    is the Jaccard loss when the first i pixels of that order are the mispredicted ones:
    J(i) = 1 - (|G| - g_i) / (|G| + i - g_i), G the class's pixels, g_i how many of them are among the
    first i. Classes absent from the labels are left out of the mean (as in `soft_dice_loss`);
    K = 1 scores the foreground (sigmoid) channel. One sort per class: O(P log P) for P pixels.

    `sample` < 1 scores a random subset of the valid pixels instead, each kept with that probability
    (one draw from torch's global generator, the same pixels for every class): a stochastic estimate
    of the same surrogate whose sort costs about `sample` times as much. A class with no pixel in the
    subset is left out of that call's mean.
    """
    if not 0 < sample <= 1:
        raise ValueError(f"sample must be a fraction of the pixels in (0, 1], got {sample}")
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    k = logits.shape[1]
    cls = _class_slice(k, include_background)
    keep = valid.reshape(-1)
    if sample < 1:
        keep = keep & (torch.rand(keep.shape, device=keep.device) < sample)
    # only the kept pixels, as one (1, K, P) "image": the softmax and one-hot skip the rest
    probs = _probabilities(logits.movedim(1, 0).reshape(k, -1)[:, keep].unsqueeze(0))[0, cls]
    truth = _one_hot(safe.reshape(-1)[keep].unsqueeze(0), k)[0, cls]
    present = truth.sum(1) > 0
    if not bool(present.any()):
        return _zero(logits)
    probs, truth = probs[present], truth[present]
    errors, order = (truth - probs).abs().sort(dim=1, descending=True)
    gt_sorted = truth.gather(1, order)
    total = gt_sorted.sum(1, keepdim=True)
    jaccard = 1.0 - (total - gt_sorted.cumsum(1)) / (total + (1.0 - gt_sorted).cumsum(1))
    steps = jaccard.diff(dim=1, prepend=jaccard.new_zeros(len(jaccard), 1))  # J(i) - J(i-1), J(0) = 0
    return (errors * steps).sum(1).mean()


# ---------------------------------------------------------------- clDice


def _soft_erode(x: Tensor) -> Tensor:
    """Min over a cross-shaped neighbourhood (min-pooling along each axis separately)."""
    d = x.ndim - 2
    outs = []
    for axis in range(d):
        kernel = [1] * d
        kernel[axis] = 3
        pad = [k // 2 for k in kernel]
        pool = F.max_pool2d if d == 2 else F.max_pool3d
        outs.append(-pool(-x, tuple(kernel), stride=1, padding=tuple(pad)))
    return torch.stack(outs).amin(0)


def _soft_dilate(x: Tensor) -> Tensor:
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, 3, stride=1, padding=1)


def soft_skeleton(x: Tensor, iterations: int = 3) -> Tensor:
    """Soft skeleton of soft masks `x (N, C, H, W[, D])` in [0, 1] (Shit et al. 2021, Alg. 1).

    Iterated morphological thinning with min-/max-pooling: skel accumulates
    relu(x_j - open(x_j)) for x_j = erode^j(x), j = 0..iterations.
    """
    if x.ndim not in (4, 5):
        raise ValueError(f"soft_skeleton expects (N, C, H, W) or (N, C, H, W, D), got {tuple(x.shape)}")
    skel = F.relu(x - _soft_dilate(_soft_erode(x)))
    for _ in range(iterations):
        x = _soft_erode(x)
        delta = F.relu(x - _soft_dilate(_soft_erode(x)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def cldice_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    iterations: int = 3,
    smooth: float = 1.0,
    ignore_index: int = 255,
) -> Tensor:
    """1 - soft clDice on the foreground classes (channels 1.. for K > 1, channel 0 for K = 1).

    Per class, summed over batch and space: Tprec = (|S(P) * G| + s) / (|S(P)| + s),
    Tsens = (|S(G) * P| + s) / (|S(G)| + s), clDice = 2 Tprec Tsens / (Tprec + Tsens), with S the
    soft skeleton; the loss is 1 - mean over foreground classes. Ignored pixels are zeroed in both
    P and G before skeletonization and excluded from the sums. `smooth` = 1 follows the paper's code
    (a class absent from both prediction and labels scores 1).
    """
    logits, safe, valid = _prepare(logits, labels, ignore_index)
    k = logits.shape[1]
    mask = valid.unsqueeze(1).float()
    fg = slice(0, 1) if k == 1 else slice(1, None)
    pred = _probabilities(logits)[:, fg] * mask
    true = _one_hot(safe, k)[:, fg] * mask
    skel_pred = soft_skeleton(pred, iterations) * mask
    skel_true = soft_skeleton(true, iterations) * mask
    dims = (0, *range(2, pred.ndim))
    tprec = ((skel_pred * true).sum(dims) + smooth) / (skel_pred.sum(dims) + smooth)
    tsens = ((skel_true * pred).sum(dims) + smooth) / (skel_true.sum(dims) + smooth)
    cl = 2.0 * tprec * tsens / (tprec + tsens)
    return 1.0 - cl.mean()


# ---------------------------------------------------------------- distillation


def distillation_loss(student: Tensor, teacher: Tensor, labels: Tensor, *, temperature: float = 2.0,
                      ignore_index: int = 255) -> Tensor:
    """T^2 x mean over valid pixels of KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al.):
    the soft-target term of distillation; T^2 keeps its gradients on the scale of the label loss.
    Both logits (N, K, *spatial), K >= 2; ignored pixels do not count."""
    if student.shape != teacher.shape:
        raise ValueError(f"teacher logits {tuple(teacher.shape)} do not match the student's {tuple(student.shape)}")
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    s, _, valid = _prepare(student, labels, ignore_index)
    log_p = F.log_softmax(teacher.float() / temperature, dim=1)
    log_q = F.log_softmax(s / temperature, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    weight = valid.float()
    return temperature**2 * (kl * weight).sum() / weight.sum().clamp_min(1.0)
