"""Deploy tests: promtool and prometheus (installed from the Debian package when missing) and a
small model artifact for a real `unetkit serve`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.tools import ensure_prometheus
from tests.serve.samples import make_artifact


@pytest.fixture(scope="session")
def prometheus_tools() -> dict[str, str]:
    try:
        return ensure_prometheus()
    except RuntimeError as e:  # a failure, not a skip: the rules would go unchecked
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def artifact_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("models") / "primary.unetkit", seed=0)


@pytest.fixture(scope="session")
def exported_metric_names(artifact_path: Path) -> set[str]:
    """Every series name the server's /metrics can hold, scraped from the real app (in-process)."""
    import time

    from fastapi.testclient import TestClient

    from tests.deploy.monitoring import exported_names
    from unetkit.config import ServeConfig
    from unetkit.serve.app import create_app

    with TestClient(create_app(ServeConfig(artifact=str(artifact_path)))) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.05)
        names = exported_names(client.get("/metrics").text)
    assert {"unetkit_http_requests_total", "unetkit_http_request_duration_seconds_bucket", "unetkit_ready"} <= names
    return names
