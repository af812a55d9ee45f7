"""Export an artifact's whole per-tile pipeline to ONNX, with a parity check and an inference plan.

The graph: raw-intensity tiles (N, C, H, W) -> normalization -> network (BatchNorm folded) ->
calibration (logits * scale / temperature + bias) -> outputs `probabilities` (softmax) and
`logits`; batch, height and width are dynamic. Beside it, `model.onnx.json` (`plan.py`) says how
to tile. Before anything becomes visible the exported graph runs on a few tiles (random and
image-like, odd sizes) next to the artifact's torch pipeline; a max |difference| of the
probabilities above `ExportConfig.parity_tolerance` deletes the output and raises `ParityError`.
Both files are written under temporary names and renamed, so a reader never sees half an export.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetkit.artifact import Artifact, load_artifact
from unetkit.config import ExportConfig, TileChoice
from unetkit.errors import ConfigError, UnetkitError
from unetkit.export.plan import INPUT_NAME, OUTPUT_NAMES, inference_plan, plan_path
from unetkit.inference.backends import ONNX_EXPORT_LOCK, fold_batchnorm
from unetkit.inference.files import tile_config_for

INSTALL_HINT = "pip install 'unetkit[export]'"


class ParityError(UnetkitError):
    """The exported graph does not compute what the artifact's torch pipeline computes."""


@dataclass(frozen=True)
class ExportResult:
    model_path: Path
    plan_path: Path
    max_abs_diff: float  # probabilities, exported graph vs torch pipeline, over the parity tiles
    tiles_checked: int
    plan: dict[str, Any]


