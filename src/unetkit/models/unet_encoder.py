"""The built-in U-Net's encoder: which weights it is, and its weights file (`unetkit pretrain` writes it).

The encoder is the down path, `encoder.*` (the conv blocks of levels 0..depth-1), `downs.*` (learned
only with `downsample: strided`) and `bottom.*` (the deepest block, the last encoder stage in smp's
sense); the rest (`ups`, `gates`, `decoder`, `bottleneck`, `head`, `aux_heads`) is decoder and head.
An ensemble's members carry the same names under `members.<i>.`.

The file is a safetensors file of those tensors whose header metadata `unetkit_encoder` holds JSON:
the architecture (the `ModelConfig` fields that shape the encoder), the channel widths per level,
the normalization the weights were trained with (per-channel mean/std in raw units) and how they
were trained (`pretraining`). A file may also hold the decoder (`parts` ["encoder", "decoder"]:
every weight but the head, `network_state`), and then its architecture also has the fields that
shape the decoder (`DECODER_FIELDS`). `load_unet_encoder(model, path)` copies them into a U-Net and
refuses, naming the first key, a file whose keys or shapes do not fit.

(For the merge of issue 19: the loader of the built-in U-Net's encoder, for folding into
`models/pretrained.py`'s `load_pretrained_encoder`.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetkit.config import ModelConfig, to_dict
from unetkit.data.atomic import atomic_write
from unetkit.errors import ArtifactError
from unetkit.models.layout import level_widths

ENCODER_PREFIXES = ("encoder.", "downs.", "bottom.")
DECODER_PREFIXES = ("bottleneck.", "ups.", "gates.", "decoder.")  # the rest is the head: head., aux_heads.
ENCODER_META_KEY = "unetkit_encoder"
ENCODER_FORMAT = 1
# the ModelConfig fields that shape the encoder's weights or the inputs they expect (the rest only shapes the decoder)
ENCODER_FIELDS = ("arch", "in_channels", "spatial_dims", "depth", "base_width", "width_mult", "max_width",
                  "norm", "act", "downsample", "residual", "separable", "input_norm")
# ... and those that shape the decoder's too (a file that holds the decoder fixes them)
DECODER_FIELDS = ("upsample", "attention", "bottleneck", "transformer_heads", "transformer_layers")
PARTS = ("encoder", "decoder")
_MEMBER = re.compile(r"^(module\.)?(members\.\d+\.)?")


def is_encoder_key(name: str) -> bool:
    """Whether a parameter/state-dict name of a built-in U-Net (or an ensemble of them) is the encoder's."""
    return _MEMBER.sub("", name, count=1).startswith(ENCODER_PREFIXES)


def _part_tensors(model_or_state: nn.Module | dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if k.startswith(prefixes)}


