"""`unetkit export --format openvino`: an IR (model.xml + model.bin) + plan that runs like the artifact."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.evaluation_fixtures import tiny_artifact
from tests.export.conftest import CALIBRATED
from tests.export.test_deployed import trained, write_images
from tests.test_cli import assert_one_line_error, run_cli
from unetkit.config import ExportConfig, replace
from unetkit.data.io import read_mask
from unetkit.errors import ArtifactError, ConfigError
from unetkit.evaluation.labelled import load_labelled
from unetkit.export.deployed import DeployedModel, load_model
from unetkit.export.onnx import export_artifact
from unetkit.export.openvino import export_openvino
from unetkit.export.quantize import Int8GateError, quantize_artifact
from unetkit.inference import openvino as ov_backend
from unetkit.inference.files import predict_files

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exported_ir(tmp_path_factory) -> tuple[Path, Path]:
    """One export for the module (compiling is the slow part); tests that change files use `ir`."""
    folder = tmp_path_factory.mktemp("ir")
    artifact = tiny_artifact(folder / "model.unetkit", seed=3, **CALIBRATED)
    result = export_openvino(artifact)
    assert result.model_path == artifact.with_suffix(".xml") and result.max_abs_diff <= 1e-4
    return artifact, result.model_path


@pytest.fixture
def ir(exported_ir, tmp_path) -> tuple[Path, Path]:
    artifact, xml = exported_ir
    for f in (artifact, xml, xml.with_suffix(".bin"), xml.with_name("model.xml.json")):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / artifact.name, tmp_path / xml.name


def test_export_writes_ir_and_plan_and_predict_runs_it_like_the_artifact(ir, tmp_path, rng, monkeypatch):
    artifact, xml = ir
    assert xml.with_suffix(".bin").is_file()
    plan = json.loads(xml.with_name("model.xml.json").read_text())
    assert plan["model_file"] == "model.xml" and plan["weights_file"] == "model.bin" and plan["weights_file_sha256"]
    assert plan["parity"]["max_abs_diff"] <= 1e-4 and plan["openvino"]["version"] != "none"
    gate = plan["openvino"]["bf16_gate"]
    assert gate["measured"] is (ov_backend.unavailable("openvino-bf16") is None) and "passed" in gate

    images = write_images(tmp_path / "images", rng)
    proc = run_cli("predict", str(xml), str(images), "--out", str(tmp_path / "ov"), "--probabilities", "--backend", "openvino")
    assert proc.returncode == 0, proc.stderr
    predict_files(artifact, [images], tmp_path / "torch", probabilities=True, backend="torch", progress=False)
    for name in ("im0", "im1"):
        assert np.array_equal(read_mask(tmp_path / "ov" / f"{name}_mask.png"), read_mask(tmp_path / "torch" / f"{name}_mask.png"))
        probs = tifffile.imread(tmp_path / "ov" / f"{name}_prob.tif")
        assert np.abs(probs - tifffile.imread(tmp_path / "torch" / f"{name}_prob.tif")).max() <= 1e-4

    # auto on an IR measures f32 against bf16 (bf16 behind the gate) and caches the choice
    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path / "cache"))
    model = load_model(xml)
    assert isinstance(model, DeployedModel)
    predictor = model.make_predictor()
    assert isinstance(predictor, ov_backend.OpenVinoPredictor) and predictor.tile_size == (32, 32)
    (record,) = json.loads((tmp_path / "cache" / "backends.json").read_text()).values()
    assert record["backend"] == predictor.backend and "openvino" in record["seconds"]

    proc = run_cli("info", str(xml))  # UNETKIT_CACHE_DIR (set above) reaches the subprocess
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert list(shown.pop("backends_on_this_machine")["auto_choices"].values()) == [record] and shown == plan


def test_an_ir_whose_weights_were_changed_is_refused(ir):
    _, xml = ir
    weights = bytearray(xml.with_suffix(".bin").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    xml.with_suffix(".bin").write_bytes(bytes(weights))
    with pytest.raises(ArtifactError, match=r"model.bin: sha256 .* does not match .* recorded in .*model.xml.json; the weights and the plan are not a pair"):
        load_model(xml)
    xml.with_suffix(".bin").unlink()
    with pytest.raises(ArtifactError, match=r"model.xml: its weights model.bin are missing"):
        load_model(xml)


def test_errors_name_what_to_do(ir, tmp_path, monkeypatch, rng):
    artifact, xml = ir
    images = write_images(tmp_path / "images", rng, sizes=((20, 20),))
    with pytest.raises(ConfigError, match=r"export_openvino writes the f32 IR; int8 .* is quantize_artifact"):
        export_openvino(artifact, config=ExportConfig(format="openvino", int8=True))
    with pytest.raises(ConfigError, match=r"an exported model runs on OpenVINO only \(--backend auto, openvino, "
                       r"openvino-bf16\); backend 'torch' needs the .unetkit artifact"):
        load_model(xml).make_predictor("torch")
    # an install without openvino: `import openvino` fails in the subprocess
    fake = tmp_path / "no-openvino" / "openvino"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: openvino is not installed')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    proc = run_cli("predict", str(artifact), str(images), "--backend", "openvino")
    assert_one_line_error(proc, "backend 'openvino' is not available here: the OpenVINO backend needs openvino: "
                                "pip install 'unetkit[openvino]'; available: auto, torch, onnx, compile")
    assert proc.returncode == 2


def test_int8_ir_by_nncf_is_calibrated_gated_and_runs_like_the_fp32_export(data_and_model, tmp_path, monkeypatch):
    """`export --format openvino --int8`: OpenVINO's own post-training quantization (NNCF) of the fp32
    graph, calibrated on the training keys, gated on the validation key, written as an int8 IR."""
    pytest.importorskip("nncf")
    from unetkit.artifact import update_artifact
    from unetkit.training.finish import validation_sample

    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path / "cache"))
    data, untrained = data_and_model
    artifact = trained(untrained, data)
    _, val = load_labelled(artifact, data, ["24"], progress=False)
    update_artifact(artifact, validation_sample=validation_sample(val, (32, 32)).to_dict())
    config = ExportConfig(format="openvino", int8=True, int8_gate=1.0, calibration_images=4)

    with pytest.raises(Int8GateError, match=r"int8 model refused: labels agree with fp32's on [\d.]+% of the validation "
                                            r"pixels \(< int8_agreement 101.0%\); speed-up x[\d.]+; nothing written"):
        quantize_artifact(artifact, data, config=replace(config, int8_agreement=1.01))
    out = artifact.with_name(f"{artifact.stem}.int8.xml")
    assert not out.exists() and not out.with_suffix(".bin").exists()

    report = quantize_artifact(artifact, data, config=config)
    assert report.written == out and out.with_suffix(".bin").is_file()
    assert report.calibration_keys == ["21", "22", "23"] and report.validation_keys == ["24"]
    assert report.options["engine"] == "openvino" and report.options["quantizer"] == "nncf"
    assert 0.9 <= report.int8["agreement"] <= 1.0 and "label agreement" in report.table()
    assert ("bf16_seconds" in report.extra) == (ov_backend.unavailable("openvino-bf16") is None)
    import openvino as ov

    ops = {op.get_type_name() for op in ov.Core().read_model(str(out)).get_ops()}
    assert "FakeQuantize" in ops and "ConvolutionBackpropData" in ops  # int8 ranges; the transposed convs kept

    int8 = load_model(out)
    assert int8.meta.precision == "int8" and int8.plan["quantization"]["options"]["engine"] == "openvino"
    assert int8.plan["quantization"]["validation"]["agreement"] == report.int8["agreement"]
    predict_files(int8, [data / "images"], tmp_path / "int8", progress=False)  # "auto" on the int8 IR
    predict_files(load_model(export_artifact(artifact).model_path), [data / "images"], tmp_path / "fp32", progress=False)
    masks = sorted((tmp_path / "fp32").glob("*_mask.png"))
    a = np.stack([read_mask(m) for m in masks])
    b = np.stack([read_mask(tmp_path / "int8" / m.name) for m in masks])
    # over whole images, outside the labelled field of view too, where this barely trained model is
    # unsure: agreement varies by CPU (0.959 on an AVX2-only EPYC, whose int8 kernels lack VNNI)
    assert len(masks) == 4 and 0 < a.mean() < 1 and (a == b).mean() >= 0.9
    # in the validation image's field of view (24, labelled pixels) they agree as the gate measured it
    # (its fp32: OpenVINO f32 on the fp32 graph); outside it this barely trained model is unsure
    fov = val[0].labels != 255
    assert masks[3].name.startswith("24") and report.int8["agreement"] >= 0.995
    assert (a[3] == b[3])[fov].mean() == pytest.approx(report.int8["agreement"], abs=2e-3)

    # "auto" timed the f32 hint (the precision the export gated) against the bf16 hint for the layers
    # left in float, the latter behind the int8 gate on the plan's sample against fp32's stored labels
    (record,) = json.loads((tmp_path / "cache" / "backends.json").read_text()).values()
    bf16 = ov_backend.unavailable("openvino-bf16") is None  # a CPU without native bf16 has no bf16 hint
    assert record["precisions"] == {"openvino": "int8"} | ({"openvino-bf16": "int8"} if bf16 else {})
    assert record["precision"] == "int8"
    if bf16:
        gate = record["gate"]["openvino-bf16"]
        assert gate["precision"] == "int8" and gate["basis"].startswith("validation sample: 1 crop(s) of 32x32")
        assert gate["passed"] == ("openvino-bf16" in record["seconds"])
    else:
        assert "openvino-bf16" in record["excluded"]


def test_int8_ir_without_nncf_is_one_line_naming_the_extra(data_and_model, tmp_path, monkeypatch):
    data, model = data_and_model
    fake = tmp_path / "no-nncf" / "nncf"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: nncf is not installed')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    proc = run_cli("export", str(model), "--format", "openvino", "--int8", "--data", str(data))
    assert_one_line_error(proc, "int8 for OpenVINO needs nncf: pip install 'unetkit[openvino-int8]'")
    assert proc.returncode == 2 and not list(model.parent.glob("*.xml"))
