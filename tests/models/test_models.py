"""Contract tests over every registered architecture, every preset and the options that matter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from unetkit.config import ModelConfig
from unetkit.errors import ConfigError
from unetkit.models import (
    MODELS,
    PRESETS,
    build_model,
    count_flops,
    count_parameters,
    fuse_for_inference,
    models_table,
    preset_config,
)
from unetkit.models.blocks import STD_FLOOR, standardize

TINY = {"base_width": 4, "depth": 3, "in_channels": 3, "out_channels": 2}


def tiny(arch: str = "unet", **kw) -> ModelConfig:
    return ModelConfig(**(TINY | {"arch": arch} | kw))


CASES: dict[str, ModelConfig] = {f"preset-{name}": preset_config(name, **TINY) for name in PRESETS}
CASES |= {f"arch-{arch}": tiny(arch) for arch in MODELS}
CASES |= {
    "norm-group-w6": tiny(norm="group", base_width=6),
    "norm-instance-gelu": tiny(norm="instance", act="gelu"),
    "norm-none-silu": tiny(norm="none", act="silu"),
    "leaky-strided-dropout": tiny(act="leaky_relu", downsample="strided", dropout=0.2),
    "bilinear-residual-attention": tiny(upsample="bilinear", residual=True, attention=True),
    "separable-ppm": tiny(separable=True, bottleneck="ppm"),
    "aspp-depth4-ds": tiny(bottleneck="aspp", depth=4, deep_supervision=True),
    "transformer-depth5-ds": tiny(bottleneck="transformer", depth=5, transformer_heads=4, deep_supervision=True),
    "unet-depth1": tiny(depth=1),
    "unet-ds": tiny(deep_supervision=True),
    "unetpp-ds-bilinear": tiny("unet++", deep_supervision=True, upsample="bilinear"),
    "unetpp-attention-residual-aspp": tiny("unet++", attention=True, residual=True, bottleneck="aspp", depth=4),
    "unetpp-separable-transformer": tiny("unet++", separable=True, bottleneck="transformer", transformer_heads=2),
    "unet-input-norm": tiny(input_norm="image"),
    "unetpp-input-norm-ds": tiny("unet++", input_norm="image", deep_supervision=True),
}


def _main(out):
    return out[0] if isinstance(out, list) else out


@pytest.mark.parametrize("name", list(CASES))
def test_forward_backward_contract(name: str) -> None:
    cfg = CASES[name]
    torch.manual_seed(0)
    model = build_model(cfg)

    # eval: one tensor at the input size, for odd sizes and sizes smaller than 2**depth
    model.eval()
    with torch.no_grad():
        for h, w in [(127, 301), (17, 23), (5, 3)]:
            y = model(torch.randn(1, cfg.in_channels, h, w))
            assert isinstance(y, torch.Tensor)
            assert y.shape == (1, cfg.out_channels, h, w)
            assert torch.isfinite(y).all()

    # train: backward reaches every parameter with finite gradients
    model.train()
    x = torch.randn(2, cfg.in_channels, 33, 41)
    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    assert isinstance(out, list) == cfg.deep_supervision
    if cfg.deep_supervision:
        assert len(outputs) == cfg.depth  # main + one aux per remaining decoder level / nested column
    for o in outputs:
        assert o.shape == (2, cfg.out_channels, 33, 41)
    target = torch.randn_like(outputs[0])
    loss = sum(((o - target) ** 2).mean() for o in outputs)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has non-finite gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_output_is_not_constant_and_batch_independent_in_eval() -> None:
    model = build_model(tiny()).eval()
    x = torch.randn(3, 3, 29, 37)
    with torch.no_grad():
        y = model(x)
        y0 = model(x[:1])
    assert y.std() > 0
    torch.testing.assert_close(y[:1], y0, atol=1e-5, rtol=1e-5)


def test_deep_supervision_heads_are_distinct() -> None:
    model = build_model(tiny(deep_supervision=True, depth=4))
    out = model(torch.randn(2, 3, 32, 48))
    assert len(out) == 4
    assert not torch.allclose(out[0], out[1])
    with torch.no_grad():
        assert isinstance(model.eval()(torch.randn(1, 3, 32, 48)), torch.Tensor)


@pytest.mark.parametrize("arch", ["unet", "unet++"])
def test_3d_forward(arch: str) -> None:
    cfg = tiny(arch, spatial_dims=3, depth=2, norm="instance", bottleneck="ppm", deep_supervision=True)
    model = build_model(cfg)
    out = model(torch.randn(2, 3, 9, 10, 11))
    assert len(out) == 2 and all(o.shape == (2, 2, 9, 10, 11) for o in out)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 7, 5, 13)).shape == (1, 2, 7, 5, 13)


@pytest.mark.parametrize(
    "cfg",
    [
        tiny(),
        tiny(residual=True, separable=True, downsample="strided", attention=True, bottleneck="aspp"),
        tiny("unet++", bottleneck="ppm"),
    ],
    ids=["unet", "everything-with-bn", "unet++-ppm"],
)
def test_fuse_for_inference_is_equivalent(cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(4, 3, 32, 32) * 3 + 1)
    model.eval()
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "original must be unchanged"
    x = torch.randn(2, 3, 45, 27)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-4, rtol=1e-4)


ONNX_CASES = {
    "unet": tiny(),
    "unet++": tiny("unet++"),
    "attention-unet": preset_config("attention-unet", **TINY),
    "transformer-unet": preset_config("transformer-unet", **TINY),
    "ppm-bilinear": tiny(bottleneck="ppm", upsample="bilinear"),
    "instance-norm-aspp-strided": tiny(norm="instance", bottleneck="aspp", downsample="strided"),
    "input-norm": tiny(input_norm="image"),
}


def _onnx_matches(model: nn.Module, path: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 127, 301), (2, 3, 17, 23), (1, 3, 5, 3)]:
        x = torch.randn(*shape)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(ONNX_CASES))
def test_onnx_export_dynamic_size_matches_torch(name: str, tmp_path) -> None:
    pytest.importorskip("onnx")
    model = build_model(ONNX_CASES[name]).eval()
    path = str(tmp_path / "model.onnx")
    torch.onnx.export(
        model, (torch.randn(1, 3, 64, 64),), path, dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
    )
    _onnx_matches(model, path)


def test_onnx_dynamo_export_transformer(tmp_path) -> None:
    """The torch.export-based exporter works too (with Dim.AUTO; it emits opset 18)."""
    pytest.importorskip("onnxscript")
    model = build_model(ONNX_CASES["transformer-unet"]).eval()
    path = str(tmp_path / "model.onnx")
    auto = torch.export.Dim.AUTO
    torch.onnx.export(
        model, (torch.randn(2, 3, 40, 48),), path, dynamo=True, opset_version=18,
        input_names=["image"], dynamic_shapes={"x": {0: auto, 2: auto, 3: auto}},
    )
    _onnx_matches(model, path)


@pytest.mark.parametrize("cfg", [tiny(input_norm="image"), tiny("unet++", input_norm="image"),
                                 ModelConfig(encoder="resnet18", base_width=4, input_norm="image")],
                         ids=["unet", "unet++", "resnet18"])
def test_per_image_input_normalization_ignores_each_images_brightness_contrast_and_colour_cast(cfg) -> None:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    plain = build_model(dataclasses.replace(cfg, input_norm="none")).eval()
    plain.load_state_dict(model.state_dict())  # same weights: the option adds no parameter
    x = torch.randn(2, 3, 40, 56)
    lit = x * torch.tensor([0.4, 0.6, 2.0]).view(1, 3, 1, 1) + torch.tensor([[-1.0], [0.5]]).view(2, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(lit), model(x), atol=1e-4, rtol=1e-4)
        assert (plain(lit) - plain(x)).abs().max() > 0.1  # without it, the relighting shows
        standardized = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(model(x), plain(standardized), atol=1e-4, rtol=1e-4)


def test_per_image_input_normalization_does_not_blow_up_a_flat_tile() -> None:
    """A tile of one colour with faint noise (a blank margin, an overexposed sky) keeps its noise faint:
    its standard deviation counts as STD_FLOOR, not as one."""
    flat = torch.full((1, 3, 16, 16), 4.0) + 1e-3 * torch.randn(1, 3, 16, 16)
    out = standardize(flat)
    assert out.abs().max() < 10 * 1e-3 / STD_FLOOR and torch.isfinite(out).all()
    assert standardize(torch.full((1, 1, 4, 4), -2.0)).eq(0).all()


def test_count_flops_matches_hand_count() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, (3, 10, 20)) == 2 * (8 * 10 * 20) * (3 * 9)
    assert count_parameters(conv) == 8 * 3 * 9
    model = build_model(tiny())
    assert count_flops(model, (3, 64, 64)) * 4 == pytest.approx(count_flops(model, (3, 128, 128)), rel=1e-3)
    assert model.training, "count_flops must not change the model"


def test_models_table_is_consistent_with_counters() -> None:
    rows = models_table(in_channels=1, out_channels=3, size=64)
    assert [r["name"] for r in rows] == list(PRESETS)
    for row in rows:
        model = build_model(preset_config(row["name"], in_channels=1, out_channels=3))
        assert row["params"] == count_parameters(model)
        assert row["gflops"] * 1e9 == pytest.approx(count_flops(model, (1, 64, 64)), rel=1e-6)
    by_name = {r["name"]: r for r in rows}
    assert by_name["mobile-unet"]["params"] < by_name["unet"]["params"] / 4
    assert by_name["unet++"]["gflops"] > by_name["unet"]["gflops"]


def test_presets_and_overrides() -> None:
    cfg = preset_config("attention-unet", base_width=8, out_channels=5)
    assert cfg.attention and cfg.base_width == 8 and cfg.out_channels == 5
    assert preset_config("unet++").arch == "unet++"
    assert MODELS.names() == ["unet", "unet++"]
    with pytest.raises(ConfigError, match="unknown model preset 'unet3'.*attention-unet"):
        preset_config("unet3")
    with pytest.raises(ConfigError, match="unknown key 'widht'"):
        preset_config("unet", widht=3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"depth": 0}, r"model\.depth: expected an integer >= 1, got 0"),
        ({"base_width": 0}, r"model\.base_width: expected an integer >= 1"),
        ({"in_channels": 0}, r"model\.in_channels"),
        ({"spatial_dims": 1}, r"model\.spatial_dims: expected 2 or 3"),
        ({"width_mult": 0.0}, r"model\.width_mult"),
        ({"dropout": 1.0}, r"model\.dropout"),
        ({"bottleneck": "transformer", "transformer_heads": 3}, r"model\.transformer_heads: 3 heads do not divide the 32"),
        ({"bottleneck": "transformer", "transformer_layers": 0}, r"model\.transformer_layers"),
        ({"arch": "segformer"}, r"model.arch 'segformer': not a built-in architecture \(unet, unet\+\+\) and no installed package"),
    ],
)
def test_invalid_config_names_the_field(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(dataclasses.replace(tiny(), **change))


def test_width_schedule_and_group_norm_on_awkward_widths() -> None:
    model = build_model(tiny(norm="group", base_width=6, width_mult=1.5, max_width=10))
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert max(c.out_channels for c in convs) == 10  # 6, 9, 14 -> capped at 10
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 2, 16, 16)


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_group_norm_on_channels_last_input_matches_contiguous_and_keeps_the_format(norm: str) -> None:
    """The channels_last fast path (a contiguous copy through torch's group_norm) computes the same
    values and gradients as the plain path, and hands channels_last on to the next convolution."""
    from unetkit.models.blocks import make_norm

    torch.manual_seed(0)
    layer = make_norm(norm, 8, 2)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 8, 9, 7) * 3 + 1
    plain = x.clone().requires_grad_()
    last = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert not last.is_contiguous()
    y_plain, y_last = layer(plain), layer(last)
    assert y_last.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_last, y_plain)
    g = torch.randn_like(y_plain)
    (y_plain * g).sum().backward()
    w_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    (y_last * g).sum().backward()
    torch.testing.assert_close(last.grad, plain.grad)
    torch.testing.assert_close(layer.weight.grad, w_grad)
    # per-channel statistics really are normalised away (instance) or per group (group)
    stats = y_plain.detach() - layer.bias.detach().view(1, -1, 1, 1)
    if norm == "instance":
        assert stats.mean(dim=(2, 3)).abs().max() < 1e-5
