"""Predictors: callables `batch (N, C, h, w) float32 raw units -> (N, K, h, w) float32`.

`TorchPredictor` wraps an `nn.Module` (eval, inference_mode, optional channels_last, BatchNorm
folded into the preceding convolution, optional `torch.compile` with a clean fallback).
`OnnxPredictor` wraps an ONNX Runtime session (all graph optimizations, intra-op threads = cores).
`OpenVinoPredictor` (`openvino.py`) compiles the same ONNX graph with OpenVINO, f32 or bf16.
`make_predictor` picks one; with `backend="auto"` it times the candidates once on a
representative tile batch and caches the winner per weights/machine/tile shape. A reduced
precision candidate (bf16) is eligible only when it passes the parity gate against fp32
(`gate.py`); candidates that cannot run here or fail the gate are recorded with the reason.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetkit.artifact import weights_sha256
from unetkit.config import BACKENDS, CACHE_DIR_ENV
from unetkit.errors import ConfigError
from unetkit.inference import openvino as ov_backend
from unetkit.inference.gate import GateData, GateResult, gate_sample, parity_gate
from unetkit.models import fuse_for_inference
from unetkit.runtime import keep_freed_memory

# what "auto" measures; "compile" is left out: its compilation (tens of seconds) would recur in every process
AUTO_CANDIDATES = ("torch", "onnx", "openvino", "openvino-bf16")
REDUCED_PRECISION = {"openvino-bf16": "bf16"}  # candidates behind the parity gate, with their gate


class TorchPredictor:
    """An `nn.Module` as a predictor. `compile=True` tries `torch.compile` on the first call and
    falls back to eager (with a warning) when it fails."""

    def __init__(
        self, module: nn.Module, *, channels_last: bool = False, threads: int | None = None,
        fold_bn: bool = True, compile: bool = False, keep_memory: bool = True,
    ) -> None:
        if keep_memory:
            keep_freed_memory()  # eager PyTorch is up to several times slower page-faulting fresh activations
        if threads:
            torch.set_num_threads(threads)
        module = module.eval()
        if fold_bn:
            module = fold_batchnorm(module)
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.module = module.to(memory_format=self.memory_format)
        self.in_channels, self.out_channels = module_channels(module)
        self.compiled: Any = None
        self.compile = compile
        self.backend = "compile" if compile else "torch"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self._forward(x)
        return out.float().contiguous().numpy()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compile and self.compiled is None:
            try:
                self.compiled = torch.compile(self.module, dynamic=False)
                return self.compiled(x)
            except Exception as e:  # inductor needs a working C++ toolchain; eager always works
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:200]}); using eager PyTorch", stacklevel=3)
                self.compile, self.backend = False, "torch"
        if self.compiled is not None:
            return self.compiled(x)
        return self.module(x)


class OnnxPredictor:
    """An ONNX model (path or bytes) run by ONNX Runtime on CPU.

    Returns the output named `output`; by default "logits" when the graph has one (graphs from
    `unetkit export` output "probabilities" and "logits"), else the first output. For a path with
    an inference plan beside it (`model.onnx.json`), `tile_size` is the plan's tile size.
    """

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None, output: str | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigError("the ONNX backend needs onnxruntime: pip install 'unetkit[export]'") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        source = str(model) if isinstance(model, (str, Path)) else model
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        inp, outputs = self.session.get_inputs()[0], {o.name: o for o in self.session.get_outputs()}
        name = output or ("logits" if "logits" in outputs else next(iter(outputs)))
        if name not in outputs:
            raise ConfigError(f"ONNX model has no output '{name}'; it has {list(outputs)}")
        outp = outputs[name]
        self.input_name, self.output_name = inp.name, outp.name
        self.in_channels = inp.shape[1] if isinstance(inp.shape[1], int) else None
        self.out_channels = outp.shape[1] if isinstance(outp.shape[1], int) else None
        self.tile_size = _plan_tile_size(model)
        self.backend = "onnx"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]


def _plan_tile_size(model: str | Path | bytes) -> tuple[int, int] | None:
    """The tile size of the inference plan beside an exported `.onnx` file, if there is one."""
    if isinstance(model, bytes):
        return None
    try:
        plan = json.loads(Path(str(model) + ".json").read_text())
        return tuple(int(v) for v in plan["tile"]["size"])[:2]  # type: ignore[return-value]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------- choosing a backend


def make_predictor(
    model: Any, backend: str = "auto", *, tile_shape: tuple[int, int] | None = None, batch_size: int = 4,
    threads: int | None = None, cache_dir: str | Path | None = None,
) -> Any:
    """A predictor for an artifact (its `pipeline_module()`), an `nn.Module`, an `.onnx` or an
    OpenVINO `.xml` path.

    `backend`: "torch" (eager), "compile" (torch.compile), "onnx" (ONNX Runtime), "openvino"
    (OpenVINO f32), "openvino-bf16" or "auto": time the available candidates (`AUTO_CANDIDATES`)
    on a `(batch_size, C, *tile_shape)` batch once, bf16 only when it passes the parity gate, and
    cache the fastest in `<cache_dir>/backends.json` (default `~/.cache/unetkit`, env
    `UNETKIT_CACHE_DIR`), keyed by the weights' sha256, the machine, the tile shape and the
    OpenVINO version. The predictor's `tile_size` is the artifact's patch size. A model that brings
    its own runtime (an exported model, `unetkit.export.deployed.DeployedModel`) makes its
    predictor itself.
    """
    require_backend(backend)
    if callable(getattr(model, "make_predictor", None)) and not isinstance(model, nn.Module):
        return model.make_predictor(backend, threads=threads)
    if isinstance(model, (str, Path)) and str(model).endswith((".onnx", ".xml")):
        return file_predictor(model, backend, threads=threads, batch_size=batch_size)
    exported = exported_onnx(model) if backend in ("onnx", *ov_backend.PRECISIONS) else None
    if exported is not None:
        predictor = file_predictor(exported, backend, threads=threads, batch_size=batch_size)
        predictor.tile_size = tuple(getattr(model.meta, "patch_size", ()) or ())[:2] or None
        return predictor
    meta = getattr(model, "meta", None)
    patch = tuple(getattr(meta, "patch_size", ()) or ())
    module = model.pipeline_module() if hasattr(model, "pipeline_module") else model
    if not isinstance(module, nn.Module):
        raise ConfigError(f"make_predictor: expected an artifact, an nn.Module or an .onnx/.xml path, got {type(model).__name__}")
    tile = tuple(tile_shape or patch[:2] or (256, 256))
    if len(tile) == 1:
        tile = (tile[0], tile[0])
    if backend == "auto":
        sha = getattr(meta, "weights_sha256", "") or module_sha256(module)
        in_channels, _ = module_channels(module)
        sample = gate_sample(in_channels or 1, tile, batch_size, getattr(meta, "mean", None) or (127.5,),
                             getattr(meta, "std", None) or (50.0,))
        gate_data = GateData.from_sample(meta.sample(), meta.class_names, meta.ignore_index) if hasattr(meta, "sample") else None
        key = "|".join([sha, machine_id(), f"tile={tile}", f"batch={batch_size}", f"threads={threads}",
                        f"openvino={ov_backend.openvino_version()}", gate_key(getattr(meta, "validation_sample", None))])
        backend = cached_choice(key, lambda: measure_backends(module, tile, batch_size, threads, sample=sample,
                                                              gate_data=gate_data), cache_dir)["backend"]
    predictor = _build(module, backend, tile, threads, batch_size)
    predictor.tile_size = patch[:2] or None
    return predictor


def require_backend(backend: str) -> None:
    """Refuse a backend name outside `BACKENDS`, or one that cannot run on this machine/install."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend '{backend}': expected one of {list(BACKENDS)}")
    reason = ov_backend.unavailable(backend) if backend in ov_backend.PRECISIONS else None
    if reason:
        raise ConfigError(f"backend '{backend}' is not available here: {reason}; available: {', '.join(available_backends())}")


