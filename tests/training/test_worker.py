"""The torchrun worker entry (training.worker): usage and user errors as one line with the rank."""

from __future__ import annotations

import json
from pathlib import Path

from unetkit.config import to_dict
from unetkit.training.worker import main


def test_worker_without_a_config_prints_its_usage(capsys) -> None:
    assert main([]) == 2
    assert "usage: torchrun ... -m unetkit.training.worker CONFIG.json" in capsys.readouterr().err


def test_worker_reports_a_user_error_with_its_rank(tiny_config, tmp_path: Path, capsys) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(to_dict(tiny_config(ensemble_folds=0))))
    assert main([str(path)]) == 2
    assert capsys.readouterr().err.startswith("error (rank 0): ensemble_folds: expected an integer >= 1")
