"""Small model artifacts for the serving tests (built once per session, 64x64 patches, 3 classes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve.samples import make_artifact


@pytest.fixture(scope="session")
def artifact_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("models") / "primary.unetkit", seed=0)


@pytest.fixture(scope="session")
def candidate_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_artifact(tmp_path_factory.mktemp("models") / "candidate.unetkit", seed=1, name="tiny-candidate")
