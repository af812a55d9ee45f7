"""Encoder weights users already have on disk, loaded into a network's `encoder` (nothing is downloaded).

Files: safetensors, or `.pth` / `.pt` / `.bin` / `.ckpt` read with `torch.load(weights_only=True)`
(never an arbitrary pickle). Key layouts, detected from the keys:

- torchvision ResNet / EfficientNet (`conv1.weight`, `layer1.0.conv1.weight`, `features.1.0.block...`);
  timm's ResNet keys are the same; the classifier (`fc.*`, `classifier.*`, `features.8.*`) is dropped;
- timm EfficientNet (`conv_stem`, `blocks.0.0.conv_dw`, ...), renamed to torchvision's;
- unetkit's own: the keys of a unetkit network's encoder under the prefix `encoder.` (a whole model's
  state dict, smp's `encoder.*`, or what `encoder_state` / `unetkit pretrain` save);
- wrapped: a checkpoint dict holding the state dict under `state_dict` / `model` / `model_state_dict`,
  and the `module.` prefix of DistributedDataParallel.

The first convolution adapts to the data's channels as smp does: summed over RGB for one channel,
RGB repeated (and scaled by 3/C) for more. ImageNet weights expect ImageNet's mean/std:
`input_normalization` gives them in the data's raw units, for the artifact's normalization.
A key or shape that does not fit is a `ConfigError` naming the first such key and both shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unetkit.config import ModelConfig
from unetkit.errors import ConfigError
from unetkit.models.encoders import ENCODERS
from unetkit.models.ensemble import Ensemble
from unetkit.models.factory import build_model

PREFIX = "encoder."  # unetkit's own layout: a network's encoder state dict under this prefix
WRAPPERS = ("state_dict", "model", "model_state_dict")  # where training checkpoints keep the state dict
FIELD = "finetune.pretrained"


@dataclass(frozen=True)
class PretrainedReport:
    path: str
    encoder: str  # ModelConfig.encoder the weights went into
    layout: str  # "torchvision" (timm's ResNet keys are the same), "timm" or "unetkit"
    loaded: int  # tensors copied into the encoder
    dropped: tuple[str, ...]  # classifier keys of the file left out
    adapted: str  # the first conv's input channels, when adapted ("3 -> 1"); "" otherwise
    mean: tuple[float, ...] | None  # the normalization the weights expect, [0, 1] units (None: the data's own)
    std: tuple[float, ...] | None

    def summary(self) -> str:
        text = (f"{self.path}: {self.loaded} {self.layout}-layout tensors into the {self.encoder} encoder"
                + (f" ({len(self.dropped)} classifier tensors left out)" if self.dropped else "")
                + (f", first conv adapted {self.adapted} channels" if self.adapted else ""))
        return text + (", ImageNet normalization" if self.mean is not None else "")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a safetensors or weights-only torch file (unwrapped, `module.` removed)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{FIELD}: {p}: weights file not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file  # lazy: safetensors loads only when a file is read

        try:
            state: object = load_file(str(p))
        except Exception as e:  # safetensors raises its own types for garbage
            raise ConfigError(f"{FIELD}: {p}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # pickled objects, truncated file
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(f"{FIELD}: {p}: not loadable as weights only (torch.load weights_only=True: "
                              f"{type(e).__name__}: {first}); give a state dict or a safetensors file") from None
    for key in WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ConfigError(f"{FIELD}: {p}: holds a {type(state).__name__}; expected a state dict of tensors")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(f"{FIELD}: {p}: no tensors in the file; expected encoder weights")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def encoder_modules(model: nn.Module) -> list[nn.Module]:
    """The `encoder` submodule of a network (of each member of an Ensemble)."""
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    found = [getattr(m, "encoder", None) for m in members]
    if any(not isinstance(e, nn.Module) for e in found):
        raise ConfigError(f"{FIELD}: {type(members[0]).__name__} has no `encoder` submodule to load weights into")
    return found  # type: ignore[return-value]


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A network's encoder weights in unetkit's layout (`encoder.` + the encoder's keys): what
    `load_pretrained_encoder` takes back, e.g. after self-supervised pretraining."""
    return {PREFIX + k: v.detach().cpu().contiguous() for k, v in encoder_modules(model)[0].state_dict().items()}


def load_pretrained_encoder(model: nn.Module, path: str | Path) -> PretrainedReport:
    """Copy the encoder weights in file `path` into `model.encoder` (every member of an ensemble).

    The model's `cfg.encoder` (built-in networks) names the backbone; refuses, naming the first key
    that does not fit and both shapes, before changing any weight."""
    net = model.members[0] if isinstance(model, Ensemble) else model
    cfg = getattr(net, "cfg", None)
    encoder = cfg.encoder if isinstance(cfg, ModelConfig) else type(net).__name__  # a plugin's network: its class
    state = read_weights(path)
    modules = encoder_modules(model)
    weights, report = match_encoder(modules[0].state_dict(), state, encoder, str(path))
    for module in modules:
        module.load_state_dict(weights, strict=False)  # strict on every key but num_batches_tracked, checked above
    return report


