"""ImageNet backbones as U-Net encoders: torchvision's module layout, the U-Net contract, refused options."""

from __future__ import annotations

import pytest
import torch

from unetkit.config import ModelConfig
from unetkit.errors import ConfigError
from unetkit.models import build_model, count_parameters
from unetkit.models.encoders import ENCODERS

# torchvision's published parameter counts of the classifiers, minus their heads (fc / features.8 + classifier)
TORCHVISION_ENCODER_PARAMS = {
    "resnet18": 11_689_512 - (512 * 1000 + 1000),
    "resnet34": 21_797_672 - (512 * 1000 + 1000),
    "resnet50": 25_557_032 - (2048 * 1000 + 1000),
    "efficientnet-b0": 5_288_548 - (1280 * 1000 + 1000) - (320 * 1280 + 2 * 1280),
}
# a few torchvision state-dict keys and shapes, written out by hand
TORCHVISION_KEYS = {
    "resnet18": {"conv1.weight": (64, 3, 7, 7), "layer1.0.conv1.weight": (64, 64, 3, 3),
                 "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer4.1.bn2.running_var": (512,)},
    "resnet50": {"layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.1.weight": (256,),
                 "layer3.5.conv2.weight": (256, 256, 3, 3), "layer4.2.conv3.weight": (2048, 512, 1, 1)},
    "efficientnet-b0": {"features.0.0.weight": (32, 3, 3, 3), "features.1.0.block.1.fc1.weight": (8, 32, 1, 1),
                        "features.1.0.block.2.0.weight": (16, 32, 1, 1), "features.2.0.block.0.0.weight": (96, 16, 1, 1),
                        "features.6.3.block.1.0.weight": (1152, 1, 5, 5), "features.7.0.block.3.1.running_var": (320,)},
}


@pytest.mark.parametrize("name", list(TORCHVISION_ENCODER_PARAMS))
def test_encoders_have_torchvisions_parameters_and_keys(name):
    with torch.device("meta"):
        encoder = ENCODERS.get(name).build(3)
    assert count_parameters(encoder) == TORCHVISION_ENCODER_PARAMS[name]
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    for key, shape in TORCHVISION_KEYS.get(name, {}).items():
        assert shapes[key] == shape, key


@pytest.mark.parametrize("name", ["resnet18", "efficientnet-b0"])
def test_encoder_unet_keeps_the_model_contract(name):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=name, in_channels=1, out_channels=3, base_width=4)
    model = build_model(cfg)
    with torch.no_grad():
        features = model.encoder(torch.zeros(1, 1, 64, 64))
    assert [f.shape[1] for f in features] == list(ENCODERS.get(name).out_channels)
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]
    model.eval()
    with torch.no_grad():
        for h, w in [(37, 45), (5, 3)]:
            y = model(torch.randn(1, 1, h, w))
            assert y.shape == (1, 3, h, w) and torch.isfinite(y).all()
    model.train()
    out = model(torch.randn(2, 1, 33, 41))
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(("change", "match"), [
    ({"attention": True}, "model.attention: an option of the built-in encoder"),
    ({"spatial_dims": 3}, "model.spatial_dims must be 2"),
    ({"arch": "unet++"}, "backbone encoders build arch 'unet'"),
    ({"deep_supervision": True}, "model.deep_supervision"),
])
def test_backbone_configs_refuse_built_in_encoder_options(change, match):
    with pytest.raises(ConfigError, match=match):
        build_model(ModelConfig(encoder="resnet18", **change))