def encoder_state(model_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's tensors (weights and BatchNorm statistics) of a single U-Net, detached on the CPU."""
    return _part_tensors(model_or_state, ENCODER_PREFIXES)


def network_state(model_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's and the decoder's tensors of a single U-Net: all but the head, detached on the CPU."""
    return _part_tensors(model_or_state, ENCODER_PREFIXES + DECODER_PREFIXES)


def state_parts(state: dict[str, torch.Tensor]) -> list[str]:
    """Which parts a file's tensors are: ["encoder"] or ["encoder", "decoder"]."""
    return ["encoder", "decoder"] if any(k.startswith(DECODER_PREFIXES) for k in state) else ["encoder"]


def encoder_architecture(cfg: ModelConfig, parts: list[str] | tuple[str, ...] = ("encoder",)) -> dict[str, Any]:
    """The ModelConfig fields that shape the `parts` stored in the file."""
    d = to_dict(cfg)
    return {k: d[k] for k in ENCODER_FIELDS + (DECODER_FIELDS if "decoder" in parts else ())}


def save_unet_encoder(path: str | Path, state: dict[str, torch.Tensor], model: ModelConfig,
                      mean: tuple[float, ...], std: tuple[float, ...], pretraining: dict[str, Any]) -> Path:
    """Write encoder weights (`encoder_state`, or `network_state`: with the decoder) with their metadata,
    atomically."""
    from safetensors.torch import save  # lazy: safetensors is the artifact format's, loaded only when writing

    parts = state_parts(state)
    meta = {"format_version": ENCODER_FORMAT, "parts": parts, "architecture": encoder_architecture(model, parts),
            "widths": level_widths(model), "normalization": {"mean": list(mean), "std": list(std)},
            "pretraining": pretraining}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return atomic_write(path, save(tensors, metadata={ENCODER_META_KEY: json.dumps(meta)}))


def is_unet_encoder_file(path: str | Path) -> bool:
    """Whether `path` is a safetensors file `unetkit pretrain` wrote (its metadata names the architecture);
    other encoder weights (torchvision/timm backbones) go through `unetkit.models.pretrained`."""
    from safetensors import safe_open  # lazy: as above

    try:
        with safe_open(str(path), framework="pt") as f:
            return ENCODER_META_KEY in (f.metadata() or {})
    except Exception:  # not safetensors (a .pth), missing or garbage: not ours; the other reader names the problem
        return False


def read_unet_encoder(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of an encoder file; refuses a missing file or one without the metadata."""
    from safetensors import safe_open  # lazy: as above
    from safetensors.torch import load

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: encoder weights not found (expected a file written by `unetkit pretrain`)")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load(p.read_bytes())
    except Exception as e:  # safetensors raises its own error types for garbage
        raise ArtifactError(f"{p}: not a safetensors file ({type(e).__name__}: {e})") from None
    if ENCODER_META_KEY not in header:
        raise ArtifactError(f"{p}: safetensors without '{ENCODER_META_KEY}' metadata; expected encoder weights "
                            "written by `unetkit pretrain`")
    try:
        meta = json.loads(header[ENCODER_META_KEY])
        arch = meta["architecture"]
        ModelConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in arch.items()})
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ArtifactError(f"{p}: unreadable encoder metadata ({type(e).__name__}: {e})") from None
    if meta.get("format_version") != ENCODER_FORMAT:
        raise ArtifactError(f"{p}: encoder file format {meta.get('format_version')!r}; this unetkit reads {ENCODER_FORMAT}")
    meta.setdefault("parts", ["encoder"])  # files written before the decoder could be kept
    if meta["parts"] not in (["encoder"], list(PARTS)):
        raise ArtifactError(f"{p}: parts {meta['parts']!r}; expected ['encoder'] or {list(PARTS)}")
    return tensors, meta


def load_unet_encoder(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy the encoder weights in `path` (and the decoder's, when the file holds them) into `model` (a
    built-in U-Net); returns the file's metadata.

    Every key of the file must be a key of the model's parts it holds, with the same shape, and every key
    of those parts must be in the file: the first one that is not is named, with both shapes."""
    tensors, meta = read_unet_encoder(path)
    prefixes = ENCODER_PREFIXES + (DECODER_PREFIXES if "decoder" in meta["parts"] else ())
    what = " and ".join(meta["parts"])
    own = model.state_dict()
    for key in sorted(tensors):
        if key not in own or not key.startswith(prefixes):
            raise ArtifactError(f"{path}: key '{key}' is not an {what} weight of this model (its keys start "
                                f"with {', '.join(prefixes)}; e.g. {next(iter(sorted(own)), '')!r})")
        if tuple(tensors[key].shape) != tuple(own[key].shape):
            raise ArtifactError(f"{path}: '{key}' has shape {list(tensors[key].shape)}, the model's is "
                                f"{list(own[key].shape)}; pretrain with the model's architecture")
    missing = [k for k in own if k.startswith(prefixes) and k not in tensors]
    if missing:
        raise ArtifactError(f"{path}: no weights for the model's {what} key '{missing[0]}' "
                            f"({len(missing)} missing); pretrain with the model's architecture")
    model.load_state_dict(tensors, strict=False)
    return meta
