"""The parity gate on a model's validation sample (Dice against its truth) and, without one, against
fp32's labels; the automatic backend choice and `unetkit info` with either."""

import json

import numpy as np
import pytest
from tests.evaluation_fixtures import drive_like, tiny_artifact
from typer.testing import CliRunner

from unetkit.artifact import load_artifact, update_artifact
from unetkit.evaluation.labelled import load_labelled
from unetkit.inference import backends
from unetkit.inference.gate import NO_SAMPLE, GateData, label_agreement, parity_gate
from unetkit.training.finish import validation_sample


def test_with_a_sample_the_dice_delta_is_measured_against_the_truth():
    truth = np.zeros((1, 40, 50), np.uint8)
    truth[0, 10:30, 10:40] = 1  # 600 foreground pixels
    truth[0, :2] = 255  # not labelled: left out of agreement and Dice
    ref = np.zeros((1, 2, 40, 50), np.float32)
    ref[:, 1, 10:30, 12:42] = 1.0  # fp32 finds the block 2 columns off: Dice 0.933 against the truth
    data = GateData(ref[:, :1], truth, ("background", "vessel"))

    harmless = ref.copy()
    harmless[0, 1, 10:13, 10] = 1.0  # 3 pixels fp32 missed are found ...
    harmless[0, 1, 10:13, 20] = 0.0  # ... 3 it found are missed: the same score against the truth
    # without the truth this candidate fails: 1 - Dice(candidate vs fp32) = 0.005 > 0.002
    old = parity_gate(ref, harmless, "bf16")
    harmless[0, 1, 0:2, :] = 1.0  # unlabelled pixels may change freely
    gate = parity_gate(ref, harmless, "bf16", data)
    assert gate.passed and gate.dice_delta == 0.0 and gate.agreement == pytest.approx(1 - 6 / 1900)
    assert gate.fp32_dice == pytest.approx(1120 / 1200) and gate.basis.startswith("validation sample: 1 crop(s) of 40x50")
    assert not old.passed and old.reason == "Dice delta 0.0050 > 0.002" and old.basis == NO_SAMPLE

    harmful = ref.copy()
    harmful[0, 1, 10:18, 20] = 0.0  # 8 foreground pixels dropped: agreement 99.6 %, Dice 0.933 -> 0.926 against the truth
    gate = parity_gate(ref, harmful, "bf16", data)
    assert not gate.passed and gate.reason == "Dice delta 0.0072 > 0.002"
    assert parity_gate(ref, harmful, "int8", data).reason == "Dice delta 0.0072 > 0.005"
    # an exported model brings fp32's labels instead of an fp32 model: the same verdicts
    stored = GateData(data.images, truth, data.class_names, fp32_labels=ref.argmax(1))
    assert parity_gate(None, harmless, "bf16", stored).passed and parity_gate(None, harmless, "bf16", stored).max_abs_diff is None
    assert parity_gate(None, harmful, "bf16", stored).reason == "Dice delta 0.0072 > 0.002"


def flipping(predictor):
    """A harmful candidate: the real model's outputs with the classes swapped in every 8th row (flipped
    labels on 12.5 % of the pixels, foreground and background alike)."""

    def run(batch):
        out = predictor(batch).copy()
        out[:, :, ::8] = out[:, ::-1, ::8]
        return out

    return run


@pytest.fixture
def model_with_sample(tmp_path):
    """A tiny artifact with 2 labelled validation crops (DRIVE-like vessels, field-of-view ROI), and one without."""
    path = tiny_artifact(tmp_path / "model.unetkit", seed=2, head_scale=4.0)
    data = drive_like(tmp_path / "d", n_images=2, size=(48, 44))
    _, samples = load_labelled(load_artifact(path), data, ["21", "22"], progress=False)
    old = tiny_artifact(tmp_path / "old.unetkit", seed=3, head_scale=4.0)
    return update_artifact(path, validation_sample=validation_sample(samples, (32, 32)).to_dict()), load_artifact(old)


