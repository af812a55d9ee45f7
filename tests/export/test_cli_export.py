"""`unetkit export`: files written, and one-line errors."""

from tests.test_cli import assert_one_line_error, run_cli


def test_export_writes_model_and_plan(artifact_path):
    proc = run_cli("export", str(artifact_path), "--format", "onnx", "--tile", "48")
    assert proc.returncode == 0, proc.stderr
    assert "parity: max |dp|" in proc.stdout
    assert artifact_path.with_suffix(".onnx").exists() and artifact_path.with_name("model.onnx.json").exists()


def test_export_records_the_tta_views_asked_for(artifact_path, tmp_path):
    import json

    out = tmp_path / "flips.onnx"
    proc = run_cli("export", str(artifact_path), "--tta-views", "flips", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    tile = json.loads(out.with_name("flips.onnx.json").read_text())["tile"]
    assert (tile["tta"], tile["tta_views"]) == (True, "flips")  # naming the views turns TTA on
    proc = run_cli("export", str(artifact_path), "--tta-views", "mirror", "--no-tta", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    tile = json.loads(out.with_name("flips.onnx.json").read_text())["tile"]
    assert (tile["tta"], tile["tta_views"]) == (False, "mirror")


def test_export_errors_are_one_line(artifact_path, tmp_path, data_and_model):
    assert_one_line_error(run_cli("export", str(tmp_path / "missing.unetkit")), "model artifact not found")
    assert_one_line_error(run_cli("export", str(artifact_path), "--int8"), "--int8 needs --data")
    unknown = run_cli("export", str(artifact_path), "--format", "tflite")  # a choice: refused at parse time
    assert unknown.returncode == 2 and "'tflite' is not one of 'onnx', 'openvino'" in unknown.stderr, unknown.stderr
    data, model = data_and_model
    proc = run_cli("export", str(model), "--int8", "--data", str(data), "--gate", "-1")
    assert_one_line_error(proc, "int8 model refused: validation score drops by")
    assert proc.returncode == 3  # a gate refusal, not a usage error (2)
    assert "ms per tile batch" in proc.stdout and not model.with_name("m.int8.onnx").exists()


def test_export_openvino_int8_from_the_cli(data_and_model):
    """NNCF's int8 IR from the command line: the gate's table on stdout (NNCF's own progress only where stderr is a terminal)."""
    import pytest

    pytest.importorskip("nncf")
    data, model = data_and_model
    refused = run_cli("export", str(model), "--format", "openvino", "--int8", "--data", str(data), "--min-agreement", "1.01")
    assert_one_line_error(refused, "int8 model refused: labels agree with fp32's on")
    assert refused.returncode == 3 and not model.with_name("m.int8.xml").exists()
    # a random model's labels are borderline: this checks the path, not the gate
    proc = run_cli("export", str(model), "--format", "openvino", "--int8", "--data", str(data), "--gate", "1", "--min-agreement", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["fp32", "int8", "delta"] and "engine openvino" in proc.stdout
    assert proc.stdout.rstrip().endswith("wrote " + str(model.with_name("m.int8.xml")))
    assert model.with_name("m.int8.bin").is_file()
