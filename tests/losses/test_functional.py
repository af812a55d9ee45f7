"""Functional losses against hand-computed values on tiny tensors, plus ignore/gradient contracts.

The two-pixel case used throughout (K = 2, N = 1, H = 1, W = 2):
  pixel a: logits [0, ln 3], label 1  -> softmax p = [1/4, 3/4]
  pixel b: logits [0, 0],    label 0  -> softmax p = [1/2, 1/2]
The binary (K = 1) version uses the foreground logit only: z = [ln 3, 0], sigmoid = [3/4, 1/2].
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unetkit.losses import functional as LF

LN3 = math.log(3.0)


def two_pixels(k: int = 2):
    if k == 1:
        logits = torch.tensor([[[[LN3, 0.0]]]])
    else:
        logits = torch.tensor([[[[0.0, 0.0]], [[LN3, 0.0]]]])
    labels = torch.tensor([[[1, 0]]])
    return logits, labels


ALL_LOSSES = {
    "ce": lambda x, y, **kw: LF.cross_entropy(x, y, **kw),
    "dice": lambda x, y, **kw: LF.soft_dice_loss(x, y, **kw),
    "focal": lambda x, y, **kw: LF.focal_loss(x, y, **kw),
    "tversky": lambda x, y, **kw: LF.tversky_loss(x, y, **kw),
    "cldice": lambda x, y, **kw: LF.cldice_loss(x, y, **kw),
    "lovasz": lambda x, y, **kw: LF.lovasz_softmax_loss(x, y, **kw),
}


# ---------------------------------------------------------------- hand-computed values


@pytest.mark.parametrize("k", [1, 2])
def test_cross_entropy_hand_computed(k):
    x, y = two_pixels(k)
    # nll_a = -ln(3/4) = ln(4/3), nll_b = -ln(1/2) = ln 2, mean over 2 pixels
    expected = (math.log(4 / 3) + math.log(2)) / 2
    assert LF.cross_entropy(x, y).item() == pytest.approx(expected, rel=1e-6)
    # weights w = [1, 3]: (3 * ln(4/3) + 1 * ln 2) / (3 + 1)
    expected_w = (3 * math.log(4 / 3) + math.log(2)) / 4
    assert LF.cross_entropy(x, y, weight=[1.0, 3.0]).item() == pytest.approx(expected_w, rel=1e-6)


def test_cross_entropy_matches_torch_with_weights_and_ignore(rng):
    x = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    y = torch.from_numpy(rng.integers(0, 4, (2, 5, 6)))
    y[0, :2] = 255
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    ref = F.cross_entropy(x, y, weight=w, ignore_index=255)
    assert LF.cross_entropy(x, y, weight=w).item() == pytest.approx(ref.item(), rel=1e-6)


def test_soft_dice_hand_computed():
    x, y = two_pixels(2)
    # class 0: tp = 1/2 (pixel b), sum p = 1/4 + 1/2 = 3/4, |G| = 1 -> Dice = 1 / 1.75 = 4/7
    # class 1: tp = 3/4 (pixel a), sum p = 3/4 + 1/2 = 5/4, |G| = 1 -> Dice = 1.5 / 2.25 = 2/3
    assert LF.soft_dice_loss(x, y, smooth=0.0).item() == pytest.approx(1 - (4 / 7 + 2 / 3) / 2, rel=1e-6)
    assert LF.soft_dice_loss(x, y, smooth=0.0, include_background=False).item() == pytest.approx(
        1 / 3, rel=1e-6
    )
    # smooth 1: class 1 -> (1.5 + 1) / (2.25 + 1) = 10/13
    assert LF.soft_dice_loss(x, y, smooth=1.0, include_background=False).item() == pytest.approx(
        3 / 13, rel=1e-6
    )


def test_soft_dice_binary_sigmoid():
    x, y = two_pixels(1)
    # foreground: tp = 3/4, sum p = 3/4 + 1/2, |G| = 1 -> Dice 2/3
    assert LF.soft_dice_loss(x, y, smooth=0.0).item() == pytest.approx(1 / 3, rel=1e-6)


def test_soft_dice_absent_class_left_out_of_mean():
    x, y = two_pixels(2)
    # add class 2, absent from the labels, with ~0 probability: the loss is that of the 2-class case
    x3 = torch.cat([x, torch.full((1, 1, 1, 2), -30.0)], 1)
    assert LF.soft_dice_loss(x3, y, smooth=0.0).item() == pytest.approx(1 - (4 / 7 + 2 / 3) / 2, rel=1e-5)
    # a perfect prediction scores ~0 even though class 2 is absent from the batch
    perfect = torch.tensor([[[[-20.0, 20.0]], [[20.0, -20.0]], [[-20.0, -20.0]]]])
    assert LF.soft_dice_loss(perfect, y).item() == pytest.approx(0.0, abs=1e-6)


def test_soft_dice_per_sample_vs_batch():
    # sample 0 = pixel a only, sample 1 = pixel b only (W = 1 each)
    x = torch.tensor([[[[0.0]], [[LN3]]], [[[0.0]], [[0.0]]]])
    y = torch.tensor([[[1]], [[0]]])
    # per sample, background excluded: sample 0 class 1: 2*(3/4) / (3/4 + 1) = 6/7; sample 1: class 1
    # absent -> left out. Loss = 1 - 6/7 = 1/7
    got = LF.soft_dice_loss(x, y, smooth=0.0, include_background=False, batch_dice=False)
    assert got.item() == pytest.approx(1 / 7, rel=1e-6)
    # batch Dice equals the single-image two-pixel case: 1/3
    got = LF.soft_dice_loss(x, y, smooth=0.0, include_background=False, batch_dice=True)
    assert got.item() == pytest.approx(1 / 3, rel=1e-6)


def test_soft_dice_matches_monai(rng):
    from monai.losses import DiceLoss

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.from_numpy(rng.integers(0, 3, (2, 8, 8)))
    ref = DiceLoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)(x, y[:, None])
    assert LF.soft_dice_loss(x, y).item() == pytest.approx(ref.item(), rel=1e-5)
    ref = DiceLoss(softmax=True, to_onehot_y=True, batch=True, include_background=False)(x, y[:, None])
    assert LF.soft_dice_loss(x, y, include_background=False).item() == pytest.approx(ref.item(), rel=1e-5)


def test_lovasz_on_hard_probabilities_is_one_minus_mean_iou_of_the_present_classes(rng):
    from sklearn.metrics import jaccard_score

    y = rng.integers(0, 3, (2, 9, 9))  # classes 0-2 of 4: class 3 is absent, left out of the mean
    pred = np.where(rng.random(y.shape) < 0.3, rng.integers(0, 4, y.shape), y)
    x = F.one_hot(torch.from_numpy(pred), 4).movedim(-1, 1).float() * 40.0  # softmax = one-hot
    iou = jaccard_score(y.ravel(), pred.ravel(), labels=[0, 1, 2], average=None)
    assert LF.lovasz_softmax_loss(x, torch.from_numpy(y)).item() == pytest.approx(1 - iou.mean(), rel=1e-5)
    iou_fg = jaccard_score(y.ravel(), pred.ravel(), labels=[1, 2], average=None)
    got = LF.lovasz_softmax_loss(x, torch.from_numpy(y), include_background=False).item()
    assert got == pytest.approx(1 - iou_fg.mean(), rel=1e-5)


def jaccard_loss(truth: set, wrong: set) -> float:
    """1 - IoU when the pixels in `wrong` are mispredicted for a class whose pixels are `truth`."""
    return 1 - len(truth - wrong) / len(truth | wrong) if truth | wrong else 0.0


def test_lovasz_is_the_lovasz_extension_of_the_jaccard_loss_from_its_definition():
    """Soft errors: sum_i m_(i) (Delta(S_i) - Delta(S_{i-1})), S_i the i largest errors taken as the
    mispredicted pixels, Delta(S) = 1 - |G minus S| / |G union S|: computed from Python sets per class."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 4, 5, generator=g)
    y = torch.randint(0, 3, (1, 4, 5), generator=g)
    p = torch.softmax(x, 1)[0].reshape(3, -1)
    labels = y.reshape(-1).tolist()
    per_class = []
    for c in range(3):
        truth = {i for i, v in enumerate(labels) if v == c}
        errors = [abs((i in truth) - float(p[c, i])) for i in range(len(labels))]
        order = sorted(range(len(labels)), key=lambda i: -errors[i])
        losses = [jaccard_loss(truth, set(order[:n])) for n in range(len(order) + 1)]
        per_class.append(sum(errors[i] * (losses[n + 1] - losses[n]) for n, i in enumerate(order)))
    assert LF.lovasz_softmax_loss(x, y).item() == pytest.approx(sum(per_class) / 3, rel=1e-5)