def available_backends() -> list[str]:
    return [b for b in BACKENDS if b not in ov_backend.PRECISIONS or ov_backend.unavailable(b) is None]


def file_predictor(path: str | Path, backend: str, *, threads: int | None = None, batch_size: int = 4,
                   output: str | None = None) -> Any:
    """An exported file's predictor: an `.xml` (OpenVINO IR) on OpenVINO ("auto" and "onnx" mean
    f32 there), an `.onnx` on ONNX Runtime unless an OpenVINO backend is named."""
    if str(path).endswith(".xml") or backend in ov_backend.PRECISIONS:
        name = backend if backend in ov_backend.PRECISIONS else "openvino"
        predictor: Any = ov_backend.OpenVinoPredictor(path, name, threads=threads, output=output, batch_size=batch_size)
    else:
        predictor = OnnxPredictor(path, threads=threads, output=output)
    predictor.tile_size = _plan_tile_size(path)
    return predictor


def exported_onnx(model: Any) -> Path | None:
    """`model.onnx` beside an artifact file `model.unetkit` when `unetkit export` wrote it from
    exactly this file (its plan's artifact sha256 matches): `--backend onnx` (or an OpenVINO
    backend) then runs it instead of exporting again."""
    path = getattr(model, "path", None)
    if path is None:
        return None
    candidate = Path(path).with_suffix(".onnx")
    try:
        plan = json.loads(Path(str(candidate) + ".json").read_text())
        recorded = plan["artifact"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return candidate if candidate.exists() and h.hexdigest() == recorded else None


def gate_key(sample: dict[str, Any] | None) -> str:
    """The cache key's part naming what the parity gate ran on: a stored validation sample (by hash) or none."""
    data = (sample or {}).get("npz_base64")
    return f"gate=sample:{hashlib.sha256(data.encode()).hexdigest()[:16]}" if data else "gate=fp32-labels"


def _build(module: nn.Module, backend: str, tile: tuple[int, ...], threads: int | None, batch_size: int = 4,
           graph: Callable[[], bytes] | None = None) -> Any:
    """The predictor for a module; `graph` (when given) supplies the module's ONNX bytes, so that
    candidates measured side by side share one export."""
    if backend == "onnx" or backend in ov_backend.PRECISIONS:
        in_channels, _ = module_channels(module)
        graph = graph() if graph is not None else export_onnx(module, (1, in_channels or 1, *tile))
        predictor: Any = (OnnxPredictor(graph, threads=threads) if backend == "onnx" else
                          ov_backend.OpenVinoPredictor(graph, backend, threads=threads, batch_size=batch_size))
        predictor.in_channels = predictor.in_channels or in_channels
        return predictor
    return TorchPredictor(module, threads=threads, compile=backend == "compile")


# ---------------------------------------------------------------- measuring and caching the choice


@dataclass
class BackendMeasurement:
    """What `backend="auto"` measured: median seconds per batch of each eligible candidate, the
    candidates left out and why, and the parity gate of each reduced-precision candidate."""

    seconds: dict[str, float]
    excluded: dict[str, str] = field(default_factory=dict)
    gate: dict[str, dict[str, Any]] = field(default_factory=dict)
    precision: dict[str, str] = field(default_factory=dict)  # candidate -> fp32, bf16 or int8 (what it computes in)

    @property
    def best(self) -> str:
        return min(self.seconds, key=lambda name: self.seconds[name])

    def record(self) -> dict[str, Any]:
        return {"backend": self.best, "precision": self.precision.get(self.best, "fp32"), "seconds": self.seconds,
                "excluded": self.excluded, "gate": self.gate, "precisions": self.precision}


def cached_choice(key: str, measure: Callable[[], BackendMeasurement], cache_dir: Any = None) -> dict[str, Any]:
    """The record cached under `key` in `backends.json`, or `measure()`'s, cached."""
    cache = cache_path(cache_dir)
    try:
        table = json.loads(cache.read_text())
    except (OSError, ValueError):
        table = {}
    if key in table and table[key].get("backend") in BACKENDS:
        return table[key]
    record = measure().record()
    table[key] = record
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1))
        tmp.replace(cache)
    except OSError as e:
        warnings.warn(f"{cache}: cannot cache the backend choice ({e})", stacklevel=2)
    return record


