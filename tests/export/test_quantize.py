"""int8: calibrated on training images, gated on validation scores; refused means nothing written."""

import json

import numpy as np
import pytest

from tests.evaluation_fixtures import TINY, drive_like, tiny_artifact
from unetkit.artifact import load_artifact
from unetkit.config import DataConfig, ExportConfig, TrainConfig, replace, to_dict
from unetkit.errors import ConfigError
from unetkit.export.onnx import onnx_session
from unetkit.export.quantize import (
    Int8GateError,
    QuantOptions,
    calibration_tiles,
    quantize_artifact,
    split_keys,
)


def test_split_keys_follow_the_artifacts_recorded_split(data_and_model):
    data, model = data_and_model
    assert split_keys(load_artifact(model), data) == (["21", "22", "23"], ["24"])


def test_gate_refuses_when_impossibly_strict_and_writes_when_loose(data_and_model):
    data, model = data_and_model
    out = model.parent / "m.int8.onnx"
    strict = ExportConfig(int8=True, int8_gate=-1.0, calibration_images=4)
    with pytest.raises(Int8GateError, match=r"int8 model refused: validation score drops by .* speed-up x[\d.]+; nothing written") as e:
        quantize_artifact(model, data, config=strict)
    report = e.value.report
    assert report.written is None and not out.exists() and not out.with_name(out.name + ".json").exists()
    assert report.calibration_keys == ["21", "22", "23"] and report.validation_keys == ["24"]
    assert {"mean_dice_foreground", "mean_iou"} <= report.fp32.keys() and report.fp32_seconds > 0 < report.int8_seconds
    assert "ms per tile batch" in report.table() and "label agreement" in report.table()
    assert 0.5 < report.int8["agreement"] <= 1.0

    loose = ExportConfig(int8=True, int8_gate=1.0, int8_agreement=0.0, calibration_images=4)  # a random model: labels are borderline
    report = quantize_artifact(model, data, config=loose)
    assert report.written == out and out.exists()
    plan = json.loads(out.with_name(out.name + ".json").read_text())
    assert plan["precision"] == "int8" and plan["tile"]["activation"] == "none"
    assert plan["quantization"]["validation"]["keys"] == ["24"] and plan["quantization"]["options"]["format"] == "qdq"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "Softmax" in ops
    # the upsampling is quantized: no float ConvTranspose left, DepthToSpace between quantized convs
    assert "ConvTranspose" not in ops and "DepthToSpace" in ops


def test_qoperator_format_and_key_overlap(data_and_model):
    data, model = data_and_model
    report = quantize_artifact(model, data, model.parent / "q.onnx", ExportConfig(int8=True, int8_gate=1.0, int8_agreement=0.0, calibration_images=4),
                               options=QuantOptions(format="qoperator", exclude_first_last=True))
    import onnx

    assert "QLinearConv" in {n.op_type for n in onnx.load(str(report.written)).graph.node}
    with pytest.raises(ConfigError, match=r"calibration keys and validation keys overlap \(\['24'\]\)"):
        quantize_artifact(model, data, keys=["23", "24"], val_keys=["24"])


def test_calibration_tiles_cover_small_images(rng):
    images = [rng.uniform(0, 255, (3, 20, 50)).astype(np.float32), rng.uniform(0, 255, (3, 40, 40)).astype(np.float32)]
    tiles = calibration_tiles(images, (32, 32), 5)
    assert tiles.shape == (5, 3, 32, 32) and tiles.dtype == np.float32
    assert np.isin(tiles[1], images[1]).all()


def test_shuffle_up_computes_exactly_what_the_transposed_conv_computes():
    import torch
    from torch import nn

    from unetkit.export.onnx import ShuffleUp, shuffle_upsampling

    torch.manual_seed(0)
    for bias in (True, False):
        t = nn.ConvTranspose2d(6, 5, 2, stride=2, bias=bias)
        x = torch.randn(3, 6, 7, 9)
        torch.testing.assert_close(ShuffleUp(t)(x), t(x), atol=1e-5, rtol=1e-5)
    net = nn.Sequential(nn.ConvTranspose2d(4, 4, 2, stride=2), nn.ConvTranspose2d(4, 4, 3, stride=2),
                        nn.Sequential(nn.ConvTranspose2d(4, 2, 2, stride=2, padding=0)))
    x = torch.randn(1, 4, 5, 5)
    expected = net(x)
    shuffle_upsampling(net)
    assert isinstance(net[0], ShuffleUp) and isinstance(net[2][0], ShuffleUp)
    assert isinstance(net[1], nn.ConvTranspose2d)  # a 3x3 kernel overlaps: left as it is
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


def test_an_input_standardizing_model_quantizes_and_int8_stays_blind_to_relighting(tmp_path, rng):
    """Per-image input standardization (`model.input_norm`) stays in float ahead of the quantized convolutions, so the int8
    model, like the fp32 one, gives a relit image (another exposure and colour cast) the same labels."""
    import onnx

    data = drive_like(tmp_path / "d", n_images=4, size=(56, 52))
    train_config = to_dict(TrainConfig(data=DataConfig(data=str(data), val_keys=("24",))))
    model = tiny_artifact(tmp_path / "m.unetkit", seed=2, head_scale=4.0, train_config=train_config,
                          model=replace(TINY, input_norm="image"))
    report = quantize_artifact(model, data, config=ExportConfig(int8=True, int8_gate=1.0, int8_agreement=0.0,
                                                                calibration_images=4))
    ops = {n.op_type for n in onnx.load(str(report.written)).graph.node}
    assert "QuantizeLinear" in ops and "ReduceMean" in ops
    session = onnx_session(report.written)
    x = rng.uniform(40, 200, (1, 3, 48, 40)).astype(np.float32)
    relit = (x * np.array([0.5, 0.8, 1.4]).reshape(1, 3, 1, 1) + np.array([30, -20, 5]).reshape(1, 3, 1, 1)).astype(np.float32)
    out, out_relit = (session.run(None, {"image": v})[0] for v in (x, relit))
    assert (out.argmax(1) == out_relit.argmax(1)).mean() >= 0.99
    assert np.abs(out - out_relit).max() <= 0.05 * np.abs(out).max()
