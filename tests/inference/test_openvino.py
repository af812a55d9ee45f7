"""The OpenVINO predictor, the parity gate and the automatic choice among backends."""

import json
import sys

import numpy as np
import pytest
import torch

from unetkit.errors import ConfigError
from unetkit.inference import backends
from unetkit.inference import openvino as ov_backend
from unetkit.inference.backends import TorchPredictor, export_onnx, make_predictor, measure_predictors
from unetkit.inference.gate import gate_sample, parity_gate

pytest.importorskip("openvino")


@pytest.fixture
def batch(rng):
    return rng.uniform(0, 1, (5, 2, 20, 28)).astype(np.float32)


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    from unetkit.config import ModelConfig
    from unetkit.models import build_model

    torch.manual_seed(seed)
    return build_model(ModelConfig(in_channels=3, out_channels=2, base_width=8, depth=2)).eval()


@pytest.mark.parametrize("batch_size", [1, 4])  # latency (one request) and throughput (batch split across streams)
def test_f32_matches_torch(net, batch, batch_size):
    predictor = ov_backend.OpenVinoPredictor(export_onnx(net, (1, 2, 20, 28)), "openvino", batch_size=batch_size)
    want = TorchPredictor(net)(batch)
    for x in (batch, batch[:1], batch[:, :, :13, :17]):  # uneven splits, odd sizes: shapes stay dynamic
        out = predictor(x)
        assert out.dtype == np.float32 and out.shape == (len(x), 3, *x.shape[2:])
        np.testing.assert_allclose(out, TorchPredictor(net)(x), atol=1e-4)
    assert (predictor.in_channels, predictor.out_channels, predictor.precision) == (2, 3, "f32")
    np.testing.assert_allclose(predictor(batch), want, atol=1e-4)


def test_make_predictor_openvino_on_a_unet_and_bf16_within_the_gate():
    net = tiny_unet()
    sample = gate_sample(3, (32, 32), 4, mean=(0.0,), std=(1.0,))
    want = TorchPredictor(net)(sample)
    f32 = make_predictor(net, "openvino", tile_shape=(32, 32))
    assert isinstance(f32, ov_backend.OpenVinoPredictor)
    np.testing.assert_allclose(f32(sample), want, atol=1e-4)
    if ov_backend.unavailable("openvino-bf16"):
        pytest.skip("this CPU has no bf16 in OpenVINO")
    bf16 = make_predictor(net, "openvino-bf16", tile_shape=(32, 32))
    gate = parity_gate(want, bf16(sample), "bf16")
    assert gate.passed, gate
    assert gate.max_abs_diff > 0  # it did run in bf16


def test_parity_gate_thresholds():
    ref = np.zeros((1, 2, 40, 50), np.float32)
    ref[:, 1, 10:30, 10:40] = 1.0  # 600 foreground pixels of 2000
    assert parity_gate(ref, ref + 1e-3, "bf16").passed
    flipped = ref.copy()
    flipped[:, 1, 10:11, 10:14] = 0.0  # 4 labels flip: agreement 99.8 %, Dice delta 0.0033
    gate = parity_gate(ref, flipped, "bf16")
    assert not gate.passed and gate.agreement == pytest.approx(0.998) and gate.reason == "Dice delta 0.0033 > 0.002"
    assert parity_gate(ref, flipped, "int8").passed  # int8's gate allows 0.005
    flipped[:, 1, 10:14, 10:14] = 0.0  # 16 flips: agreement 99.2 %
    assert parity_gate(ref, flipped, "int8").reason.startswith("label agreement 99.20% < 99.5%")
    assert not parity_gate(ref, np.full_like(ref, np.nan), "bf16").passed


