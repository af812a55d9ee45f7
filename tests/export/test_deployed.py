"""An exported model (`model.onnx` + plan) runs and is scored like the artifact it came from."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from tests.evaluation_fixtures import drive_like, tiny_artifact
from tests.export.conftest import CALIBRATED
from tests.test_cli import assert_one_line_error, engine_tilings, run_cli
from unetkit.artifact import load_artifact, save_artifact, update_artifact
from unetkit.config import ExportConfig, TileConfig, replace
from unetkit.data.io import read_mask, write_png
from unetkit.errors import ArtifactError, ConfigError
from unetkit.evaluation.evaluate import evaluate_model
from unetkit.evaluation.labelled import load_labelled
from unetkit.export.deployed import DeployedModel, load_model
from unetkit.export.onnx import export_artifact
from unetkit.export.quantize import quantize_artifact
from unetkit.inference.files import predict_files
from unetkit.training.finish import validation_sample

POSTPROCESS = {"min_size": [0, 5], "fill_holes": [False, True]}
DATA_SPEC = {"classes": [{"name": "background", "value": 0, "color": [0, 0, 0]},
                         {"name": "vessel", "value": 255, "color": [230, 25, 75]}], "ignore_values": []}


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path]:
    """(artifact with calibration, postprocessing and a data spec; its fp32 export)."""
    artifact = tiny_artifact(tmp_path / "model.unetkit", seed=3, postprocess=POSTPROCESS, data_spec=DATA_SPEC,
                             class_colors=((0, 0, 0), (230, 25, 75)), **CALIBRATED)
    return artifact, export_artifact(artifact).model_path


def write_images(folder: Path, rng: np.random.Generator, sizes=((70, 61), (29, 40))) -> Path:
    """RGB uint8 PNGs larger and smaller than the 32-pixel tile (blending, padding)."""
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = 127 + 80 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
        image = np.clip(smooth[..., None] + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        write_png(folder / f"im{i}.png", image)
    return folder


def trained(artifact: Path, data: Path, keys=("21", "22", "23"), steps: int = 200) -> Path:
    """The artifact's network fitted to the training images by full-image Adam steps (a few CPU
    seconds): confident, image-driven decisions like a trained model's. A random network has many
    pixels near the decision boundary, where int8 rounding flips labels (97.8% agreement here)."""
    art, samples = load_labelled(artifact, data, list(keys), progress=False)
    x = torch.from_numpy(np.stack([s.image for s in samples]))
    y = torch.from_numpy(np.stack([s.labels for s in samples]).astype(np.int64))
    pipeline = art.pipeline_module().train()
    optimizer = torch.optim.Adam(pipeline.net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(pipeline(x), y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    return save_artifact(artifact.with_name("trained.unetkit"), pipeline.net.eval(), art.meta)


def numbers(value, path=""):
    """Every number in a JSON value, keyed by where it is."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in numbers(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numbers(item, f"{path}[{i}]").items()}
    return {path: float(value)} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


def test_model_and_plan_stand_in_for_the_artifact(exported):
    artifact, onnx = exported
    meta = load_artifact(artifact).meta
    model = load_model(onnx)
    assert isinstance(model, DeployedModel) and load_model(artifact).meta == meta
    assert model.meta.class_names == meta.class_names and model.meta.colors() == meta.colors()
    assert model.meta.postprocess == POSTPROCESS and model.meta.data_spec == DATA_SPEC
    assert (model.meta.temperature, model.meta.in_channels, model.meta.precision) == (1.7, 3, "fp32")
    assert model.tile == TileConfig(tile_size=(32, 32), activation="none")
    # the settings given override the plan, also where they equal TileConfig's defaults; the
    # graph always outputs probabilities
    assert model.tile_config() == model.tile
    assert model.tile_config({"tile_size": (48, 48), "tta": True, "overlap": 0.25}) == TileConfig(
        tile_size=(48, 48), tta=True, activation="none")
    with pytest.raises(ConfigError, match="outputs probabilities .* cannot be run with activation 'softmax'"):
        model.tile_config({"activation": "softmax"})
    with pytest.raises(ConfigError, match="TileConfig: unknown key 'overlapp'"):
        model.tile_config({"overlapp": 0.5})
    predictor = model.make_predictor()
    assert predictor.output_name == "probabilities" and predictor.in_channels == 3 and predictor.tile_size == (32, 32)
    with pytest.raises(ConfigError, match=r"model.onnx: an exported model runs on ONNX Runtime or OpenVINO only .* backend 'torch' needs the .unetkit artifact"):
        model.make_predictor("torch")


