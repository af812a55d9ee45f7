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
from tests.export.test_deployed import write_images
from tests.test_cli import assert_one_line_error, run_cli
from unetkit.config import ExportConfig
from unetkit.data.io import read_mask
from unetkit.errors import ArtifactError, ConfigError
from unetkit.export.deployed import DeployedModel, load_model
from unetkit.export.openvino import export_openvino
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
    with pytest.raises(ConfigError, match=r"--int8 with --format openvino: export the int8 ONNX"):
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