def cache_path(cache_dir: Any = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "unetkit") / "backends.json"


def cached_records(sha: str, cache_dir: Any = None) -> dict[str, dict[str, Any]]:
    """This machine's cached backend choices for weights `sha` (what `unetkit info` shows)."""
    try:
        table = json.loads(cache_path(cache_dir).read_text())
    except (OSError, ValueError):
        return {}
    here = machine_id()
    return {k.split("|", 2)[2]: v for k, v in table.items() if k.startswith(f"{sha}|{here}|")}


def backend_report(sha: str, cache_dir: Any = None) -> dict[str, Any]:
    """This machine's backends for weights `sha` (`unetkit info`): which can run, why the others
    cannot, and the cached automatic choices with their timings, exclusions and parity gates."""
    missing = {b: r for b in ov_backend.PRECISIONS if (r := ov_backend.unavailable(b))}
    return {"machine": machine_id(), "available": available_backends(), "unavailable": missing,
            "auto_choices": cached_records(sha, cache_dir)}


def measure_backends(
    module: nn.Module, tile: tuple[int, ...], batch_size: int = 4, threads: int | None = None,
    candidates: tuple[str, ...] | None = None, repeats: int = 3, sample: np.ndarray | None = None,
    gate_data: GateData | None = None,
) -> BackendMeasurement:
    """Time each candidate on `sample` (default: image-like tiles, `gate.gate_sample`). The first
    candidate that runs (eager torch by default) is the fp32 reference; an fp32 candidate must
    agree with it (max |difference| <= 1e-3), a reduced-precision one must pass the parity gate,
    on `gate_data` (the model's validation sample, against its truth) when given, else on `sample`
    against fp32's labels. OpenVINO candidates that cannot run here are excluded with the reason;
    failures warn."""
    in_channels, _ = module_channels(module)
    if sample is None:
        sample = gate_sample(in_channels or 1, tile, batch_size)
    graph = functools.cache(lambda: export_onnx(module, (1, in_channels or 1, *tile)))  # one export for all engines
    builders = {name: functools.partial(_build, copy.deepcopy(module), name, tile, threads, batch_size, graph)
                for name in candidates or AUTO_CANDIDATES}
    return measure_predictors(builders, sample, repeats, gate_data=gate_data)


