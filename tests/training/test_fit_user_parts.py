"""`fit` with the user's parts: encoder weights from a file, their own network (a MONAI BasicUNet
registered by a test package) and loss; the artifact reloads, exports, calibrates and serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tests.plugin_fixtures import FEATURES, PLUGIN, basicunet, write_plugin
from tests.test_cli import assert_one_line_error, run_cli
from unetkit.artifact import load_artifact
from unetkit.config import FinetuneConfig, ModelConfig, ServeConfig
from unetkit.data.io import read_image
from unetkit.data.spec import load_spec
from unetkit.errors import ConfigError
from unetkit.models.encoders import ENCODERS, IMAGENET_MEAN, IMAGENET_STD
from unetkit.training.fit import fit


def _channels_and_classes(data: Path) -> tuple[int, int]:
    image = read_image(sorted((data / "images").iterdir())[0])
    return image.shape[0], len(load_spec(data).classes)


def _start_event(out_dir: str) -> dict:
    return json.loads(Path(out_dir, "metrics.jsonl").read_text().splitlines()[0])


def test_imagenet_encoder_weights_start_the_run_and_bring_their_normalization(tiny_config, shapes_data, tmp_path):
    torch.manual_seed(0)
    save_file(ENCODERS.get("efficientnet-b0").build(3).state_dict(), str(tmp_path / "b0.safetensors"))
    cfg = tiny_config(model=ModelConfig(encoder="efficientnet-b0", base_width=4), steps=1, val_every=1,
                      finetune=FinetuneConfig(pretrained=str(tmp_path / "b0.safetensors")))
    meta = load_artifact(fit(cfg)).meta
    channels, _ = _channels_and_classes(shapes_data)
    assert channels == 3 and meta.model.encoder == "efficientnet-b0"
    assert meta.mean == pytest.approx(tuple(255 * m for m in IMAGENET_MEAN))
    assert meta.std == pytest.approx(tuple(255 * s for s in IMAGENET_STD))
    assert "tensors into the efficientnet-b0 encoder" in _start_event(cfg.out_dir)["pretrained"]


def test_pretrained_weights_of_another_encoder_are_one_line_and_nothing_is_written(shapes_data, tmp_path):
    torch.save(ENCODERS.get("resnet50").build(3).state_dict(), tmp_path / "r50.pth")
    out = tmp_path / "run"
    proc = run_cli("train", str(shapes_data), "--encoder", "resnet18", "--pretrained", str(tmp_path / "r50.pth"),
                   "--steps", "1", "--out", str(out), "--quiet")
    assert proc.returncode == 2
    assert_one_line_error(proc, "key 'layer1.0.conv1.weight' has shape (64, 64, 1, 1) in the file, the resnet18 "
                                "encoder expects (64, 64, 3, 3)")
    assert not out.exists()


def test_a_users_monai_network_and_loss_train_reload_export_calibrate_and_serve(tiny_config, shapes_data, tmp_path,
                                                                                monkeypatch):
    site = write_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    channels, classes = _channels_and_classes(shapes_data)
    calls = []

    def loss(outputs, labels):  # the user's own: plain cross-entropy, honouring the ignore label
        calls.append(tuple(outputs.shape))
        return F.cross_entropy(outputs, labels, ignore_index=255)

    torch.manual_seed(0)
    net = basicunet(channels, classes)
    cfg = tiny_config(model=ModelConfig(arch=PLUGIN, options={"features": FEATURES}), steps=4, val_every=2)
    path = fit(cfg, model=net, loss=loss)
    assert len(calls) == 4 and calls[0][1] == classes
    assert _start_event(cfg.out_dir)["loss"].startswith("custom: ")

    art = load_artifact(path)
    assert art.meta.model.arch == PLUGIN and set(art.state_dict) == set(net.state_dict())
    assert "calibration" in art.meta.metrics  # the end of training ran on the rebuilt network
    from unetkit.inference.predict import predict_image
    from unetkit.serve.service import Service

    image = read_image(sorted((shapes_data / "images").iterdir())[0])
    probabilities = predict_image(art, image)
    service = Service.from_artifact(path, ServeConfig(artifact=str(path), max_wait_ms=0.0))
    try:
        served = service.segment(image)
    finally:
        service.close()
    assert np.array_equal(served.labels, probabilities.argmax(0))

    # a fresh process with the plugin installed exports it (ONNX, parity-checked); without, one line naming it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "unetkit", "export", str(path), "--out", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(Path(str(tmp_path / "m.onnx") + ".json").read_text())["parity"]["max_abs_diff"] < 1e-4
    missing = run_cli("export", str(path), "--out", str(tmp_path / "n.onnx"))
    assert missing.returncode == 2
    assert_one_line_error(missing, f"model.arch '{PLUGIN}': not a built-in architecture")
    assert not (tmp_path / "n.onnx").exists()


def test_a_network_its_artifact_could_not_rebuild_is_refused(tiny_config, shapes_data, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_plugin(tmp_path / "site")))
    channels, classes = _channels_and_classes(shapes_data)
    cfg = tiny_config(model=ModelConfig(arch=PLUGIN, options={"features": FEATURES}))
    with pytest.raises(ConfigError, match=rf"weight 'final_conv.weight' is \({classes + 1}, 4, 1, 1\) in the given "
                                          rf"network, \({classes}, 4, 1, 1\)"):
        fit(cfg, model=basicunet(channels, classes + 1))
    with pytest.raises(ConfigError, match="ensemble_folds > 1"):
        fit(tiny_config(ensemble_folds=2), model=basicunet(channels, classes))
