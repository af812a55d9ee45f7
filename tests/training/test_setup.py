"""`build_train_config`: a config file, then only the command-line flags the user set on top."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from unetkit.cli import app
from unetkit.training.setup import build_train_config


def config_file(tmp_path, **values):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(values))
    return path


def test_flags_left_unset_keep_the_config_files_values(tmp_path):
    cfg = build_train_config("data", config_file=config_file(tmp_path, nproc=2, progress=False))
    assert cfg.nproc == 2 and cfg.progress is False  # before: the CLI's defaults (1, True) replaced them


def test_a_flag_set_to_the_default_value_still_overrides_the_file(tmp_path):
    cfg = build_train_config("data", config_file=config_file(tmp_path, nproc=2, progress=False), nproc=1, progress=True)
    assert cfg.nproc == 1 and cfg.progress is True


def test_train_launches_the_config_files_process_count(tmp_path, monkeypatch):
    import unetkit.training.distributed as distributed

    launched = []
    monkeypatch.setattr(distributed, "launch", lambda cfg, n: launched.append((cfg.nproc, n)) or tmp_path / "m.unetkit")
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--config", str(config_file(tmp_path, nproc=2)),
                                      "--steps", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert launched == [(2, 2)]


def test_dice_guard_flag_sets_the_end_of_run_search_guard_over_the_file(tmp_path):
    assert build_train_config("data").postprocess_dice_guard is None  # the metric's default
    file = config_file(tmp_path, postprocess_dice_guard=0.01)
    assert build_train_config("data", config_file=file).postprocess_dice_guard == 0.01
    assert build_train_config("data", config_file=file, dice_guard=0.02).postprocess_dice_guard == 0.02