def measure_predictors(
    builders: dict[str, Callable[[], Any]], sample: np.ndarray, repeats: int = 3, *,
    gate_data: GateData | None = None, precisions: dict[str, str] | None = None,
    excluded: dict[str, str] | None = None,
) -> BackendMeasurement:
    """`measure_backends` over predictor builders. The first that runs is the reference; the
    candidates in `precisions` (default `REDUCED_PRECISION`: name -> "bf16" / "int8") go through the
    parity gate against fp32: the reference's outputs when it is fp32, else `gate_data.fp32_labels`
    (an int8 export, whose reference is ONNX Runtime running it; without stored fp32 labels such a
    candidate is excluded). `excluded`: candidates the caller already ruled out, with the reason."""
    precisions = REDUCED_PRECISION if precisions is None else precisions
    result = BackendMeasurement({}, excluded=dict(excluded or {}))
    reference: np.ndarray | None = None
    fp32_gate: np.ndarray | None = None  # the fp32 reference's outputs on gate_data.images
    reference_is_fp32 = False
    for name, build in builders.items():
        if name in result.excluded:
            continue
        reason = ov_backend.unavailable(name) if name in ov_backend.PRECISIONS else None
        if reason:
            result.excluded[name] = reason
            continue
        try:
            predictor = build()
            out = predictor(sample)  # warm-up (and compilation)
        except Exception as e:
            result.excluded[name] = f"failed: {type(e).__name__}: {str(e)[:200]}"
            warnings.warn(f"backend {name} unavailable: {type(e).__name__}: {str(e)[:200]}", stacklevel=2)
            continue
        result.precision[name] = precisions.get(name, "fp32")
        if reference is None:
            reference, reference_is_fp32 = out, name not in precisions
            if reference_is_fp32 and gate_data is not None:
                fp32_gate = predictor(gate_data.images)
        elif name in precisions:
            if not reference_is_fp32 and (gate_data is None or gate_data.fp32_labels is None):
                result.excluded[name] = "no fp32 reference to gate against (the model brings no validation sample)"
                continue
            if gate_data is None:
                gate: GateResult = parity_gate(reference, out, precisions[name])
            else:
                gate = parity_gate(fp32_gate, predictor(gate_data.images), precisions[name], gate_data)
            result.gate[name] = gate.to_dict()
            if not gate.passed:
                where = "on the validation sample" if gate_data is not None else "(no validation sample: fp32's labels as the truth)"
                result.excluded[name] = f"parity gate against fp32 {where}: {gate.reason}"
                continue
        elif out.shape != reference.shape or float(np.abs(out - reference).max()) > 1e-3:
            result.excluded[name] = "disagrees with the fp32 reference (max |difference| > 1e-3)"
            warnings.warn(f"backend {name} disagrees with the fp32 reference; not used", stacklevel=2)
            continue
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            predictor(sample)
            runs.append(time.perf_counter() - start)
        result.seconds[name] = float(np.median(runs))
    if not result.seconds:
        raise ConfigError(f"no inference backend works for this model: {result.excluded}")
    return result