def require_onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise ConfigError(f"ONNX export needs onnx and onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


class ShuffleUp(nn.Module):
    """A 2x2, stride-2 transposed convolution computed as a 1x1 convolution to 4x the channels and a
    pixel shuffle (ONNX DepthToSpace): the same numbers, but ONNX Runtime quantizes a 1x1 Conv into
    its int8 QLinearConv, while a ConvTranspose stays a float island between dequantize/quantize
    pairs (20 % of an int8 U-Net's time, measured; docs/export.md).

    out[co, 2h+i, 2w+j] = sum_ci W[ci, co, i, j] x[ci, h, w] + b[co]  ==  shuffle(conv1x1(x))[co, 2h+i, 2w+j]
    with the 1x1 weight W'[4co + 2i + j, ci] = W[ci, co, i, j]."""

    def __init__(self, t: nn.ConvTranspose2d) -> None:
        super().__init__()
        cin, cout = t.in_channels, t.out_channels
        self.conv = nn.Conv2d(cin, 4 * cout, 1, bias=t.bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(t.weight.permute(1, 2, 3, 0).reshape(4 * cout, cin, 1, 1))
            if t.bias is not None:
                self.conv.bias.copy_(t.bias.repeat_interleave(4))
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def is_shuffle_able(m: nn.Module) -> bool:
    return (isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (2, 2) and m.stride == (2, 2)
            and m.padding == (0, 0) and m.output_padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1)


def shuffle_upsampling(module: nn.Module) -> nn.Module:
    """`module` (in place) with every 2x2 stride-2 ConvTranspose2d replaced by a `ShuffleUp`."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if is_shuffle_able(child):
                setattr(parent, name, ShuffleUp(child))
    return module


class ExportGraph(nn.Module):
    """The artifact's pipeline (BatchNorm folded; with `shuffle_up`, 2x2 transposed convolutions as
    1x1 convolutions + DepthToSpace) with two outputs: probabilities and logits."""

    def __init__(self, artifact: Artifact, shuffle_up: bool = False) -> None:
        super().__init__()
        self.pipeline = fold_batchnorm(artifact.pipeline_module(probabilities=False)).eval()
        if shuffle_up:
            shuffle_upsampling(self.pipeline)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.pipeline(x)
        return torch.softmax(logits, dim=1), logits


def export_graph(artifact: Artifact, opset: int = 17, shuffle_up: bool = False) -> bytes:
    """ONNX bytes of `ExportGraph(artifact, shuffle_up)` (TorchScript exporter, dynamic batch/height/width)."""
    require_onnxruntime()
    graph = ExportGraph(artifact, shuffle_up)
    h, w = (tuple(artifact.meta.patch_size) or (64, 64))[:2]
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with ONNX_EXPORT_LOCK, warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (torch.zeros(1, artifact.meta.model.in_channels, h, w),), buffer,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: axes, **{name: axes for name in OUTPUT_NAMES}},
            opset_version=opset, dynamo=False,
        )
    return buffer.getvalue()


def parity_tiles(artifact: Artifact, tile: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Batches in raw units: uniform noise over mean +- 3 std, and smooth image-like tiles with
    blobs and lines, at the tile size and at odd sizes that exercise the network's padding."""
    rng = np.random.default_rng(seed)
    meta = artifact.meta
    c = meta.model.in_channels
    mean = np.asarray(meta.mean, dtype=np.float32).reshape(1, c, 1, 1)
    std = np.asarray(meta.std, dtype=np.float32).reshape(1, c, 1, 1)
    th, tw = tile
    batches = [(mean + std * rng.uniform(-3, 3, (2, c, th, tw))).astype(np.float32)]
    for h, w in ((th + 13, tw - 7 if tw > 16 else tw + 5), (37, 53)):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        smooth = np.sin(xx / rng.uniform(3, 9)) * np.cos(yy / rng.uniform(3, 9)) + (np.hypot(yy - h / 2, xx - w / 3) < h / 5)
        lines = (np.abs((yy - 0.6 * xx) % 17) < 1.5).astype(np.float32)
        img = (smooth - lines)[None, None] + 0.1 * rng.standard_normal((1, c, h, w))
        batches.append((mean + std * img).astype(np.float32))
    return batches


def torch_probabilities(artifact: Artifact, batch: np.ndarray) -> np.ndarray:
    """The artifact's own pipeline (unfolded, float32) on a batch: the reference for parity."""
    module = artifact.pipeline_module(probabilities=True)
    with torch.inference_mode():
        return module(torch.from_numpy(batch)).numpy()


def onnx_session(model: bytes | str | Path, threads: int | None = None) -> Any:
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def parity_diff(model: bytes | str | Path, artifact: Artifact, batches: list[np.ndarray]) -> float:
    """Max |p_onnx - p_torch| over `batches`."""
    session = onnx_session(model)
    worst = 0.0
    for batch in batches:
        got = session.run([OUTPUT_NAMES[0]], {INPUT_NAME: batch})[0]
        want = torch_probabilities(artifact, batch)
        if got.shape != want.shape:
            raise ParityError(f"exported graph returned {got.shape} for {batch.shape}; the torch pipeline {want.shape}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def default_out(artifact_path: str | Path, int8: bool = False, suffix: str = ".onnx") -> Path:
    """`model.unetkit` -> `model.onnx` (or `model.int8.onnx`; `suffix` ".xml": an OpenVINO IR)."""
    p = Path(artifact_path)
    return p.with_name(p.stem + (".int8" if int8 else "") + suffix)


def source_and_target(model: str | Path | Artifact, out: str | Path | None, suffix: str,
                      what: str) -> tuple[Artifact, Path]:
    """The artifact to export (loaded when given a path) and the output path: `out`, else beside the
    artifact with `suffix` in place of `.unetkit`."""
    artifact = model if isinstance(model, Artifact) else load_artifact(model)
    if out is None:
        if artifact.path is None:
            raise ConfigError(f"{what}: give `out` for an artifact that was not loaded from a file")
        p = Path(artifact.path)
        out = p.with_name(p.stem + suffix)
    return artifact, Path(out)


def export_artifact(
    model: str | Path | Artifact, out: str | Path | None = None, config: ExportConfig = ExportConfig(),
    tile: TileChoice = None,
) -> ExportResult:
    """Export an artifact to ONNX (`out`, default beside it as `.onnx`) plus `out.json` (the plan).

    `tile`: the tiling recorded in the plan, the artifact's own with what `tile` sets in its place
    (`tile_config_for`). Raises `ParityError` (nothing written) when the graph disagrees with torch.
    """
    if config.format != "onnx":
        raise ConfigError(f"export format '{config.format}': expected 'onnx' here, or 'openvino' "
                          "(unetkit.export.openvino.export_openvino)")
    artifact, out = source_and_target(model, out, ".onnx", "export_artifact")
    tile = tile_config_for(artifact, tile)
    data = export_graph(artifact, config.opset)
    batches = parity_tiles(artifact, tuple(tile.tile_size)[:2])  # type: ignore[arg-type]
    diff = parity_diff(data, artifact, batches)
    parity = {"max_abs_diff": diff, "tolerance": config.parity_tolerance, "tiles": sum(len(b) for b in batches)}
    plan = inference_plan(artifact, tile, opset=config.opset, parity=parity)
    return write_checked(out, data, plan, diff, config.parity_tolerance)


def write_checked(out: Path, data: bytes, plan: dict[str, Any], diff: float, tolerance: float) -> ExportResult:
    """Refuse (remove any half-written output) when `diff` exceeds `tolerance`; else write both files atomically."""
    plan_file = plan_path(out)
    if not np.isfinite(diff) or diff > tolerance:
        raise ParityError(
            f"{out}: exported graph differs from the torch pipeline by {diff:.3g} (max |probability difference|), "
            f"more than parity_tolerance {tolerance:g}; nothing was written"
        )
    plan = write_model_and_plan(out, data, plan)
    return ExportResult(out, plan_file, diff, int(plan.get("parity", {}).get("tiles", 0)), plan)


def write_model_and_plan(out: Path, data: bytes, plan: dict[str, Any]) -> dict[str, Any]:
    """Write the graph and its plan as a pair, the plan stamped with the graph's file name and
    sha256 (`unetkit.export.deployed` refuses a pair whose hashes disagree); returns the plan."""
    import hashlib

    plan = dict(plan, model_file=out.name, model_sha256=hashlib.sha256(data).hexdigest())
    write_pair(out, data, plan_path(out), json.dumps(plan, indent=1) + "\n")
    return plan


def write_pair(model_path: Path, data: bytes, plan_file: Path, text: str) -> None:
    """Both files under temporary names first, then renamed: the model last, so an existing
    `model.onnx` is only ever replaced by one whose plan is already in place."""
    write_files([(plan_file, text.encode()), (model_path, data)])


def write_files(files: list[tuple[Path, bytes]]) -> None:
    """Every file under a temporary name first, then renamed in the order given (the one readers
    open first goes last)."""
    tmps: list[str] = []
    try:
        for target, payload in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            tmps.append(tmp)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.chmod(tmp, 0o644)
        for (target, _), tmp in zip(files, tmps, strict=True):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            Path(tmp).unlink(missing_ok=True)