def test_lovasz_on_a_sample_is_the_full_loss_of_the_sampled_pixels():
    """`sample` keeps each valid pixel with that probability (torch's global generator): the value is
    the full loss with every other pixel ignored, ignored pixels stay out, and the gradient reaches
    only the kept pixels."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 16, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (2, 16, 16), generator=g)
    y[:, :3] = 255
    torch.manual_seed(7)
    got = LF.lovasz_softmax_loss(x, y, sample=0.25)
    got.backward()
    torch.manual_seed(7)
    kept = (torch.rand(y.shape) < 0.25) & (y != 255)
    assert 0.15 < kept.float().mean() < 0.25  # a quarter of the 13 valid rows of 16
    expected = LF.lovasz_softmax_loss(x.detach(), torch.where(kept, y, 255))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got.item() != pytest.approx(LF.lovasz_softmax_loss(x.detach(), y).item(), rel=1e-3)
    touched = x.grad.abs().sum(1) > 0
    assert touched.any() and not (touched & ~kept).any()


@pytest.mark.parametrize("sample", [0.0, -0.5, 1.5])
def test_lovasz_sample_outside_the_unit_interval_is_refused(sample):
    x, y = two_pixels()
    with pytest.raises(ValueError, match=rf"sample must be a fraction of the pixels in \(0, 1\], got {sample}"):
        LF.lovasz_softmax_loss(x, y, sample=sample)


@pytest.mark.parametrize("k", [1, 2])
def test_focal_hand_computed(k):
    x, y = two_pixels(k)
    # gamma 2: a: (1 - 3/4)^2 ln(4/3); b: (1 - 1/2)^2 ln 2; mean over 2 pixels
    fa, fb = math.log(4 / 3) / 16, math.log(2) / 4
    assert LF.focal_loss(x, y, gamma=2.0).item() == pytest.approx((fa + fb) / 2, rel=1e-6)
    # alpha: foreground 0.75, background 0.25
    alpha = 0.75 if k == 1 else [0.25, 0.75]
    assert LF.focal_loss(x, y, gamma=2.0, alpha=alpha).item() == pytest.approx(
        (0.75 * fa + 0.25 * fb) / 2, rel=1e-6
    )
    # gamma 0 is cross-entropy
    assert LF.focal_loss(x, y, gamma=0.0).item() == pytest.approx(LF.cross_entropy(x, y).item(), rel=1e-6)


def test_tversky_hand_computed():
    x, y = two_pixels(2)
    # class 1: tp = 3/4, fp = 5/4 - 3/4 = 1/2, fn = 1 - 3/4 = 1/4 -> TI = .75 / (.75 + .3*.5 + .7*.25)
    # class 0: tp = 1/2, fp = 3/4 - 1/2 = 1/4, fn = 1/2 -> TI = .5 / (.5 + .3*.25 + .7*.5)
    ti1 = 0.75 / (0.75 + 0.15 + 0.175)
    ti0 = 0.5 / (0.5 + 0.075 + 0.35)
    got = LF.tversky_loss(x, y, alpha=0.3, beta=0.7, smooth=0.0)
    assert got.item() == pytest.approx(1 - (ti0 + ti1) / 2, rel=1e-6)
    # alpha = beta = 1/2 is the Dice loss (the smooth terms differ by a factor 2, so compare without)
    half = LF.tversky_loss(x, y, alpha=0.5, beta=0.5, smooth=0.0)
    assert half.item() == pytest.approx(LF.soft_dice_loss(x, y, smooth=0.0).item(), rel=1e-6)


def bar(h0, h1, w0, w1, shape=(7, 9)):
    m = torch.zeros(shape)
    m[h0:h1, w0:w1] = 1
    return m


def test_soft_skeleton_of_a_bar_is_its_centre_line():
    # a 3-pixel-thick bar rows 2..4, cols 1..7: the cross erosion leaves row 3, cols 2..6; that line
    # has an empty opening so it is the skeleton; the bar itself equals its opening (adds nothing).
    skel = LF.soft_skeleton(bar(2, 5, 1, 8)[None, None], iterations=3)[0, 0]
    assert torch.equal(skel, bar(3, 4, 2, 7))


def test_cldice_hand_computed():
    truth = bar(2, 5, 1, 8)  # skeleton S(G): row 3, cols 2..6 (5 pixels)
    pred = bar(2, 5, 1, 6)  # skeleton S(P): row 3, cols 2..4 (3 pixels)
    logits = (pred * 40 - 20)[None, None]  # K = 1, near-hard probabilities
    labels = truth.long()[None]
    # Tprec = |S(P) & G| / |S(P)| = 3/3; Tsens = |S(G) & P| / |S(G)| = 4/5 (cols 2..5)
    # clDice = 2 * 1 * 0.8 / 1.8 = 8/9
    got = LF.cldice_loss(logits, labels, smooth=0.0)
    assert got.item() == pytest.approx(1 / 9, abs=1e-6)
    # the same through K = 2 softmax logits (foreground channel 1)
    logits2 = torch.cat([-logits / 2, logits / 2], 1)
    assert LF.cldice_loss(logits2, labels, smooth=0.0).item() == pytest.approx(1 / 9, abs=1e-6)
    # a perfect prediction scores 0
    assert LF.cldice_loss((truth * 40 - 20)[None, None], labels).item() == pytest.approx(0.0, abs=1e-6)


def test_cldice_3d_runs_and_is_perfect_on_truth():
    truth = torch.zeros(1, 7, 7, 7, dtype=torch.long)
    truth[0, 2:5, 2:5, 1:6] = 1
    logits = truth[:, None].float() * 40 - 20
    assert LF.cldice_loss(logits, truth).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- contracts: ignore, gradients, errors


def random_case(k, seed=0, shape=(2, 12, 12)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape[0], k, *shape[1:], generator=g) * 3
    y = torch.randint(0, max(k, 2), shape, generator=g)
    y[:, :4, :5] = 255
    y[1, -3:, -3:] = 255
    return x, y


@pytest.mark.parametrize("name", list(ALL_LOSSES))
@pytest.mark.parametrize("k", [1, 3])
def test_ignored_pixels_change_nothing(name, k):
    x, y = random_case(k)
    base = ALL_LOSSES[name](x, y)
    x2 = x.clone()
    ignored = (y == 255).unsqueeze(1).expand_as(x2)
    x2[ignored] = torch.randn(int(ignored.sum())) * 50
    assert ALL_LOSSES[name](x2, y).item() == pytest.approx(base.item(), abs=1e-6)
    # and the gradient at ignored pixels is exactly zero, finite everywhere
    xg = x.clone().requires_grad_(True)
    ALL_LOSSES[name](xg, y).backward()
    assert torch.isfinite(xg.grad).all()
    assert xg.grad[ignored].abs().max().item() == 0.0
    assert xg.grad[~ignored].abs().max().item() > 0.0


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_all_ignored_gives_zero_loss_and_zero_gradients(name):
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    y = torch.full((1, 6, 6), 255)
    loss = ALL_LOSSES[name](x, y)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("name", list(ALL_LOSSES))
def test_gradients_finite_on_extreme_logits(name):
    x = (torch.randn(2, 3, 10, 10) * 1e4).requires_grad_(True)
    y = torch.randint(0, 3, (2, 10, 10))
    loss = ALL_LOSSES[name](x, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_bad_inputs_raise_clear_errors():
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="does not match logits"):
        LF.cross_entropy(x, torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="label value 7 is outside"):
        LF.soft_dice_loss(x, torch.full((1, 4, 4), 7))
    with pytest.raises(ValueError, match="class weights: expected 2"):
        LF.cross_entropy(x, torch.zeros(1, 4, 4, dtype=torch.long), weight=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="integer tensor"):
        LF.cross_entropy(x, torch.zeros(1, 4, 4))