class Clock:
    """A fake perf_counter that predictors advance by their simulated cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake(clock: Clock, seconds: float, out: np.ndarray):
    def predictor(batch):
        clock.now += seconds
        return out

    return lambda: predictor


def test_auto_picks_the_fastest_eligible_candidate_and_gates_bf16(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(backends.time, "perf_counter", clock)
    monkeypatch.setattr(ov_backend, "unavailable", lambda backend: None)
    ref = np.zeros((2, 2, 16, 16), np.float32)
    ref[:, 1, :8] = 1.0
    bad = ref.copy()
    bad[:, 1, :4] = 0.0  # a quarter of the labels flipped
    sample = np.zeros((2, 1, 16, 16), np.float32)
    good = {"torch": fake(clock, 4.0, ref), "onnx": fake(clock, 2.0, ref), "openvino": fake(clock, 1.5, ref),
            "openvino-bf16": fake(clock, 0.5, ref + 0.01)}
    m = measure_predictors(good, sample, repeats=3)
    assert m.best == "openvino-bf16" and m.seconds["openvino-bf16"] == pytest.approx(0.5)
    assert m.gate["openvino-bf16"]["passed"] and not m.excluded

    m = measure_predictors(good | {"openvino-bf16": fake(clock, 0.5, bad)}, sample, repeats=3)
    assert m.best == "openvino" and "openvino-bf16" not in m.seconds
    assert m.excluded["openvino-bf16"].startswith(
        "parity gate against fp32 (no validation sample: fp32's labels as the truth): label agreement 75.00% < 99.5%")
    assert m.record()["gate"]["openvino-bf16"]["agreement"] == 0.75

    m = measure_predictors(good | {"onnx": fake(clock, 0.1, ref + 0.5)}, sample, repeats=3)  # fp32 that disagrees
    assert m.best == "openvino-bf16" and "disagrees" in m.excluded["onnx"]


def test_auto_without_bf16_records_why_and_info_shows_it(net, monkeypatch, tmp_path):
    monkeypatch.setattr(ov_backend, "cpu_capabilities", lambda: ("FP32", "INT8"))
    with pytest.raises(ConfigError, match=r"backend 'openvino-bf16' is not available here: this CPU has no bf16 "
                       r"kernels in OpenVINO \(OPTIMIZATION_CAPABILITIES: FP32, INT8\); available: auto, torch, "
                       r"onnx, compile, openvino$"):
        make_predictor(net, "openvino-bf16")
    monkeypatch.setattr(backends, "AUTO_CANDIDATES", ("torch", "openvino", "openvino-bf16"))
    make_predictor(net, "auto", tile_shape=(16, 16), batch_size=2, cache_dir=tmp_path)
    (record,) = json.loads((tmp_path / "backends.json").read_text()).values()
    assert record["backend"] in ("torch", "openvino") and set(record["seconds"]) == {"torch", "openvino"}
    assert record["excluded"] == {"openvino-bf16": "this CPU has no bf16 kernels in OpenVINO (OPTIMIZATION_CAPABILITIES: FP32, INT8)"}
    report = backends.backend_report(backends.module_sha256(net), tmp_path)
    assert report["unavailable"] == {"openvino-bf16": record["excluded"]["openvino-bf16"]}
    assert list(report["auto_choices"].values()) == [record]


def test_missing_openvino_names_the_extra(net, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    ov_backend.cpu_capabilities.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"^backend 'openvino' is not available here: the OpenVINO backend needs "
                           r"openvino: pip install 'unetkit\[openvino\]'; available: auto, torch, onnx, compile$"):
            make_predictor(net, "openvino")
        with pytest.raises(ConfigError, match=r"pip install 'unetkit\[openvino\]'"):
            ov_backend.OpenVinoPredictor(b"", "openvino")
        assert backends.available_backends() == ["auto", "torch", "onnx", "compile"]
    finally:
        ov_backend.cpu_capabilities.cache_clear()



SIGNAL_AFTER_BF16 = """
import ctypes, signal, sys
import numpy as np
from unetkit.inference import openvino as ov_backend

class StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

def altstack():
    s = StackT()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(s))
    return s.ss_size

before = altstack()
p = ov_backend.OpenVinoPredictor(sys.argv[1], "openvino-bf16", batch_size=1)
p(np.ones((1, 2, 20, 28), np.float32))
caught = []
signal.signal(signal.SIGINT, lambda *_: caught.append(1))
signal.raise_signal(signal.SIGINT)
print(before < ov_backend.SIGNAL_STACK_BYTES <= altstack(), len(caught), ov_backend.roomy_signal_stack())
"""


def test_a_bf16_predictor_makes_room_on_the_signal_stack(net, tmp_path):
    # OpenVINO's AMX kernels enlarge every signal frame; faulthandler's alternate stack (sized at start)
    # overflowed: with pytest's faulthandler, the SIGINT of a training test after a bf16 test
    # segfaulted the worker. The predictor swaps in a larger alternate stack (once).
    import subprocess

    if ov_backend.unavailable("openvino-bf16"):
        pytest.skip("this CPU has no bf16 in OpenVINO")
    model = tmp_path / "m.onnx"
    model.write_bytes(export_onnx(net, (1, 2, 20, 28)))
    run = subprocess.run([sys.executable, "-X", "faulthandler", "-c", SIGNAL_AFTER_BF16, str(model)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == ["True", "1", "False"], run.stderr[-2000:]
