"""Starting a run from trained weights: a model artifact (`--init`) or pretrained encoder weights
(`--pretrained`, `unetkit pretrain`'s file).

`read_start(FinetuneConfig)` reads what the start fixes (the architecture, the parent's classes, its
sha256 for the lineage) from the file's header, cheaply and before anything is written;
`check_start` refuses a start whose input channels or spatial dims differ from the data's.
`start_model` is the run's ModelConfig (the parent's architecture, the data's channels and classes),
`apply_start` copies the weights: from an artifact every tensor whose name and shape fit, the head
(`head.*`, `aux_heads.*`) only when the classes are the same (names and order), else it stays
freshly initialized; from an encoder file what it holds, the encoder or the encoder and the decoder
(`unetkit.models.unet_encoder`), never a head. Names
made from label values (`class_0`, `class_255`) say nothing of what a class is: for those the head
is kept only if the parent's largest class (by pixels, from its fingerprint) is also the data's.
An ISBI 2012 model (class 0 = thin membrane, the minority) kept its head on DRIVE (class 0 =
background, the majority) and started by calling vessels background (docs/benchmarks.md).

During the step loop the encoder (`is_encoder_key`) is frozen for `freeze_encoder_steps` (no
gradients, LR 0), then trains at `encoder_lr_ratio` x the LR (`encoder_lr_scale`); the optimizer
holds the encoder's parameters in groups of their own (`training.optim.build_optimizer`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from unetkit.artifact import load_artifact, read_meta
from unetkit.config import FinetuneConfig, ModelConfig, replace
from unetkit.data.fingerprint import largest_class
from unetkit.data.io import file_sha256
from unetkit.errors import ArtifactError, ConfigError
from unetkit.models.unet_encoder import (
    DECODER_FIELDS,
    ENCODER_FIELDS,
    is_encoder_key,
    is_unet_encoder_file,
    load_unet_encoder,
    read_unet_encoder,
)

HEAD_PREFIXES = ("head.", "aux_heads.")
VALUE_NAME = re.compile(r"class_\d+")  # a name the data set spec made from a label value


@dataclass(frozen=True)
class Start:
    """What a run starts from: an artifact ("init") or an encoder file ("pretrained")."""

    kind: str  # "init" | "pretrained"
    path: Path
    model: ModelConfig  # the architecture it fixes (from an encoder file: only the encoder's fields)
    class_names: tuple[str, ...] = ()  # the parent artifact's classes; () for an encoder file
    sha256: str = ""  # of the file's bytes: the lineage's parent
    info: dict[str, Any] = field(default_factory=dict)  # recorded in the lineage
    largest: int | None = None  # the parent's class with the most pixels (its fingerprint)
    resolution: float | None = None  # the scale an artifact start was trained at (`DataConfig.resolution`)

    @property
    def option(self) -> str:
        return f"--{self.kind}"

    def keeps_head(self, class_names: tuple[str, ...] | list[str], fingerprint: dict[str, Any] | None = None) -> bool:
        """The parent's head is kept only for the same classes, names and order, and, for names made
        from label values, the same largest class (`fingerprint`: the data's)."""
        return self.kind == "init" and tuple(class_names) == self.class_names and not self.unlike(fingerprint)

    def unlike(self, fingerprint: dict[str, Any] | None) -> str:
        """Why value-named classes of the same names are not the same classes ("" : no sign of it)."""
        if not self.class_names or not all(VALUE_NAME.fullmatch(n) for n in self.class_names):
            return ""
        data = largest_class(fingerprint)
        if self.largest is None or data is None or data == self.largest:
            return ""
        return (f"the classes are named from label values, and the parent's largest class ({self.class_names[self.largest]}) "
                f"is not the data's ({self.class_names[data]}): the same names, other classes")

    def lineage(self, class_names: tuple[str, ...] | list[str], fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
        """The artifact metadata's lineage entries (`parent_sha256` for an artifact start)."""
        key = "parent_sha256" if self.kind == "init" else "pretrained_sha256"
        same, unlike = tuple(class_names) == self.class_names, self.unlike(fingerprint)
        head = {"head": "kept" if same and not unlike else "re-initialized", **({"head_reason": unlike} if same and unlike else {})}
        return {key: self.sha256, "start": {"kind": self.kind, "path": str(self.path), "sha256": self.sha256,
                                            **(head if self.kind == "init" else {}), **self.info}}


def read_start(config: FinetuneConfig) -> Start | None:
    """The start `config` names (None: fresh weights), read from the file's header (verified)."""
    if config.init and config.pretrained:
        raise ConfigError("finetune: give either init (a model artifact) or pretrained (encoder weights), not both")
    if config.freeze_encoder_steps < 0:
        raise ConfigError(f"finetune.freeze_encoder_steps: expected an integer >= 0, got {config.freeze_encoder_steps}")
    if not 0.0 <= config.encoder_lr_ratio <= 1.0:
        raise ConfigError(f"finetune.encoder_lr_ratio: expected a ratio in [0, 1], got {config.encoder_lr_ratio}")
    if config.init:
        path = Path(config.init)
        meta = read_meta(path)
        if meta.model.ensemble > 1:
            raise ConfigError(f"--init {path}: an ensemble of {meta.model.ensemble} members; fine-tune from a "
                              "single model (train it with --ensemble 1)")
        info = {"name": meta.name, "weights_sha256": meta.weights_sha256, "classes": list(meta.class_names),
                "metrics": {k: meta.metrics.get(k) for k in ("mean_dice_foreground", "mean_iou") if k in meta.metrics}}
        return Start("init", path, meta.model, tuple(meta.class_names), file_sha256(path), info,
                     largest_class(meta.fingerprint), meta.resolution)
    if config.pretrained and is_unet_encoder_file(config.pretrained):  # other weights: models.pretrained, in run_steps
        path = Path(config.pretrained)
        _, meta = read_unet_encoder(path)
        arch = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["architecture"].items()}
        return Start("pretrained", path, ModelConfig(**arch), (), file_sha256(path),
                     {"parts": meta["parts"], "pretraining": meta.get("pretraining", {})})
    return None


def check_start(start: Start, in_channels: int, spatial_dims: int) -> None:
    """Refuse a start whose input channels or spatial dims are not the data's (before anything is written)."""
    check_inputs(start.model, f"{start.option} {start.path}", in_channels, spatial_dims)


def check_inputs(model: ModelConfig, where: str, in_channels: int, spatial_dims: int) -> None:
    """Refuse a trained model (`where` names it: the option and file) whose input channels or spatial dims
    are not the data's."""
    if model.in_channels != in_channels:
        raise ConfigError(f"{where}: the model takes {model.in_channels} input channel(s), the data's images have "
                          f"{in_channels}; use a model trained on such images")
    if model.spatial_dims != spatial_dims:
        raise ConfigError(f"{where}: a {model.spatial_dims}D model, the data is {spatial_dims}D; use a "
                          f"{spatial_dims}D model")


def start_model(start: Start, model: ModelConfig) -> ModelConfig:
    """The run's architecture: the parent's (an artifact's whole config; an encoder file's encoder
    fields, and its decoder fields when it holds the decoder, over `model`), one network; in/out
    channels are set from the data afterwards."""
    if start.kind == "init":
        return dataclasses.replace(start.model, ensemble=1, out_channels=model.out_channels)
    names = ENCODER_FIELDS + (DECODER_FIELDS if "decoder" in start.info.get("parts", ()) else ())
    fixed = {name: getattr(start.model, name) for name in names}
    return replace(model, **fixed)


def apply_start(model: nn.Module, start: Start, class_names: tuple[str, ...] | list[str],
                fingerprint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy the start's weights into `model` (built from `start_model`); returns what was copied.
    `fingerprint`: the data's (see `Start.keeps_head`)."""
    if start.kind == "pretrained":
        return {"copied": " and ".join(load_unet_encoder(model, start.path)["parts"])}
    parent = load_artifact(start.path).state_dict
    own = model.state_dict()
    keep_head = start.keeps_head(class_names, fingerprint)
    chosen = {k: v for k, v in parent.items()
              if k in own and tuple(v.shape) == tuple(own[k].shape) and (keep_head or not k.startswith(HEAD_PREFIXES))}
    missing = [k for k in own if k not in chosen and not k.startswith(HEAD_PREFIXES)]
    if missing:  # same architecture by construction: anything but the head missing is a broken parent
        raise ArtifactError(f"--init {start.path}: no weight for '{missing[0]}' of the architecture it records")
    model.load_state_dict(chosen, strict=False)
    return {"copied": "all" if keep_head else "all but the head"}


def encoder_frozen(step: int, config: FinetuneConfig) -> bool:
    return step < config.freeze_encoder_steps


def encoder_lr_scale(step: int, config: FinetuneConfig) -> float:
    """The encoder's LR multiplier at `step`: 0 while frozen, then `encoder_lr_ratio`."""
    return 0.0 if encoder_frozen(step, config) else config.encoder_lr_ratio


def set_encoder_trainable(model: nn.Module, trainable: bool) -> None:
    """Gradients for the encoder on or off (off: backward stops at the decoder, steps are cheaper)."""
    for name, p in model.named_parameters():
        if is_encoder_key(name):
            p.requires_grad_(trainable)

