"""`unetkit calibrate`, `tune-postprocess`, `evaluate --report` and `predict --geojson --coco`."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from tests.evaluation_fixtures import drive_like, tiny_artifact
from tests.test_cli import assert_one_line_error, run_cli
from unetkit.artifact import load_artifact
from unetkit.cli import app
from unetkit.data.rle import rle_to_mask
from unetkit.inference.vectorize import polygons_to_mask


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_calibrate_tune_evaluate_predict(tmp_path):
    data = drive_like(tmp_path / "d", n_images=3, size=(56, 52))
    model = tiny_artifact(tmp_path / "m.unetkit", head_scale=4.0, seed=2)
    tuned = tmp_path / "tuned.unetkit"

    out = invoke("calibrate", str(model), str(data), "--out", str(tuned), "--backend", "torch",
                 "--json", str(tmp_path / "cal.json"))
    cal = json.loads((tmp_path / "cal.json").read_text())
    assert f"ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}" in out
    assert load_artifact(tuned).meta.temperature == cal["temperature"] != 1.0
    assert load_artifact(model).meta.temperature == 1.0

    out = invoke("tune-postprocess", str(tuned), str(data), "--metric", "iou", "--backend", "torch")
    meta = load_artifact(tuned).meta
    assert "iou" in out and meta.temperature == cal["temperature"]  # tuning keeps the calibration
    assert meta.metrics["postprocess_tuning"]["after"] >= meta.metrics["postprocess_tuning"]["before"]

    report = tmp_path / "report.html"
    out = invoke("evaluate", str(tuned), str(data), "--report", str(report), "--worst", "2", "--no-topology",
                 "--backend", "torch", "--json", str(tmp_path / "eval.json"))
    result = json.loads((tmp_path / "eval.json").read_text())
    assert "ECE" in out and result["temperature"] == cal["temperature"]
    assert result["postprocess"] == meta.postprocess
    assert '<section id="worst"' in report.read_text()

    pred = tmp_path / "pred"
    invoke("predict", str(tuned), str(data / "images"), "--out", str(pred), "--geojson", "--coco", "--backend", "torch")
    coco = json.loads((pred / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["vessel"]
    assert len(coco["images"]) == 3
    for image in coco["images"]:
        mask = np.asarray(Image.open(pred / f"{image['file_name']}_mask.png"))
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        decoded = np.zeros(mask.shape, bool)
        for a in anns:
            decoded |= rle_to_mask(a["segmentation"])
        np.testing.assert_array_equal(decoded, mask == 1)
        features = json.loads((pred / f"{image['file_name']}.geojson").read_text())["features"]
        rebuilt = np.zeros(mask.shape, bool)
        for f in features:
            rings = [np.asarray(r) for r in f["geometry"]["coordinates"]]
            rebuilt |= polygons_to_mask(rings, mask.shape)
        np.testing.assert_array_equal(rebuilt, mask == 1)


def test_calibrate_unknown_key_is_one_line_error(tmp_path):
    data = drive_like(tmp_path / "d", n_images=2)
    model = tiny_artifact(tmp_path / "m.unetkit")
    assert_one_line_error(run_cli("calibrate", str(model), str(data), "--keys", "99", "--backend", "torch"),
                          "no samples with keys ['99']")


def test_tune_tta_decides_and_records_and_refuses_bad_input_in_one_line(tmp_path):
    data = drive_like(tmp_path / "d", n_images=3)
    model = tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3)
    out = invoke("tune-tta", str(model), str(data), "--out", str(tmp_path / "t.unetkit"), "--backend", "torch",
                 "--json", str(tmp_path / "tta.json"))
    s = json.loads((tmp_path / "tta.json").read_text())
    assert f"plain {s['dice_plain']:.4f}, TTA (dihedral views) {s['dice_tta']:.4f} on 3 images" in out
    assert s["gate"]["reason"] in out and f"TTA {'on' if s['tta'] else 'off'}" in out
    assert f"recalibrated with T {s['temperature']:.3f}: {s['ece_tta']:.4f}" in out
    meta = load_artifact(tmp_path / "t.unetkit").meta
    assert meta.tta == s["tta"] and meta.tta_temperature == s["temperature"]
    assert_one_line_error(run_cli("tune-tta", str(model), str(data), "--keys", "99", "--backend", "torch"),
                          "no samples with keys ['99']")
    bad = run_cli("train", str(data), "--tta", "sometimes")  # a usage error, as click words them
    assert bad.returncode == 2 and "'sometimes' is not one of 'auto', 'on', 'off'" in bad.stderr


def test_tune_postprocess_takes_a_dice_guard_and_refuses_a_negative_one(tmp_path):
    data = drive_like(tmp_path / "d", n_images=3)
    model = tiny_artifact(tmp_path / "m.unetkit", head_scale=3.0, seed=3)
    invoke("tune-postprocess", str(model), str(data), "--metric", "rand", "--dice-guard", "0.02", "--backend", "torch",
           "--out", str(tmp_path / "t.unetkit"), "--json", str(tmp_path / "pp.json"))
    s = json.loads((tmp_path / "pp.json").read_text())
    assert s["dice_guard"] == 0.02 and s["metric"] == "rand"
    assert load_artifact(tmp_path / "t.unetkit").meta.metrics["postprocess_tuning"]["dice_guard"] == 0.02
    bad = run_cli("tune-postprocess", str(model), str(data), "--dice-guard", "-0.1")  # a usage error, as click words them
    assert bad.returncode == 2 and "Invalid value for '--dice-guard'" in bad.stderr
    assert "postprocess_tuning" not in load_artifact(model).meta.metrics  # tuned in place: nothing written