def test_plan_that_does_not_describe_the_graph_is_refused(exported):
    _, onnx = exported
    plan_file = onnx.with_name("model.onnx.json")
    plan = json.loads(plan_file.read_text())
    plan_file.write_text(json.dumps(plan | {"input": plan["input"] | {"channels": 1}}))
    with pytest.raises(ArtifactError, match=r"model.onnx.json: records 1 input channels but .*model.onnx has 3; .*not a pair"):
        load_model(onnx).make_predictor()
    del plan["classes"]
    plan_file.write_text(json.dumps(plan))
    with pytest.raises(ConfigError, match=r"model.onnx.json: the inference plan has no 'classes' field; write both with `unetkit export"):
        load_model(onnx)


def test_a_plan_says_the_oldest_reader_that_predicts_it_right_and_a_newer_one_is_refused(exported, tmp_path):
    """A version 1 reader ignores multi-scale and the means' temperatures: a plan that needs them says
    version 2, so such a reader refuses it instead of predicting something else; other plans stay 1."""
    artifact, onnx = exported
    assert json.loads(onnx.with_name("model.onnx.json").read_text())["version"] == 1
    for i, change in enumerate(({"tta": True, "tta_temperature": 0.8}, {"resolution": 0.75,
                                "resolutions": (0.5, 0.75, 1.0)}, {"resolutions_temperature": 0.9})):
        copy = Path(shutil.copyfile(artifact, tmp_path / f"m{i}.unetkit"))
        update_artifact(copy, **change)
        out = export_artifact(copy, tmp_path / f"m{i}.onnx").model_path
        plan = json.loads(out.with_name(f"m{i}.onnx.json").read_text())
        assert plan["version"] == 2, change
        tile = load_model(out).tile  # and this unetkit reads it back, predicting as the artifact does
        for key, value in change.items():
            assert getattr(tile, key) == pytest.approx(value), key
    plan_file = onnx.with_name("model.onnx.json")
    plan_file.write_text(json.dumps(json.loads(plan_file.read_text()) | {"version": 3}))
    with pytest.raises(ConfigError, match=r"model.onnx.json: inference plan version 3 is not one this unetkit reads "
                                          r"\(up to 2\); upgrade unetkit"):
        load_model(onnx)


def test_predict_and_evaluate_the_onnx_file_like_the_artifact(exported, tmp_path, rng):
    artifact, onnx = exported
    images = write_images(tmp_path / "images", rng)
    proc = run_cli("predict", str(onnx), str(images), "--out", str(tmp_path / "onnx"), "--probabilities")
    assert proc.returncode == 0, proc.stderr
    predict_files(artifact, [images], tmp_path / "torch", probabilities=True, backend="torch", progress=False)
    changed = 0
    for name in ("im0", "im1"):
        labels = read_mask(tmp_path / "onnx" / f"{name}_mask.png")
        want = read_mask(tmp_path / "torch" / f"{name}_mask.png")
        assert np.array_equal(labels, want) and labels.any() and (labels == 0).any()
        probs = tifffile.imread(tmp_path / "onnx" / f"{name}_prob.tif")
        assert np.abs(probs - tifffile.imread(tmp_path / "torch" / f"{name}_prob.tif")).max() <= 1e-4
        changed += int((probs.argmax(0) != labels).sum())
    assert changed > 0  # the plan's postprocessing (hole filling, small components) really ran

    data = drive_like(tmp_path / "d", n_images=2, size=(56, 52))
    proc = run_cli("evaluate", str(onnx), str(data), "--json", str(tmp_path / "onnx.json"))
    assert proc.returncode == 0, proc.stderr
    got = json.loads((tmp_path / "onnx.json").read_text())
    want = evaluate_model(artifact, data, backend="torch", progress=False)
    assert got["model"] == str(onnx) and got["postprocess"] == POSTPROCESS and got["images"] == 2
    got_n, want_n = numbers(got), numbers(json.loads(json.dumps(want, default=float)))
    assert got_n.keys() == want_n.keys() and len(got_n) > 50
    worst = max(got_n, key=lambda k: abs(got_n[k] - want_n[k]) if np.isfinite(want_n[k]) else 0.0)
    assert abs(got_n[worst] - want_n[worst]) <= 1e-4, worst
    assert all(np.isnan(got_n[k]) == np.isnan(want_n[k]) for k in got_n)


