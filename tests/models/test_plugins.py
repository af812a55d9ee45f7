"""Architectures from other packages: the entry-point group `unetkit.models` (a test package registers one)."""

from __future__ import annotations

import pytest
import torch
from tests.plugin_fixtures import FEATURES, PLUGIN, basicunet, write_plugin

from unetkit.config import ModelConfig
from unetkit.errors import ConfigError
from unetkit.models import build_model
from unetkit.models.factory import PLUGIN_SIZE_MULTIPLE, input_multiple
from unetkit.models.plugins import plugin_names


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path / "site")))
    return PLUGIN


def test_an_installed_plugin_builds_its_architecture_from_the_config(plugin):
    assert plugin in plugin_names()
    cfg = ModelConfig(arch=plugin, in_channels=1, out_channels=3, options={"features": FEATURES})
    model = build_model(cfg).eval()
    reference = basicunet(1, 3)
    assert type(model) is type(reference)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 48)).shape == (2, 3, 32, 48)
    assert input_multiple(cfg, model) == 16 and input_multiple(cfg, torch.nn.Conv2d(1, 3, 1)) == PLUGIN_SIZE_MULTIPLE
    assert input_multiple(ModelConfig(), torch.nn.Conv2d(1, 3, 1)) == 1  # built-ins pad inside
    ensemble = build_model(cfg.__class__(**{**cfg.__dict__, "ensemble": 2}))
    assert len(ensemble.members) == 2


def test_a_missing_plugin_is_one_line_naming_it_and_the_group():
    with pytest.raises(ConfigError) as e:
        build_model(ModelConfig(arch="no-such-net"))
    message = str(e.value)
    assert "\n" not in message
    assert "'no-such-net'" in message and "'unetkit.models'" in message and "unet, unet++" in message


def test_options_belong_to_plugins_only():
    with pytest.raises(ConfigError, match="model.options: .*built-in 'unet' takes none"):
        build_model(ModelConfig(options={"features": [1]}))


def test_per_image_input_normalization_is_for_built_in_architectures_only(plugin):
    with pytest.raises(ConfigError, match=f"model.input_norm: 'image' .* plugin '{plugin}' takes 'none'"):
        build_model(ModelConfig(arch=plugin, in_channels=1, out_channels=3, input_norm="image",
                                options={"features": FEATURES}))
