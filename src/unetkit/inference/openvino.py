"""OpenVINO predictor: an ONNX graph (bytes or file) or an OpenVINO IR (`model.xml`) compiled for the CPU.

Backend names map to the CPU plugin's inference precision: "openvino" runs f32, "openvino-bf16"
runs bf16 (`INFERENCE_PRECISION_HINT`; AMX / AVX512-BF16 kernels). f32 is set explicitly: on a
CPU with bf16, OpenVINO's own default is bf16. An int8 QDQ graph (`unetkit export --int8`) runs in
int8 under either name (OpenVINO folds the quantize/dequantize pairs into int8 kernels).

Throughput on few cores: with an expected batch of 2 or more tiles the model is compiled with
`PERFORMANCE_HINT=THROUGHPUT` (OpenVINO picks the streams; on 2 cores 2 streams of 1 thread) and
each call splits its batch across that many asynchronous infer requests; a batch of one tile
compiles for latency (one stream, all threads). Shapes stay dynamic, so any tile size and batch run.

`openvino` is optional (`pip install 'unetkit[openvino]'`); it is imported when a predictor is built.
"""

from __future__ import annotations

import functools
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.errors import ConfigError

INSTALL_HINT = "pip install 'unetkit[openvino]'"
PRECISIONS = {"openvino": "f32", "openvino-bf16": "bf16"}  # backend name -> INFERENCE_PRECISION_HINT


def require_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise ConfigError(f"the OpenVINO backend needs openvino: {INSTALL_HINT}") from None
    return openvino


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES (e.g. FP32, BF16, INT8); raises ConfigError without openvino."""
    ov = require_openvino()
    return tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def unavailable(backend: str) -> str | None:
    """Why `backend` ("openvino", "openvino-bf16") cannot run here, or None when it can."""
    try:
        caps = cpu_capabilities()
    except ConfigError as e:
        return str(e)
    except Exception as e:  # pragma: no cover - a broken install
        return f"openvino does not start: {type(e).__name__}: {str(e)[:200]}"
    if PRECISIONS[backend] == "bf16" and "BF16" not in caps:
        return f"this CPU has no bf16 kernels in OpenVINO (OPTIMIZATION_CAPABILITIES: {', '.join(caps)})"
    return None


SIGNAL_STACK_BYTES = 1 << 18
_signal_stacks: list[Any] = []  # alternate signal stacks installed here (kept alive for the process)


def roomy_signal_stack() -> bool:
    """Give the main thread's alternate signal stack, if it has one, room for AMX state.

    OpenVINO's bf16/int8 kernels ask the kernel for AMX, after which every signal frame carries
    ~8 KB of tile state. faulthandler (on under pytest, or `python -X faulthandler`) handles
    signals on an alternate stack sized before that; a Python-handled signal (Ctrl-C) then
    overflowed it and segfaulted. Replaces a smaller alternate stack by a 256 KB one; returns
    whether it did. Process-level and idempotent; a thread without an alternate stack is left alone.
    """
    import ctypes
    import threading

    if threading.current_thread() is not threading.main_thread():
        return False

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        current = StackT()
        if libc.sigaltstack(None, ctypes.byref(current)) != 0:
            return False
        disabled = 2  # SS_DISABLE
        if current.ss_flags & disabled or current.ss_size >= SIGNAL_STACK_BYTES:
            return False
        buffer = ctypes.create_string_buffer(SIGNAL_STACK_BYTES)
        roomy = StackT(ctypes.cast(buffer, ctypes.c_void_p), 0, SIGNAL_STACK_BYTES)
        if libc.sigaltstack(ctypes.byref(roomy), None) != 0:
            return False
    except (OSError, AttributeError):  # not Linux/glibc
        return False
    _signal_stacks.append(buffer)
    return True


def openvino_version() -> str:
    try:
        from importlib.metadata import version

        return version("openvino")
    except Exception:
        return "none"


class OpenVinoPredictor:
    """A model run by OpenVINO on the CPU: `batch (N, C, h, w) float32 -> (N, K, h, w) float32`.

    `model`: ONNX bytes, an `.onnx` file, an IR `.xml` file (its `.bin` beside it) or an
    `openvino.Model`. `backend`:
    "openvino" (f32) or "openvino-bf16". Returns the output named `output`; by default "logits"
    when the graph has one, else the first. `batch_size` is the batch the caller will mostly send
    (it selects throughput or latency compilation); `threads` caps OpenVINO's threads.
    """

    def __init__(
        self, model: str | Path | bytes | Any, backend: str = "openvino", *, threads: int | None = None,
        output: str | None = None, batch_size: int = 4,
    ) -> None:
        if backend not in PRECISIONS:
            raise ConfigError(f"OpenVinoPredictor: backend '{backend}'; expected one of {list(PRECISIONS)}")
        ov = require_openvino()
        reason = unavailable(backend)
        if reason:
            raise ConfigError(f"backend '{backend}': {reason}")
        core = ov.Core()
        if isinstance(model, bytes):
            graph = ov.convert_model(io.BytesIO(model))
        elif isinstance(model, (str, Path)):
            graph = core.read_model(str(model))
        else:
            graph = model  # an `openvino.Model` already converted
        names = [n for o in graph.outputs for n in sorted(o.get_names())]
        name = output or ("logits" if "logits" in names else graph.outputs[0].get_any_name())
        if name not in names:
            raise ConfigError(f"OpenVINO model has no output '{name}'; it has {names}")
        self.backend, self.precision = backend, PRECISIONS[backend]
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision,
                                  "PERFORMANCE_HINT": "THROUGHPUT" if batch_size >= 2 else "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(graph, "CPU", config)
        roomy_signal_stack()
        self.output = self.compiled.output(name)
        self.streams = max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
        self.lock = threading.Lock()  # the infer requests are this predictor's; one call uses them at a time
        inp, out = graph.inputs[0].get_partial_shape(), graph.outputs[0].get_partial_shape()
        self.in_channels = inp[1].get_length() if inp.rank.is_static and inp[1].is_static else None
        self.out_channels = out[1].get_length() if out.rank.is_static and out[1].is_static else None
        self.tile_size: tuple[int, int] | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        chunks = np.array_split(x, min(self.streams, len(x))) if len(x) else [x]
        with self.lock:
            used = self.requests[: len(chunks)]
            for request, chunk in zip(used, chunks, strict=True):
                request.start_async({0: chunk}, share_inputs=True)
            for request in used:
                request.wait()
            # copies: each request reuses its output buffer
            return np.concatenate([request.get_tensor(self.output).data for request in used]).astype(np.float32, copy=False)
