"""`track="mlflow:URI"`: a real training run recorded in a real MLflow store (SQLite, and a tracking
server started on loopback by the test), read back with MLflow's own client."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'unetkit[mlflow]')")

from tests.mlflow_fixtures import free_port  # noqa: E402
from unetkit.errors import ConfigError  # noqa: E402
from unetkit.training.fit import fit  # noqa: E402
from unetkit.training.mlflow_tracking import RUN_FILE  # noqa: E402
from unetkit.training.runlog import read_log  # noqa: E402


def only_run(uri: str):
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("unetkit")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def assert_recorded(uri: str, out_dir: Path, tmp_path: Path) -> None:
    client, run = only_run(uri)
    log = read_log(out_dir / "metrics.jsonl")
    vals = [e for e in log if e["event"] == "val"]
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["model.base_width"] == "4"
    history = client.get_metric_history(run.info.run_id, "val/mean_dice_foreground")
    assert [(m.step, m.value) for m in history] == [(e["step"], e["mean_dice_foreground"]) for e in vals]
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [e["step"] for e in log if e["event"] == "train"]
    artifact = out_dir / "model.unetkit"
    assert run.data.tags["unetkit.stop_reason"] == "steps"
    # the artifact, byte for byte; the plot; the plan, config and fingerprint as JSON
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "download")))
    assert hashlib.sha256((local / "model" / "model.unetkit").read_bytes()).digest() == \
        hashlib.sha256(artifact.read_bytes()).digest()
    assert (local / "plots" / "time_to_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((local / "config.json").read_text())["steps"] == 12
    from unetkit.artifact import read_meta

    meta = read_meta(artifact)
    assert json.loads((local / "fingerprint.json").read_text())["content_sha256"] == meta.fingerprint["content_sha256"]
    assert run.data.tags["unetkit.data_sha256"] == meta.fingerprint["content_sha256"]
    assert run.data.tags["unetkit.weights_sha256"] == meta.weights_sha256
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.digest == meta.fingerprint["content_sha256"][:36]


def test_fit_records_the_run_in_a_sqlite_store(tiny_config, tmp_path: Path, mlflow_uri: str) -> None:
    uri = mlflow_uri
    cfg = tiny_config(track=f"mlflow:{uri}")
    fit(cfg)
    assert_recorded(uri, Path(cfg.out_dir), tmp_path)
    assert (tmp_path / "mlflow" / "mlartifacts").is_dir()  # a new experiment keeps its artifacts beside the database
    assert json.loads((Path(cfg.out_dir) / RUN_FILE).read_text())["tracking_uri"] == uri


def test_resume_continues_the_same_mlflow_run(tiny_config, tmp_path: Path, mlflow_uri: str) -> None:
    from dataclasses import replace

    uri = mlflow_uri
    cfg = tiny_config(track=f"mlflow:{uri}", steps=6)
    fit(cfg)
    fit(replace(cfg, steps=12, resume=True))
    client, run = only_run(uri)  # one run, not two
    assert run.info.status == "FINISHED"
    assert run.data.tags["unetkit.resumed"] == "True"  # the second process's "start" event reached it
    assert json.loads((Path(cfg.out_dir) / RUN_FILE).read_text())["mlflow_run_id"] == run.info.run_id


def test_unwritable_store_refuses_before_training(tiny_config, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder would be")
    cfg = tiny_config(track=f"mlflow:sqlite:///{blocker}/mlflow.db")
    with pytest.raises(ConfigError, match=r"--track mlflow:sqlite:///.*not-a-folder/mlflow.db: cannot write"):
        fit(cfg)
    assert not (Path(cfg.out_dir) / "metrics.jsonl").exists()  # nothing trained


def test_cli_refuses_an_unreachable_server_in_one_line(shapes_data: Path, tmp_path: Path) -> None:
    port = free_port()  # a loopback port nobody listens on
    proc = subprocess.run([sys.executable, "-m", "unetkit", "train", str(shapes_data), "--steps", "2",
                           "--out", str(tmp_path / "run"), "--track", f"mlflow:http://127.0.0.1:{port}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"--track mlflow:http://127.0.0.1:{port}: cannot write to this MLflow store (nothing " \
        "answers there: connection refused)" in lines[0], proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_unreachable_server_is_tried_once_not_for_minutes(monkeypatch) -> None:
    """MLflow retries an HTTP call 7 times with exponential backoff by default (minutes in all); the
    check at open tries once, and leaves MLflow's own settings as they were."""
    from unetkit.training.mlflow_tracking import MlflowTracker

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="nothing answers there: connection refused"):
        MlflowTracker.open(f"http://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 30  # one refused connection; MLflow's retries alone wait 2 + 4 + 8 + 16 s first
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"


def test_fit_records_the_run_on_a_tracking_server(tiny_config, tmp_path: Path, mlflow_server: str) -> None:
    cfg = tiny_config(track=f"mlflow:{mlflow_server}")
    fit(cfg)
    assert_recorded(mlflow_server, Path(cfg.out_dir), tmp_path)
