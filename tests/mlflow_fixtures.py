"""Real MLflow stores for the tracking and registry-export tests: a SQLite store (its schema migrated
once per session, then copied: MLflow's migrations take seconds) and `mlflow server` on loopback."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite database with its schema created (copied by `mlflow_uri`)."""
    mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'unetkit[mlflow]')")
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(mlflow_template: Path, tmp_path: Path) -> str:
    """A fresh SQLite tracking store of this test (tmp_path/mlflow/mlflow.db)."""
    folder = tmp_path / "mlflow"
    folder.mkdir()
    shutil.copy(mlflow_template, folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"


@pytest.fixture
def mlflow_server(mlflow_template: Path, tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port, a SQLite backend and local (proxied) artifacts; its URL."""
    store = tmp_path / "server"
    store.mkdir()
    shutil.copy(mlflow_template, store / "mlflow.db")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=store, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(proc.stderr.read() if proc.poll() is not None else '')[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        try:
            import os

            os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started
            proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
