"""Registry fixtures: small artifacts with known metrics, and every registry test run twice: on an
SQLite file and on a real PostgreSQL server started on loopback for the session (postgres.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mlflow_fixtures import mlflow_template, mlflow_uri  # noqa: F401 - fixtures
from tests.registry.postgres import PostgresServer
from tests.serve.samples import make_artifact
from unetkit.registry.registry import Registry

PRODUCTION_METRICS = {
    "mean_iou": 0.70, "mean_dice": 0.80, "iou/cell": 0.60, "hd95/cell": 4.0, "step": 120,
    "selection_metric": "mean_iou", "calibration": {"ece_after": 0.020, "ece_before": 0.080, "temperature": 1.3},
}


def metrics(**changes: float) -> dict:
    out = {**PRODUCTION_METRICS, "calibration": dict(PRODUCTION_METRICS["calibration"])}
    for key, value in changes.items():
        if key.startswith("calibration_"):
            out["calibration"][key.removeprefix("calibration_")] = value
        else:
            out[key.replace("__", "/")] = value
    return out


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("registry-artifacts")
    specs = {
        "base": dict(seed=0, metrics=metrics(), lineage={"git_commit": "0123456789abcdef0123456789abcdef01234567"}),
        "better": dict(seed=1, metrics=metrics(mean_iou=0.72, hd95__cell=3.5), plan={"budget_seconds": 600, "choices": [
            {"key": "model.base_width", "value": 16, "reason": "r", "source": "plan"}]}),
        "worse": dict(seed=2, metrics=metrics(mean_iou=0.68, hd95__cell=6.0)),
        "close": dict(seed=3, metrics=metrics(mean_iou=0.697)),  # 0.003 worse: within the default 0.005
        "other": dict(seed=4, name="other", metrics=metrics()),
    }
    return {key: make_artifact(root / f"{key}.unetkit", **spec) for key, spec in specs.items()}


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    server = PostgresServer.start()
    yield server
    server.stop()


@dataclass(frozen=True)
class Location:
    url: str
    store: str | None  # PostgreSQL needs one; SQLite keeps blobs/ beside the file
    kind: str


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "sqlite":
        return Location(str(tmp_path / "reg" / "registry.db"), None, "sqlite")
    server = request.getfixturevalue("postgres")
    return Location(server.new_database(), str(tmp_path / "store"), "postgresql")


@pytest.fixture
def registry(location: Location) -> Registry:
    reg = Registry.open(location.url, location.store)
    yield reg
    reg.close()
