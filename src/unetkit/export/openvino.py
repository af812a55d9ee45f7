"""Export an artifact as an OpenVINO IR: `model.xml` + `model.bin` + the inference plan `model.xml.json`.

The IR is the ONNX export's graph (`onnx.export_graph`: normalization -> network -> calibration ->
probabilities and logits, dynamic batch/height/width) converted by `openvino.convert_model` and
saved with f32 weights (no fp16 compression); the precision it runs at is chosen when it is
compiled (`inference.openvino`). Before anything is written, the IR compiled at f32 runs on the
parity tiles next to the artifact's torch pipeline (`ExportConfig.parity_tolerance`, as for ONNX),
and where the CPU has bf16 the IR compiled at bf16 goes through the parity gate against f32 on
the artifact's validation sample (image-like tiles for an artifact without one); the plan records
both (`openvino.bf16_gate`) and carries the sample with fp32's labels (`plan.plan_sample`), so a
deployment's automatic choice gates bf16 the same way on its own CPU. The plan is stamped with the sha256 of both IR files; all three files are
written under temporary names and renamed, the `.xml` last (`write_ir`).

The int8 IR (`export --format openvino --int8`) is made by `quantize.quantize_artifact`, which
calibrates and gates it on labelled images; this module holds its OpenVINO part: NNCF's
post-training quantization (`nncf_quantize`, the optional `unetkit[openvino-int8]` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import Artifact
from unetkit.config import ExportConfig, TileChoice
from unetkit.errors import ConfigError
from unetkit.export.onnx import (
    ExportResult,
    ParityError,
    export_graph,
    parity_tiles,
    source_and_target,
    torch_probabilities,
    write_files,
)
from unetkit.export.plan import OUTPUT_NAMES, inference_plan, plan_path
from unetkit.inference import openvino as ov_backend
from unetkit.inference.files import tile_config_for
from unetkit.inference.gate import GateData, gate_sample, parity_gate


def export_openvino(
    model: str | Path | Artifact, out: str | Path | None = None, config: ExportConfig = ExportConfig(format="openvino"),
    tile: TileChoice = None,
) -> ExportResult:
    """Write `out` (default beside the artifact as `.xml`), its `.bin` and `out.json` (the plan).
    `tile`: as for `export_artifact` (the artifact's own tiling with what `tile` sets in its place).
    Raises `ParityError` (nothing written) when the f32 IR disagrees with the torch pipeline."""
    ov = ov_backend.require_openvino()
    if config.int8:
        raise ConfigError("export_openvino writes the f32 IR; int8 (calibrated and gated on labelled images) is "
                          "quantize_artifact(model, data, config=ExportConfig(format='openvino', int8=True))")
    artifact, out = source_and_target(model, out, ".xml", "export_openvino")
    if out.suffix != ".xml":
        raise ConfigError(f"{out}: an OpenVINO IR is written as NAME.xml (weights beside it as NAME.bin)")
    tile = tile_config_for(artifact, tile)
    size = tuple(tile.tile_size)[:2]
    graph = ov.convert_model(io.BytesIO(export_graph(artifact, config.opset)))

    f32 = ov_backend.OpenVinoPredictor(graph, "openvino", output=OUTPUT_NAMES[0], batch_size=1)
    batches = parity_tiles(artifact, size)  # type: ignore[arg-type]
    diff = max(float(np.abs(f32(b) - torch_probabilities(artifact, b)).max()) for b in batches)
    if not np.isfinite(diff) or diff > config.parity_tolerance:
        raise ParityError(
            f"{out}: OpenVINO IR differs from the torch pipeline by {diff:.3g} (max |probability difference|), "
            f"more than parity_tolerance {config.parity_tolerance:g}; nothing was written")
    parity = {"max_abs_diff": diff, "tolerance": config.parity_tolerance, "tiles": sum(len(b) for b in batches),
              "runtime": "openvino f32"}
    plan = inference_plan(artifact, tile, opset=config.opset, parity=parity)
    plan["openvino"] = {"version": ov_backend.openvino_version(), "bf16_gate": bf16_gate(graph, artifact, size, f32)}

    plan = write_ir(graph, out, plan)
    return ExportResult(out, plan_path(out), diff, int(parity["tiles"]), plan)


def write_ir(graph: Any, out: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """Save `graph` (an `openvino.Model`) as `out` (.xml) + its .bin with f32 weights, and `plan`
    stamped with both files' names and sha256; all three under temporary names first, the `.xml`
    renamed last. Returns the stamped plan."""
    ov = ov_backend.require_openvino()
    with tempfile.TemporaryDirectory(prefix="unetkit-ov-") as tmp:
        xml = Path(tmp) / out.name
        ov.save_model(graph, str(xml), compress_to_fp16=False)
        xml_data, bin_data = xml.read_bytes(), xml.with_suffix(".bin").read_bytes()
    bin_path = out.with_suffix(".bin")
    plan = dict(plan, model_file=out.name, model_sha256=hashlib.sha256(xml_data).hexdigest(),
                weights_file=bin_path.name, weights_file_sha256=hashlib.sha256(bin_data).hexdigest())
    write_files([(plan_path(out), (json.dumps(plan, indent=1) + "\n").encode()), (bin_path, bin_data), (out, xml_data)])
    return plan


NNCF_HINT = "pip install 'unetkit[openvino-int8]' (OpenVINO's post-training quantization, NNCF)"


def require_nncf() -> Any:
    """The nncf module, or a `ConfigError` naming the pip command. NNCF reports usage to Intel unless
    told it runs in CI (`NNCF_CI`, the only switch it reads; it changes nothing else): unetkit sends
    nothing anywhere, so it sets that switch unless the user set it."""
    os.environ.setdefault("NNCF_CI", "1")
    try:
        import nncf
    except ImportError:
        raise ConfigError(f"int8 for OpenVINO needs nncf: {NNCF_HINT}") from None
    return nncf


def nncf_quantize(fp32: bytes, tiles: np.ndarray, progress: bool = False) -> Any:
    """OpenVINO's post-training int8 quantization (NNCF, its default preset: symmetric per-channel
    int8 weights, activation ranges from `tiles`, fast bias correction) of the fp32 ONNX graph, as
    an `openvino.Model` whose convolutions OpenVINO runs with its int8 (VNNI / AMX-INT8) kernels.
    Unlike ONNX Runtime's QDQ graph it keeps the transposed convolutions: OpenVINO has int8 kernels for them.
    NNCF's log and progress bars (written to stdout, which holds a command's result) go to stderr
    with `progress`, else nowhere."""
    ov, nncf = ov_backend.require_openvino(), require_nncf()
    graph = ov.convert_model(io.BytesIO(fp32))
    dataset = nncf.Dataset(list(tiles), lambda tile: tile[None])
    with open(os.devnull, "w") as devnull:
        sink = sys.stderr if progress else devnull
        handlers = [h for h in logging.getLogger("nncf").handlers if isinstance(h, logging.StreamHandler)]
        streams = [h.setStream(sink) for h in handlers]
        try:
            with contextlib.redirect_stdout(sink):
                return nncf.quantize(graph, dataset, subset_size=len(tiles))
        finally:
            for handler, stream in zip(handlers, streams, strict=True):
                handler.setStream(stream)


def bf16_gate(graph: Any, artifact: Artifact, size: tuple[int, ...], f32: Any) -> dict[str, Any]:
    """The bf16 IR's parity gate against the f32 IR on the artifact's validation sample (else on
    image-like tiles, fp32's labels as the truth), or why bf16 cannot run here."""
    reason = ov_backend.unavailable("openvino-bf16")
    if reason:
        return {"passed": False, "reason": reason, "measured": False}
    meta = artifact.meta
    data = GateData.from_sample(meta.sample(), meta.class_names, meta.ignore_index)
    sample = data.images if data is not None else gate_sample(meta.model.in_channels, size, 4, meta.mean, meta.std)
    bf16 = ov_backend.OpenVinoPredictor(graph, "openvino-bf16", output=OUTPUT_NAMES[0], batch_size=1)
    return {**parity_gate(f32(sample), bf16(sample), "bf16", data).to_dict(), "measured": True}

