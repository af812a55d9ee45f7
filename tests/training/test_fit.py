"""fit(): data to artifact, end to end, with its log and user errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetkit.errors import ConfigError, DataError
from unetkit.training.checkpoint import BEST, LAST
from unetkit.training.fit import fit
from unetkit.training.runlog import read_log


def test_fit_writes_artifact_checkpoints_and_log(tiny_config, capsys) -> None:
    from unetkit.artifact import load_artifact

    cfg = tiny_config()
    events: list[dict] = []
    path = fit(cfg, callbacks=[events.append])
    assert capsys.readouterr().out == ""  # progress=False: quiet
    art = load_artifact(path)
    meta = art.meta
    assert path == Path(cfg.out_dir) / "model.unetkit"
    assert len(meta.class_names) == 4 and meta.class_names[0] == "class_0"
    assert meta.model.in_channels == 3 and meta.model.out_channels == 4  # resolved from the data
    assert len(meta.mean) == 3 and all(s > 0 for s in meta.std)
    assert meta.patch_size == (32, 32)
    assert meta.train_config["steps"] == 12 and meta.train_config["model"]["out_channels"] == 4
    assert [h["step"] for h in meta.history] == [6, 12]
    assert "mean_dice_foreground" in meta.metrics and meta.metrics["step"] in (6, 12)
    assert meta.fingerprint and meta.data_spec["classes"][1]["name"] == meta.class_names[1]
    assert (Path(cfg.out_dir) / LAST).is_file() and (Path(cfg.out_dir) / BEST).is_file()
    assert not list(Path(cfg.out_dir).glob("*.tmp"))  # atomic writes leave nothing behind

    log = read_log(Path(cfg.out_dir) / "metrics.jsonl")
    assert log == events  # callbacks see exactly what the log holds
    kinds = [e["event"] for e in log]
    assert kinds[0] == "start" and kinds[-1] == "end" and "stop" in kinds
    train = [e for e in log if e["event"] == "train"]
    assert [e["step"] for e in train] == [1, 10, 12]
    for e in train:
        assert {"time", "lr", "loss", "loss_ce", "loss_dice", "grad_norm"} <= set(e)
        assert np.isfinite(e["loss"]) and e["lr"] > 0
    assert [e["time"] for e in log] == sorted(e["time"] for e in log)
    val = [e for e in log if e["event"] == "val"]
    assert [e["step"] for e in val] == [6, 12]
    assert {"mean_iou", "mean_dice_foreground", f"dice/{meta.class_names[1]}", f"iou/{meta.class_names[3]}", "best", "best_step"} <= set(val[0])
    assert next(e for e in log if e["event"] == "stop")["reason"] == "steps"


def test_refuses_bad_data_naming_the_file(tiny_config, shapes_data: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    bad = sorted((data / "masks").iterdir())[0]
    Image.open(bad).resize((20, 20)).save(bad)  # a mask whose size does not match its image
    with pytest.raises(DataError, match=bad.name):
        fit(tiny_config(data=data))
    cfg = tiny_config("skip", data=data, steps=2, val_every=100)
    path = fit(replace(cfg, data=replace(cfg.data, skip_bad=True)))  # trains on the good files
    assert path.is_file()


def test_tensorboard_missing_names_the_extra(tiny_config) -> None:
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=r"pip install unetkit\[tensorboard\]"):
        fit(tiny_config(steps=1, tensorboard=True))
