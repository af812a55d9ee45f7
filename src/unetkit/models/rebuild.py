"""Whether a user's own network (`fit(model=...)`) is what its artifact will rebuild when loaded."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unetkit.config import ModelConfig
from unetkit.errors import ConfigError
from unetkit.models.factory import build_model


def check_rebuildable(network: nn.Module, cfg: ModelConfig, patch_size: Sequence[int]) -> None:
    """Refuse a user's network (`fit(model=...)`) that the artifact could not rebuild: `build_model(cfg)`
    (the built-in or plugin architecture `cfg.arch`, with the data's channels) must have the same
    weight names and shapes; and it must map (1, in_channels, *patch) to logits (1, out_channels, *patch)."""
    with torch.device("meta"):
        rebuilt = build_model(cfg).state_dict()
    given = network.state_dict()
    for key, want in rebuilt.items():
        if key not in given:
            raise ConfigError(f"fit(model=...): model.arch '{cfg.arch}' rebuilds a network with weight '{key}' "
                              f"{tuple(want.shape)}, the given network has none; the artifact could not be reloaded "
                              "(make the plugin's builder build this network from the ModelConfig)")
        if given[key].shape != want.shape:
            raise ConfigError(f"fit(model=...): weight '{key}' is {tuple(given[key].shape)} in the given network, "
                              f"{tuple(want.shape)} in what model.arch '{cfg.arch}' rebuilds (in_channels "
                              f"{cfg.in_channels}, out_channels {cfg.out_channels} from the data, options {cfg.options})")
    extra = [k for k in given if k not in rebuilt]
    if extra:
        raise ConfigError(f"fit(model=...): weight '{extra[0]}' of the given network is not in what model.arch "
                          f"'{cfg.arch}' rebuilds; the artifact could not be reloaded")
    was_training = network.training
    x = torch.zeros(1, cfg.in_channels, *patch_size, device=next(network.parameters()).device)
    with torch.no_grad():
        y = network.eval()(x)
    network.train(was_training)
    expected = (1, cfg.out_channels, *patch_size)
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != expected:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ConfigError(f"fit(model=...): the network maps {tuple(x.shape)} to {got} in eval mode; expected logits "
                          f"{expected} (out_channels = the data's {cfg.out_channels} classes)")