def test_auto_gates_on_the_stored_sample_and_old_artifacts_fall_back(model_with_sample, monkeypatch, tmp_path):
    art, old = model_with_sample
    assert art.meta.sample().images.shape == (2, 3, 32, 32) and old.meta.sample() is None
    build = backends._build
    monkeypatch.setattr(backends, "_build", lambda module, name, *a: (
        flipping(build(module, "torch", *a)) if name == "openvino-bf16" else build(module, name, *a)))
    monkeypatch.setattr(backends.ov_backend, "unavailable", lambda name: None)
    monkeypatch.setattr(backends, "AUTO_CANDIDATES", ("torch", "openvino-bf16"))
    assert backends.make_predictor(art, "auto", batch_size=2, cache_dir=tmp_path).backend == "torch"
    backends.make_predictor(old, "auto", batch_size=2, cache_dir=tmp_path)
    new_record, old_record = (next(iter(backends.cached_records(a.meta.weights_sha256, tmp_path).values())) for a in (art, old))
    gate = new_record["gate"]["openvino-bf16"]
    assert gate["basis"] == "validation sample: 2 crop(s) of 32x32, Dice against their truth" and not gate["passed"]
    assert gate["fp32_dice"] is not None and gate["candidate_dice"] is not None and gate["agreement"] < 0.9
    assert new_record["excluded"]["openvino-bf16"].startswith("parity gate against fp32 on the validation sample: ")
    assert new_record["precisions"] == {"torch": "fp32", "openvino-bf16": "bf16"} and new_record["precision"] == "fp32"
    assert old_record["gate"]["openvino-bf16"]["basis"] == NO_SAMPLE == "no validation sample: compared with fp32's labels"
    assert old_record["excluded"]["openvino-bf16"].startswith("parity gate against fp32 (no validation sample: ")

    # unetkit info: the sample in brief, and this machine's choice with its gate and why bf16 was left out
    from unetkit.cli import app

    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["info", str(art.path)])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["validation_sample"]["crops"] == 2 and "npz_base64" not in shown["validation_sample"]
    (choice,) = shown["backends_on_this_machine"]["auto_choices"].values()
    assert choice == new_record and choice["excluded"]["openvino-bf16"].endswith(gate["reason"])


def test_a_real_bf16_candidate_on_the_sample(model_with_sample, tmp_path):
    from unetkit.inference import openvino as ov_backend

    pytest.importorskip("openvino")
    if ov_backend.unavailable("openvino-bf16"):
        pytest.skip("this CPU has no bf16 in OpenVINO")
    art, _ = model_with_sample
    data = GateData.from_sample(art.meta.sample(), art.meta.class_names, art.meta.ignore_index)
    m = backends.measure_backends(art.pipeline_module(), (32, 32), 2, candidates=("torch", "openvino-bf16"), gate_data=data)
    gate = m.gate["openvino-bf16"]
    assert gate["basis"].startswith("validation sample") and gate["max_abs_diff"] > 0  # it ran in bf16
    assert gate["passed"] == ("openvino-bf16" in m.seconds) and gate["agreement"] >= 0.99


def test_label_agreement_pools_labelled_pixels_over_maps_of_any_size():
    ref = [np.zeros((2, 3), np.uint8), np.ones((4, 1), np.uint8)]
    got = [np.array([[0, 1, 0], [0, 0, 0]], np.uint8), np.array([[1], [0], [0], [1]], np.uint8)]
    truth = [np.array([[0, 0, 255], [0, 0, 0]], np.uint8), np.ones((4, 1), np.uint8)]
    # first map: 5 labelled pixels, 4 agree (the ignored one disagrees, uncounted); second: 4 labelled, 2 agree
    assert label_agreement(zip(ref, got, truth, strict=True), 255) == pytest.approx(6 / 9)
    assert label_agreement([(ref[0], got[0], np.full((2, 3), 255))], 255) == 1.0
