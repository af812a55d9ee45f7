"""One path through every stage, as a user takes it: validate -> train -> evaluate -> predict -> info."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import run_cli
from unetkit.data.synthetic import make_synthetic_dataset


@pytest.mark.slow
def test_cli_from_folder_to_masks(tmp_path):
    data = tmp_path / "data"
    make_synthetic_dataset(data, n_images=12, size=64, seed=0)
    proc = run_cli("validate", str(data))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    run = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": {"in_channels": 3, "out_channels": 4, "depth": 2, "base_width": 8},
                               "val_every": 20, "optim": {"warmup_steps": 5}}))
    proc = run_cli("train", str(data), "--config", str(cfg), "--steps", "40", "--patch", "48", "--batch", "4",
                   "--out", str(run), "--quiet")
    assert proc.returncode == 0, proc.stderr
    model = run / "model.unetkit"
    assert model.exists()

    out_json = tmp_path / "eval.json"
    proc = run_cli("evaluate", str(model), str(data), "--json", str(out_json))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_json.read_text())
    assert result["images"] == 12 and len(result["per_class"]) == 4
    assert 0.0 <= result["pixel_accuracy"] <= 1.0
    assert "mIoU" in proc.stdout

    pred = tmp_path / "pred"
    proc = run_cli("predict", str(model), str(data / "images"), "--out", str(pred), "--overlay", "--probabilities")
    assert proc.returncode == 0, proc.stderr
    masks = sorted(pred.glob("*_mask.png"))
    assert len(masks) == 12
    first = np.asarray(Image.open(masks[0]))
    assert first.shape == (64, 64) and first.max() < 4
    assert len(list(pred.glob("*_overlay.png"))) == 12 and len(list(pred.glob("*_prob.tif"))) == 12

    proc = run_cli("info", str(model))
    assert proc.returncode == 0 and json.loads(proc.stdout)["model"]["out_channels"] == 4
    summary, full = json.loads(proc.stdout), json.loads(run_cli("info", str(model), "--full").stdout)
    assert isinstance(full["drift_baseline"]["features"], list) and len(full["drift_baseline"]["features"]) > 0
    assert summary["drift_baseline"]["features"].startswith(f"{len(full['drift_baseline']['features'])} features")
