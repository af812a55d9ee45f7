"""LR schedule values, optimizer construction and gradient clipping."""

import math

import pytest
import torch

from unetkit.config import OptimConfig
from unetkit.errors import ConfigError
from unetkit.training.optim import build_optimizer, clip_gradients, lr_factor, set_lr


def test_warmup_is_linear_and_never_zero() -> None:
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.0)
    factors = [lr_factor(s, 100, cfg) for s in range(10)]
    assert factors == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lr_factor(10, 100, cfg) == pytest.approx(1.0)  # first decay step is the peak


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_decay_endpoints_reach_min_lr_ratio(schedule: str) -> None:
    cfg = OptimConfig(warmup_steps=5, schedule=schedule, min_lr_ratio=0.05, poly_power=0.9)
    assert lr_factor(5, 50, cfg) == pytest.approx(1.0)
    assert lr_factor(49, 50, cfg) == pytest.approx(0.05)
    assert lr_factor(500, 50, cfg) == pytest.approx(0.05)  # past the end: stays at the floor
    values = [lr_factor(s, 50, cfg) for s in range(5, 50)]
    assert all(a >= b for a, b in zip(values[:-1], values[1:], strict=True))  # monotone decay


def test_cosine_midpoint_and_poly_shape() -> None:
    cos = OptimConfig(warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    assert lr_factor(50, 101, cos) == pytest.approx(0.5)
    poly = OptimConfig(warmup_steps=0, schedule="poly", min_lr_ratio=0.0, poly_power=2.0)
    assert lr_factor(50, 101, poly) == pytest.approx(0.25)
    assert lr_factor(0, 101, poly) == pytest.approx(1.0)


def test_constant_schedule_and_degenerate_totals() -> None:
    cfg = OptimConfig(warmup_steps=3, schedule="constant")
    assert [lr_factor(s, 10, cfg) for s in range(5)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    # warm-up longer than the run is clamped so the last step still trains at the base LR
    short = OptimConfig(warmup_steps=50, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, 1, short) == pytest.approx(1.0)
    assert all(math.isfinite(lr_factor(s, 4, short)) and lr_factor(s, 4, short) > 0 for s in range(4))


def test_optimizers_and_set_lr() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    sgd = build_optimizer(model, OptimConfig(optimizer="sgd", momentum=0.9, nesterov=True, lr=0.1))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    adamw = build_optimizer(model, OptimConfig(optimizer="adamw", weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0]  # no decay on biases/norms
    cfg = OptimConfig(lr=0.01, warmup_steps=4, schedule="constant")
    assert set_lr(adamw, 1, 10, cfg) == pytest.approx(0.005)
    assert all(g["lr"] == pytest.approx(0.005) for g in adamw.param_groups)
    with pytest.raises(ConfigError, match="optim.lr"):
        build_optimizer(model, OptimConfig(lr=0.0))


def test_clip_gradients() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    w.grad = torch.full((4,), 10.0)
    assert clip_gradients([w], 1.0) == pytest.approx(20.0)
    assert float(w.grad.norm()) == pytest.approx(1.0, rel=1e-4)
    w.grad = torch.full((4,), 10.0)
    assert clip_gradients([w], 0.0) == pytest.approx(20.0)  # disabled: reports, does not clip
    assert float(w.grad.norm()) == pytest.approx(20.0)


def test_ema_is_off_at_zero_and_refuses_decays_outside_0_1() -> None:
    from unetkit.training.optim import build_ema

    model = torch.nn.Linear(2, 2)
    assert build_ema(model, OptimConfig(ema_decay=0.0)) is None
    for bad in (1.0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="optim.ema_decay"):
            build_ema(model, OptimConfig(ema_decay=bad))


def test_ema_averages_weights_and_batchnorm_statistics_with_a_ramped_decay() -> None:
    from unetkit.training.optim import build_ema

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    ema = build_ema(model, OptimConfig(ema_decay=0.5))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for n in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(4, 1, 8, 8))  # train mode: moves the BatchNorm running statistics
        ema.update_parameters(model)
        d = min(0.5, (1 + n) / (10 + n)) if n else 0.0  # the first update copies the model
        for k, v in model.state_dict().items():
            expected[k] = v.clone() if not v.is_floating_point() else d * expected[k] + (1 - d) * v
    got = ema.module.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=0, msg=k)
    assert int(got["1.num_batches_tracked"]) == 4
    assert not torch.allclose(got["0.weight"], model.state_dict()["0.weight"])


def test_encoder_groups_get_their_own_lr_scale() -> None:
    from unetkit.config import ModelConfig
    from unetkit.models import build_model
    from unetkit.models.unet_encoder import is_encoder_key

    model = build_model(ModelConfig(base_width=4, depth=2))
    config = OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant")
    optimizer = build_optimizer(model, config, is_encoder_key)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        assert all(is_encoder_key(names[id(p)]) == group["encoder"] for p in group["params"])
    assert {g["encoder"] for g in optimizer.param_groups} == {True, False}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)
    set_lr(optimizer, 5, 10, config, encoder_scale=0.25)
    assert {(g["encoder"], g["lr"]) for g in optimizer.param_groups} == {(True, 2.5e-4), (False, 1e-3)}
    plain = build_optimizer(model, config)  # without a test: as before, two groups
    assert len(plain.param_groups) == 2 and not any(g["encoder"] for g in plain.param_groups)