# ---------------------------------------------------------------- module helpers


# torch.onnx.export keeps process-wide state ("GLOBALS.in_onnx_export"): two threads exporting at
# once (two predictors built side by side) fail. Every export in unetkit holds this lock.
ONNX_EXPORT_LOCK = threading.Lock()


def export_onnx(module: nn.Module, sample_shape: tuple[int, ...], opset: int = 17) -> bytes:
    """The module as ONNX bytes (TorchScript exporter; batch, height and width dynamic)."""
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with ONNX_EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (torch.zeros(sample_shape),), buffer, input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes}, opset_version=opset, dynamo=False,
        )
    return buffer.getvalue()


def module_channels(module: nn.Module) -> tuple[int | None, int | None]:
    """(in_channels, out_channels) from the module's attributes, else the first convolution's input."""
    cin = getattr(module, "in_channels", None)
    cout = getattr(module, "out_channels", None)
    if cin is None:
        first = next((m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
        cin = first.in_channels if first is not None else None
    return cin, cout


def module_sha256(module: nn.Module) -> str:
    return weights_sha256(module.state_dict())


def machine_id() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}/{os.cpu_count()}cpu/torch{torch.__version__}"


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of `module` with each eval-mode BatchNorm folded into the convolution before it.

    unetkit's own blocks go through `unetkit.models.fuse_for_inference`; for other modules (MONAI,
    plain `nn.Sequential`) it folds only where the order is certain: adjacent children of an
    `nn.Sequential`, and a conv followed by a Sequential that starts with the norm (MONAI's ADN).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    module = fuse_for_inference(module)
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for parent in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(parent._modules)
        for a, b in zip(names[:-1], names[1:], strict=True):
            conv, owner, bn_name = parent._modules[a], parent, b
            nxt = parent._modules[b]
            if isinstance(nxt, nn.Sequential) and len(nxt) and isinstance(nxt[0], bn_types):
                owner, bn_name = nxt, next(iter(nxt._modules))
            bn = owner._modules[bn_name]
            if isinstance(conv, conv_types) and isinstance(bn, bn_types) and bn.track_running_stats:
                parent._modules[a] = fuse_conv_bn_eval(conv, bn)
                owner._modules[bn_name] = nn.Identity()
    return module
