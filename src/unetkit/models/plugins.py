"""Architectures other packages provide: the entry-point group `unetkit.models` (config.MODEL_PLUGIN_GROUP).

A package registers a builder `build(cfg: ModelConfig) -> nn.Module` under a name, e.g. in its
pyproject.toml:

    [project.entry-points."unetkit.models"]
    basicunet = "mypackage.models:build_basicunet"

and `ModelConfig(arch="basicunet", options={...})` builds it wherever that package is installed:
in training, and when an artifact is loaded for prediction, export, calibration or serving. The
builder gets the whole ModelConfig (in/out channels resolved from the data; `options` holds its own
keyword values); the network maps normalized (N, in_channels, H, W) to logits (N, out_channels, H, W).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from torch import nn

from unetkit.config import MODEL_PLUGIN_GROUP, ModelConfig
from unetkit.errors import ConfigError


def plugin_names() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=MODEL_PLUGIN_GROUP)})


def plugin_builder(name: str, builtin: list[str]) -> Callable[[ModelConfig], nn.Module]:
    """The builder registered as `name` in the entry-point group, or a ConfigError naming it (one line)."""
    found = [ep for ep in entry_points(group=MODEL_PLUGIN_GROUP) if ep.name == name]
    if not found:
        others = plugin_names()
        raise ConfigError(
            f"model.arch '{name}': not a built-in architecture ({', '.join(builtin)}) and no installed package "
            f"provides it in the entry-point group '{MODEL_PLUGIN_GROUP}'"
            + (f" (plugins installed: {', '.join(others)})" if others else "")
            + f"; install the package that registers '{name}'")
    try:
        builder = found[0].load()
    except Exception as e:  # the plugin's own import failed: say which one
        raise ConfigError(f"model.arch '{name}': plugin {found[0].value} in '{MODEL_PLUGIN_GROUP}' failed to load "
                          f"({type(e).__name__}: {e})") from None
    if not callable(builder):
        raise ConfigError(f"model.arch '{name}': plugin {found[0].value} is not callable; expected a builder "
                          "function ModelConfig -> nn.Module")
    return builder

