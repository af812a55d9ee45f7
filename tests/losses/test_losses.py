import dataclasses

import pytest
import torch

from unetkit.config import LossConfig, from_dict
from unetkit.errors import ConfigError
from unetkit.losses import functional as LF
from unetkit.losses.losses import LOSSES, SegmentationLoss, deep_supervision_weights


def case(seed=0, k=3, n=2, size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, size, size, generator=g)
    y = torch.randint(0, k, (n, size, size), generator=g)
    y[0, 0] = 255
    return x, y


def test_default_is_dice_plus_ce_and_logs_terms():
    x, y = case()
    loss_fn = SegmentationLoss(LossConfig())
    total = loss_fn(x, y)
    ce = LF.cross_entropy(x, y).item()
    dice = LF.soft_dice_loss(x, y).item()
    assert total.item() == pytest.approx(ce + dice, rel=1e-6)
    assert set(loss_fn.last_terms) == {"ce", "dice", "total"}
    assert loss_fn.last_terms["ce"] == pytest.approx(ce, rel=1e-6)
    assert loss_fn.last_terms["dice"] == pytest.approx(dice, rel=1e-6)
    assert loss_fn.last_terms["total"] == pytest.approx(total.item(), rel=1e-6)


def test_weights_options_and_zero_terms_skipped():
    x, y = case()
    cfg = LossConfig(
        ce=0.5,
        dice=0.0,
        focal=2.0,
        tversky=1.0,
        cldice=0.25,
        class_weights=(1.0, 2.0, 3.0),
        focal_gamma=1.0,
        tversky_alpha=0.4,
        tversky_beta=0.6,
        dice_include_background=False,
    )
    loss_fn = SegmentationLoss(cfg)
    total = loss_fn(x, y).item()
    expected = (
        0.5 * LF.cross_entropy(x, y, weight=[1.0, 2.0, 3.0]).item()
        + 2.0 * LF.focal_loss(x, y, gamma=1.0).item()
        + 1.0 * LF.tversky_loss(x, y, alpha=0.4, beta=0.6, include_background=False).item()
        + 0.25 * LF.cldice_loss(x, y).item()
    )
    assert total == pytest.approx(expected, rel=1e-6)
    assert set(loss_fn.last_terms) == {"ce", "focal", "tversky", "cldice", "total"}


def test_deep_supervision_weights_hand_computed():
    # decay 0.5, 3 heads: 1, 0.5, 0.25 -> / 1.75 = 4/7, 2/7, 1/7
    assert deep_supervision_weights(3, 0.5) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert deep_supervision_weights(1, 0.5) == [1.0]


def test_deep_supervision_list_is_weighted_main_first():
    x0, y = case(0)
    x1, _ = case(1)
    x2, _ = case(2)
    loss_fn = SegmentationLoss(LossConfig())
    single = [SegmentationLoss(LossConfig())(x, y).item() for x in (x0, x1, x2)]
    total = loss_fn([x0, x1, x2], y).item()
    assert total == pytest.approx(4 / 7 * single[0] + 2 / 7 * single[1] + 1 / 7 * single[2], rel=1e-6)
    # logged terms are the head-weighted sums; total = sum_t w_t * term_t
    t = loss_fn.last_terms
    assert t["total"] == pytest.approx(t["ce"] + t["dice"], rel=1e-6)
    assert t["ce"] == pytest.approx(
        sum(
            w * LF.cross_entropy(x, y).item()
            for w, x in zip([4 / 7, 2 / 7, 1 / 7], [x0, x1, x2], strict=True)
        ),
        rel=1e-6,
    )


def test_low_resolution_head_gets_nearest_labels():
    x, y = case(size=8)
    aux = torch.randn(2, 3, 4, 4)
    loss_fn = SegmentationLoss(LossConfig(dice=0.0))
    total = loss_fn([x, aux], y).item()
    y_small = y[:, ::2, ::2]  # nearest downsampling by 2 picks the top-left pixel of each 2x2 cell
    expected = 2 / 3 * LF.cross_entropy(x, y).item() + 1 / 3 * LF.cross_entropy(aux, y_small).item()
    assert total == pytest.approx(expected, rel=1e-6)


def test_backward_through_deep_supervision():
    x, y = case()
    heads = [x.clone().requires_grad_(True) for _ in range(2)]
    SegmentationLoss(LossConfig(cldice=1.0))(heads, y).backward()
    assert all(torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0 for h in heads)


def test_all_terms_zero_is_refused():
    with pytest.raises(ValueError, match="every term has weight 0"):
        SegmentationLoss(LossConfig(ce=0.0, dice=0.0))


# ---------------------------------------------------------------- the catalog: a contract for every loss


def only(name, **extra):
    """A LossConfig whose only non-zero weight is `name`'s."""
    return LossConfig(**({n: 0.0 for n in LOSSES} | {name: 1.0} | extra))


def test_every_registered_loss_has_its_weight_field():
    weights = {f.name: f.type for f in dataclasses.fields(LossConfig)}
    assert LOSSES.names() and all(weights.get(name) == "float" for name in LOSSES)


def test_an_unknown_loss_name_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"unknown loss 'dicee'; choose one of: " + ", ".join(LOSSES.names())):
        LOSSES.get("dicee")
    with pytest.raises(ConfigError, match=r"loss: unknown key 'dicee'; expected one of .*" + ".*".join(LOSSES.names())):
        from_dict(LossConfig, {"dicee": 1.0}, "loss")


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_with_gradients_and_honours_ignore_index(name, k):
    x, y = case(seed=1, k=k, size=12)
    if k == 1:  # binary: one foreground logit, labels 0 and 1
        y = torch.randint(0, 2, y.shape, generator=torch.Generator().manual_seed(1))
    y[:, 3:6, 3:6] = 255
    loss_fn = SegmentationLoss(only(name))
    x.requires_grad_(True)
    value = loss_fn(x, y)
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert set(loss_fn.last_terms) == {name, "total"}
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    ignored = (y == 255).unsqueeze(1).expand_as(x)
    assert x.grad[ignored].abs().max() == 0  # ignored pixels get no gradient ...
    changed = x.detach().clone()
    changed[ignored] = torch.randn(int(ignored.sum())) * 10
    assert SegmentationLoss(only(name))(changed, y).item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6)  # ... nor value


def test_lovasz_sample_reaches_the_term():
    x, y = case(seed=3, k=3, size=16)
    full = SegmentationLoss(only("lovasz"))(x, y).item()
    torch.manual_seed(0)
    sampled = SegmentationLoss(only("lovasz", lovasz_sample=0.3))(x, y).item()
    torch.manual_seed(0)
    assert sampled == pytest.approx(LF.lovasz_softmax_loss(x, y, sample=0.3).item(), rel=1e-6)
    assert sampled != pytest.approx(full, rel=1e-3)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_takes_the_deep_supervision_list(name):
    x, y = case(seed=2, k=3, size=16)
    heads = [x.clone().requires_grad_(True), torch.randn(2, 3, 8, 8, requires_grad=True)]
    value = SegmentationLoss(only(name))(heads, y)
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0 for h in heads)