def test_int8_model_runs_and_agrees_with_fp32(data_and_model, tmp_path, monkeypatch):
    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path / "cache"))
    data, untrained = data_and_model
    artifact = trained(untrained, data)
    _, val = load_labelled(artifact, data, ["24"], progress=False)  # the validation sample training would store
    update_artifact(artifact, validation_sample=validation_sample(val, (32, 32)).to_dict())
    fp32 = export_artifact(artifact).model_path
    report = quantize_artifact(artifact, data, config=ExportConfig(int8=True, int8_gate=1.0, int8_agreement=0.0, calibration_images=4))
    int8 = load_model(report.written)
    assert int8.meta.precision == "int8" and int8.plan["model_sha256"]
    predict_files(int8, [data / "images"], tmp_path / "int8", progress=False)
    predict_files(load_model(fp32), [data / "images"], tmp_path / "fp32", progress=False)
    masks = sorted((tmp_path / "fp32").glob("*_mask.png"))
    assert len(masks) == 4
    a = np.stack([read_mask(m) for m in masks])
    b = np.stack([read_mask(tmp_path / "int8" / m.name) for m in masks])
    assert 0 < a.mean() < 1  # both classes present
    # ORT's u8s8 int8 kernels saturate on CPUs without VNNI (AVX2 EPYC: 96.7 % of these labels agree with
    # fp32 with 8-bit weights, 98.96 % with reduce_range's 7-bit ones; AVX-512 VNNI: >= 99 % with 8-bit).
    # quantize_artifact scores both on the validation image and keeps the one closer to fp32 there, so no
    # CPU gets the saturated one; which of the two good ones it keeps depends on that one image (AMX Xeon:
    # 7-bit agreed on 100 % of it against 99.9 % for 8-bit, and on 98.97 % of these four, it among them).
    assert (a == b).mean() >= 0.985
    assert set(report.extra["reduce_range_tried"]) == {"false", "true"}
    assert report.options["reduce_range"] == (report.extra["reduce_range_tried"]["true"] < report.extra["reduce_range_tried"]["false"])

    pytest.importorskip("openvino")  # the same int8 QDQ graph run by OpenVINO in int8
    ort, ov = int8.make_predictor("onnx"), int8.make_predictor("openvino")
    tiles = np.stack([s.image[:, :32, :32] for s in load_labelled(artifact, data, ["24"], progress=False)[1]])
    assert type(ov).__name__ == "OpenVinoPredictor" and (ort(tiles).argmax(1) == ov(tiles).argmax(1)).mean() >= 0.99

    # "auto" on the int8 graph measured ONNX Runtime against OpenVINO running it in int8, OpenVINO
    # behind the int8 gate on the plan's sample (fp32's labels stored at export, the truth of key 24)
    (record,) = json.loads((tmp_path / "cache" / "backends.json").read_text()).values()
    assert record["precisions"] == {"onnx": "int8", "openvino": "int8"} and record["precision"] == "int8"
    gate = record["gate"]["openvino"]
    assert gate["precision"] == "int8" and gate["basis"].startswith("validation sample: 1 crop(s) of 32x32")
    assert gate["passed"] == ("openvino" in record["seconds"]) and gate["fp32_dice"] > 0.5
    assert int8.sample().keys == ("24",) and int8.sample().fp32_labels is not None

    proc = run_cli("info", str(report.written))
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert list(shown.pop("backends_on_this_machine")["auto_choices"].values()) == [record]
    assert shown.pop("validation_sample")["crops"] == 1 and shown == {k: v for k, v in int8.plan.items() if k != "validation_sample"}

    # an int8 plan without a sample (an older export): no fp32 labels to gate OpenVINO against, ONNX Runtime runs it
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(report.written, old / report.written.name)
    (old / f"{report.written.name}.json").write_text(json.dumps({k: v for k, v in int8.plan.items() if k != "validation_sample"}))
    assert load_model(old / report.written.name).make_predictor().backend == "onnx"
    records = json.loads((tmp_path / "cache" / "backends.json").read_text())
    (key,) = [k for k in records if k.endswith("gate=fp32-labels")]
    assert records[key]["excluded"]["openvino"].startswith("no validation sample in the plan")


