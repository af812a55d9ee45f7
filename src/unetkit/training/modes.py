"""How training steps compute: the autocast precision and the memory format, chosen together.

A `ComputeMode` is one of fp32, fp32+cl, bf16, bf16+cl (cl = channels_last) on a CPU, or the GPU
mode (bf16 where the GPU supports it, else fp16 with loss scaling). The model's weights stay fp32
in every mode; channels_last only changes their strides (the artifact stores them contiguous).

`candidate_modes(precision, memory_format, device)` lists the modes `TrainConfig.precision` and
`TrainConfig.memory_format` allow: "auto" on a CPU leaves every combination to measurement
(`unetkit.training.precision`), never to the CPU's name; on a GPU "auto" keeps the fixed rule.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import get_args

import torch
from torch import nn

from unetkit.config import MemoryFormat, Precision
from unetkit.errors import ConfigError

PRECISIONS = tuple(p for p in get_args(Precision) if p != "auto")  # the concrete ones "auto" chooses among
MEMORY_FORMATS = tuple(f for f in get_args(MemoryFormat) if f != "auto")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ComputeMode:
    """Autocast precision ("fp32" = no autocast), channels_last or not, and fp16 loss scaling."""

    precision: str = "fp32"
    channels_last: bool = False
    scale_loss: bool = False

    def __post_init__(self) -> None:
        if self.precision not in _DTYPES:
            raise ConfigError(f"precision: expected one of {list(PRECISIONS)}, got {self.precision!r}")

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.precision]

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    @property
    def name(self) -> str:
        """fp32, fp32+cl, bf16, bf16+cl, fp16."""
        return self.precision + ("+cl" if self.channels_last else "")

    def autocast(self, device_type: str) -> AbstractContextManager:
        return torch.autocast(device_type, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None)

    def prepare(self, model: nn.Module) -> nn.Module:
        """The model in this memory format (weights stay fp32)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


FP32 = ComputeMode()


def mode_by_name(name: str, device: torch.device | None = None) -> ComputeMode:
    """`bf16+cl` -> ComputeMode("bf16", channels_last=True); fp16 scales the loss on CUDA."""
    precision, _, cl = name.partition("+")
    if cl not in ("", "cl"):
        raise ConfigError(f"compute mode: expected a precision with an optional '+cl', got {name!r}")
    return ComputeMode(precision, cl == "cl", precision == "fp16" and device is not None and device.type == "cuda")


def candidate_modes(precision: str, memory_format: str, device: torch.device) -> list[ComputeMode]:
    """The modes the config allows on `device`: fp32 (the health reference) first, then the modes
    least like it (bf16+cl, bf16, fp32+cl).

    CPU: "auto" precision tries fp32 and bf16, "auto" memory format contiguous and channels_last.
    GPU: "auto" precision is bf16 where supported, else fp16 with loss scaling; "auto" memory format
    is contiguous (the GPU behaviour before modes were measured). Other devices: fp32."""
    if precision not in ("auto", *PRECISIONS):
        raise ConfigError(f"precision: expected one of ['auto', 'fp32', 'bf16', 'fp16'], got {precision!r}")
    if memory_format not in ("auto", *MEMORY_FORMATS):
        raise ConfigError(f"memory_format: expected one of ['auto', 'contiguous', 'channels_last'], "
                          f"got {memory_format!r}")
    if precision == "auto":
        if device.type == "cuda":
            precisions = ["bf16" if torch.cuda.is_bf16_supported() else "fp16"]
        elif device.type == "cpu":
            precisions = ["fp32", "bf16"]
        else:
            precisions = ["fp32"]
    else:
        precisions = [precision]
    if memory_format == "auto":
        layouts = [False, True] if device.type == "cpu" else [False]
    else:
        layouts = [memory_format == "channels_last"]
    modes = [ComputeMode(p, cl, p == "fp16" and device.type == "cuda") for p in precisions for cl in layouts]
    # fp32 first (the health reference and the fallback), then the modes most unlike it: when the
    # timing budget pays for only some modes, the contrast that matters most is measured first
    return sorted(modes, key=lambda m: (m != FP32, -2 * (m.precision != "fp32") - m.channels_last))


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN: AVX512-BF16 or AMX); else torch emulates it."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
