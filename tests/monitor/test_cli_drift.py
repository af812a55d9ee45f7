"""`unetkit drift`: exit 0 without drift, 1 with drift, 2 for a user error (one line on stderr)."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from tests.monitor.conftest import blurred, textured_images
from tests.serve.samples import make_artifact
from unetkit.artifact import read_meta
from unetkit.cli import main
from unetkit.data.io import write_png
from unetkit.monitor.measure import add_baseline


def write_folder(folder, images):
    for i, image in enumerate(images):
        write_png(folder / f"img_{i:02d}.png", np.moveaxis(np.clip(image, 0, 255).round().astype(np.uint8), 0, -1))
    return folder


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["unetkit", "drift", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-cli")
    reference = write_folder(root / "reference", textured_images(30, seed=1))
    normal = textured_images(16, seed=2)
    ready = make_artifact(root / "ready.unetkit", seed=0)
    add_baseline(ready, reference, backend="torch")
    return {"model": make_artifact(root / "model.unetkit", seed=0), "bare": make_artifact(root / "bare.unetkit", seed=0),
            "ready": ready,
            "reference": reference, "fresh": write_folder(root / "fresh", normal),
            "blurred": write_folder(root / "blurred", [blurred(im) for im in normal]), "root": root}


def test_baseline_then_no_drift_then_drift(folders, monkeypatch, capsys):
    model = str(folders["model"])
    code, out, _ = run(monkeypatch, capsys, model, "--baseline-from", str(folders["reference"]), "--backend", "torch")
    assert code == 0 and "drift baseline: 30 images, model outputs on 12," in out and "wrote the drift baseline" in out
    assert read_meta(model).drift_baseline["input_images"] == 30  # written atomically, hashes verified on read

    code, out, _ = run(monkeypatch, capsys, model, str(folders["fresh"]), "--backend", "torch")
    assert code == 0, out
    assert "PSI" in out and "p-value" in out and "fraction.vessel" in out and "no drift: score" in out

    report = folders["root"] / "report.json"
    code, out, _ = run(monkeypatch, capsys, model, str(folders["blurred"]), "--backend", "torch", "--json", str(report))
    assert code == 1 and "DRIFT: score" in out and "only 16 images" in out
    data = json.loads(report.read_text())
    assert data["drifted"] is True and data["images"] == 16 and data["output_images"] == 16
    assert next(f for f in data["features"] if f["name"] == "sharpness")["drifted"] is True

    code, out, _ = run(monkeypatch, capsys, model, str(folders["blurred"]), "--no-outputs")
    assert code == 1 and "confidence" not in out and "sharpness" in out


def test_outputs_left_out_when_the_calibration_changed(folders, monkeypatch, capsys):
    from unetkit.artifact import update_artifact

    model = shutil.copy(folders["ready"], folders["root"] / "calibrated.unetkit")
    update_artifact(model, temperature=1.8)
    code, out, _ = run(monkeypatch, capsys, str(model), str(folders["fresh"]), "--backend", "torch")
    assert code == 0 and "note: output features left out: the model's temperature changed" in out.replace("\n", " ")
    assert "confidence" not in out


@pytest.mark.parametrize(("args", "message"), [
    (("{bare}", "{fresh}"), "bare.unetkit: drift_baseline: the model has no drift baseline; add one with"),
    (("{ready}", "{root}/nowhere"), "nowhere: no such file or folder"),
    (("{ready}", "{fresh}", "--threshold", "0"), "--threshold 0.0: expected a positive PSI value"),
    (("{ready}",), "give FOLDER (new images) to compare, or --baseline-from DATA"),
    (("{root}/missing.unetkit", "{fresh}"), "missing.unetkit: model artifact not found"),
])
def test_user_errors_exit_2_with_one_line(folders, monkeypatch, capsys, args, message):
    code, _, err = run(monkeypatch, capsys, *(a.format(**folders) for a in args))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and message in lines[0], err


@pytest.fixture(scope="module")
def exported(folders):
    """`ready` (with a baseline) and `bare` (without) exported to ONNX: their plans carry the artifact's baseline."""
    from unetkit.export.onnx import export_artifact

    return {name: export_artifact(folders[name]).model_path for name in ("ready", "bare")}


def test_an_exported_model_is_compared_with_the_baseline_its_plan_carries(folders, exported, monkeypatch, capsys):
    reports = {}
    for name, model in (("artifact", folders["ready"]), ("onnx", exported["ready"])):
        path = folders["root"] / f"{name}.json"
        code, out, _ = run(monkeypatch, capsys, str(model), str(folders["blurred"]), "--json", str(path))
        assert code == 1 and "DRIFT: score" in out and "output features left out" not in out, out
        reports[name] = {f["name"]: f for f in json.loads(path.read_text())["features"]}
    assert reports["onnx"].keys() == reports["artifact"].keys() and "confidence" in reports["onnx"]
    for name, feature in reports["artifact"].items():  # same baseline, same images; outputs from ONNX Runtime
        assert reports["onnx"][name]["psi"] == pytest.approx(feature["psi"], abs=0.02), name
        assert reports["onnx"][name]["drifted"] == feature["drifted"], name


def test_an_exported_model_without_a_baseline_or_asked_to_store_one_is_one_line(folders, exported, monkeypatch, capsys):
    for args, message in (
        ((str(exported["bare"]), str(folders["fresh"])), "bare.onnx: its inference plan carries no drift baseline"),
        ((str(exported["ready"]), "--baseline-from", str(folders["reference"])),
         "ready.onnx: --baseline-from stores the baseline in a model artifact (.unetkit)"),
    ):
        code, _, err = run(monkeypatch, capsys, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], err