def test_cli_refuses_a_model_it_cannot_trust_in_one_line(exported, tmp_path, rng):
    artifact, onnx = exported
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(onnx, alone / "model.onnx")
    gray = tmp_path / "gray.png"
    write_png(gray, np.full((40, 40), 100, np.uint8))
    proc = run_cli("predict", str(alone / "model.onnx"), str(gray), "--out", str(tmp_path / "p"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "model.onnx: its inference plan model.onnx.json is missing (unetkit needs both files); "
                                "write both with `unetkit export MODEL.unetkit --format onnx`")

    other = export_artifact(tiny_artifact(tmp_path / "other.unetkit", seed=9), tmp_path / "other" / "model.onnx")
    shutil.copy(other.plan_path, alone / "model.onnx.json")  # the other model's plan beside this model
    proc = run_cli("evaluate", str(alone / "model.onnx"), str(tmp_path))
    assert proc.returncode == 2
    assert_one_line_error(proc, f"{alone / 'model.onnx'}: sha256 ")
    assert f"recorded in {alone / 'model.onnx.json'}; the model and its plan are not a pair" in proc.stderr

    proc = run_cli("predict", str(onnx), str(gray), "--out", str(tmp_path / "p"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "image has 1 channel(s) but the model takes 3")
    assert f"{gray}: image has 1 channel(s)" in proc.stderr  # the failing file is named


# ---------------------------------------------------------------- the user's tiling over the plan's


@pytest.fixture
def planned(tmp_path: Path) -> Path:
    """An export whose plan stores overlap 0.5, 48-pixel tiles and TTA (TileConfig's defaults: 0.25,
    the artifact's 32-pixel patch, no TTA)."""
    artifact = tiny_artifact(tmp_path / "model.unetkit", seed=3, **CALIBRATED)
    return export_artifact(artifact, tile={"tile_size": (48, 48), "overlap": 0.5, "tta": True}).model_path


@pytest.mark.parametrize("flags, asked", [
    (["--overlap", "0.25"], {"overlap": 0.25}),  # equal to TileConfig's default: the bug of issue 14
    (["--tile", "32"], {"tile_size": (32, 32)}),  # the artifact's patch size
    (["--no-tta"], {"tta": False}),
])
def test_explicit_tiling_overrides_the_plan_even_at_a_default_value(planned, tmp_path, rng, monkeypatch, flags, asked):
    images = write_images(tmp_path / "images", rng, sizes=((110, 97),))  # 4 vs 3 tiles a side at overlap 0.5 vs 0.25
    plan_tile = TileConfig(tile_size=(48, 48), overlap=0.5, tta=True, activation="none")
    used = engine_tilings(monkeypatch, "predict", str(planned), str(images), "--out", str(tmp_path / "plan"), "--probabilities")
    assert used == [plan_tile]  # nothing given: the plan's tiling
    used = engine_tilings(monkeypatch, "predict", str(planned), str(images), "--out", str(tmp_path / "user"),
                          "--probabilities", *flags)
    assert used == [replace(plan_tile, **asked)]  # what was asked, the rest from the plan
    by_plan = tifffile.imread(tmp_path / "plan" / "im0_prob.tif")
    by_user = tifffile.imread(tmp_path / "user" / "im0_prob.tif")
    assert np.abs(by_plan - by_user).max() > 1e-4


def test_evaluate_tiles_an_export_as_asked(planned, tmp_path, monkeypatch):
    data = drive_like(tmp_path / "d", n_images=2, size=(56, 52))
    assert {(t.overlap, t.tta) for t in engine_tilings(monkeypatch, "evaluate", str(planned), str(data))} == {(0.5, True)}
    used = engine_tilings(monkeypatch, "evaluate", str(planned), str(data), "--overlap", "0.25", "--no-tta")
    assert {(t.overlap, t.tta, t.tile_size) for t in used} == {(0.25, False, (48, 48))}