def check_pretrained(cfg: ModelConfig, path: str | Path) -> PretrainedReport:
    """What `load_pretrained_encoder` would do for a network of `cfg` (built on the meta device: no
    compute, no weights changed); raises the same errors. For checks before anything is written."""
    with torch.device("meta"):
        model = build_model(cfg)
    return match_encoder(encoder_modules(model)[0].state_dict(), read_weights(path), cfg.encoder, str(path))[1]


def match_encoder(expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], encoder: str,
                  path: str) -> tuple[dict[str, torch.Tensor], PretrainedReport]:
    """The file's tensors renamed to the encoder's keys (first conv adapted), and the report; raises a
    ConfigError at the first expected key missing or of another shape, or the first key left over."""
    state, layout = _to_encoder_layout(dict(state), encoder)
    spec = ENCODERS.get(encoder) if encoder in ENCODERS else None  # a backbone: ImageNet heads and normalization
    dropped = tuple(k for k in state if spec is not None and layout != "unetkit" and k.startswith(spec.head_keys))
    state = {k: v for k, v in state.items() if k not in dropped}
    out: dict[str, torch.Tensor] = {}
    adapted = ""
    first_conv = next(k for k, v in expected.items() if v.ndim == 4)
    for key, want in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            raise ConfigError(f"{FIELD}: {path}: the {encoder} encoder's key '{key}' {_shape(want)} is not in the file "
                              f"({layout} layout); these weights are for another encoder than model.encoder '{encoder}'")
        got = state[key]
        if got.shape != want.shape and key == first_conv and _adaptable(got, want):
            got, adapted = adapt_first_conv(got, want.shape[1]), f"{got.shape[1]} -> {want.shape[1]}"
        if got.shape != want.shape:
            raise ConfigError(f"{FIELD}: {path}: key '{key}' has shape {_shape(got)} in the file, the {encoder} "
                              f"encoder expects {_shape(want)}; these weights are for another encoder than "
                              f"model.encoder '{encoder}'")
        out[key] = got.to(want.dtype) if want.dtype.is_floating_point else got
    extra = [k for k in state if k not in expected]
    if extra:
        raise ConfigError(f"{FIELD}: {path}: key '{extra[0]}' {_shape(state[extra[0]])} is not part of the {encoder} "
                          f"encoder ({len(extra)} such keys); these weights are for another encoder than "
                          f"model.encoder '{encoder}'")
    imagenet = spec is not None and layout != "unetkit"
    return out, PretrainedReport(path, encoder, layout, len(out), dropped, adapted,
                                 spec.mean if imagenet else None, spec.std if imagenet else None)


def adapt_first_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """RGB filters (O, 3, k, k) for `channels` inputs: summed for one, cycled and scaled by 3/C for more."""
    if channels == 1:
        return weight.sum(1, keepdim=True)
    index = torch.arange(channels) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / channels)


def input_normalization(mean: Sequence[float], std: Sequence[float], channels: int,
                        max_value: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The weights' [0, 1]-unit mean/std in the data's raw units (x 255 for 8-bit images, x 65535 for
    16-bit, as is for floats within [0, 1]), for `channels` inputs (averaged for one, cycled for more)."""
    scale = 1.0 if max_value <= 1.0 else 255.0 if max_value <= 255.0 else 65535.0 if max_value <= 65535.0 else max_value
    if channels == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    else:
        mean, std = [mean[i % len(mean)] for i in range(channels)], [std[i % len(std)] for i in range(channels)]
    return tuple(m * scale for m in mean), tuple(s * scale for s in std)


# ---------------------------------------------------------------- key layouts


def _to_encoder_layout(state: dict[str, torch.Tensor], encoder: str) -> tuple[dict[str, torch.Tensor], str]:
    if any(k.startswith(PREFIX) for k in state):  # unetkit / smp: a network's state dict; keep its encoder
        return {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}, "unetkit"
    if encoder.startswith("efficientnet") and "conv_stem.weight" in state:
        return {_timm_efficientnet_key(k): v for k, v in state.items()}, "timm"
    return state, "torchvision"


_TIMM_BLOCK = {  # timm EfficientNet block parts -> torchvision's `block.<i>` (no expansion conv / with one)
    "dw": {"conv_dw": "0.0", "bn1": "0.1", "se.conv_reduce": "1.fc1", "se.conv_expand": "1.fc2",
           "conv_pw": "2.0", "bn2": "2.1"},
    "ir": {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "se.conv_reduce": "2.fc1",
           "se.conv_expand": "2.fc2", "conv_pwl": "3.0", "bn3": "3.1"},
}


def _timm_efficientnet_key(key: str) -> str:
    """timm's EfficientNet names -> torchvision's (the head's keys -> `features.8.*` / `classifier.*`, dropped)."""
    top = {"conv_stem.": "features.0.0.", "bn1.": "features.0.1.", "conv_head.": "features.8.0.", "bn2.": "features.8.1."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old):]
    m = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)", key)
    if m:
        stage, block, part, leaf = m.groups()
        parts = _TIMM_BLOCK["dw" if stage == "0" else "ir"]
        if part in parts:
            return f"features.{int(stage) + 1}.{block}.block.{parts[part]}.{leaf}"
    return key  # classifier.* stays; anything else is reported as not part of the encoder


def _adaptable(got: torch.Tensor, want: torch.Tensor) -> bool:
    return got.ndim == 4 and got.shape[0] == want.shape[0] and got.shape[2:] == want.shape[2:]


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))
