"""Drift gauges of the server: absent until the window is full enough, low for normal traffic,
above the threshold once blurred images arrive; nothing for a model without a baseline."""

from __future__ import annotations

import logging
import re
import shutil

import pytest

from tests.monitor.conftest import blurred, textured_images
from tests.serve.samples import png_of
from tests.serve.test_app import start
from unetkit.artifact import load_artifact, update_artifact
from unetkit.config import ServeConfig
from unetkit.monitor.measure import artifact_baseline
from unetkit.serve.logs import LOGGER

VERSION = re.compile(r'model_version="([0-9a-f]{12})"')


@pytest.fixture(scope="module")
def monitored_path(artifact_path, tmp_path_factory):
    path = shutil.copy(artifact_path, tmp_path_factory.mktemp("drift") / "monitored.unetkit")
    artifact = load_artifact(path)
    images = textured_images(40, seed=1)
    baseline = artifact_baseline(artifact, images, images[:12])
    update_artifact(path, drift_baseline=baseline.to_dict())
    return path


def drift_lines(client) -> dict[str, float]:
    """`name{labels}` -> value of every unetkit_drift_* sample."""
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith("unetkit_drift_")]
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}


def send(client, images) -> None:
    tracker = client.app.state.unetkit.metrics.drift
    for image in images:
        assert client.post("/v1/segment", content=png_of(image)).status_code == 200
        tracker.wait()  # one at a time: the drift queue never overflows, the test is deterministic


def test_drift_gauges_follow_the_traffic(monitored_path):
    client = start(ServeConfig(artifact=str(monitored_path), max_wait_ms=1, drift_window=30,
                               drift_min_images=10, drift_every=5))
    try:
        version = client.get("/v1/model").json()["version"]
        normal = textured_images(40, seed=2)
        send(client, normal[:9])
        lines = drift_lines(client)
        assert lines[f'unetkit_drift_window_images{{model_version="{version}"}}'] == 9
        assert lines[f'unetkit_drift_threshold{{model_version="{version}"}}'] == 0.2
        assert not any(k.startswith(("unetkit_drift_score", "unetkit_drift_feature_psi")) for k in lines)  # absent, not NaN

        send(client, normal[9:20])
        lines = drift_lines(client)
        score = lines[f'unetkit_drift_score{{model_version="{version}"}}']
        assert 0 <= score < 0.2, lines
        features = {m.group(1) for k in lines for m in [re.search(r'feature="([^"]+)"', k)] if m}
        assert {"sharpness", "intensity.c0", "confidence", "fraction.vessel", "components.cell"} <= features
        assert lines[f'unetkit_drift_window_images{{model_version="{version}"}}'] == 20

        send(client, [blurred(im) for im in normal[20:40]])  # the window (30) is now 2/3 blurred
        lines = drift_lines(client)
        assert lines[f'unetkit_drift_score{{model_version="{version}"}}'] > 0.2
        assert lines[f'unetkit_drift_feature_psi{{feature="sharpness",model_version="{version}"}}'] > 0.2
        assert lines[f'unetkit_drift_window_images{{model_version="{version}"}}'] == 30
        assert lines["unetkit_drift_dropped_images_total"] == 0
    finally:
        client.__exit__(None, None, None)


def test_no_baseline_warns_once_and_exports_nothing(artifact_path):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    client = start(ServeConfig(artifact=str(artifact_path), max_wait_ms=1))
    LOGGER.addHandler(handler)
    try:
        send(client, textured_images(3, seed=3))
        assert [k for k in drift_lines(client) if "model_version" in k] == []
    finally:
        LOGGER.removeHandler(handler)
        client.__exit__(None, None, None)
    warnings = [r for r in records if r.getMessage() == "drift monitoring off for this model"]
    assert len(warnings) == 1 and "no drift baseline" in warnings[0].fields["reason"]  # type: ignore[attr-defined]


def test_a_new_version_in_a_role_retires_the_old_series(reference_images_for_tracker):
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from unetkit.monitor.baseline import build_baseline
    from unetkit.serve.drift import DriftTracker

    baseline = build_baseline(reference_images_for_tracker, class_names=("bg", "fg")).to_dict()
    meta = SimpleNamespace(drift_baseline=baseline, weights_sha256="", temperature=1.0, class_scale=(),
                           class_bias=(), postprocess={})
    old, new = (SimpleNamespace(role="primary", version=v, meta=meta, artifact=SimpleNamespace(path=f"{v}.unetkit"))
                for v in ("v1", "v2"))
    registry = CollectorRegistry()
    tracker = DriftTracker(ServeConfig(drift_window=5, drift_min_images=2, drift_every=1), registry)
    labels = reference_images_for_tracker[0][0].astype("uint8")
    for image in reference_images_for_tracker[:3]:
        tracker.observe(old, image, None, labels)
        tracker.wait()
    text = generate_latest(registry).decode()
    assert 'unetkit_drift_score{model_version="v1"}' in text and 'feature="sharpness",model_version="v1"' in text
    tracker.observe(new, reference_images_for_tracker[3], None, labels)
    tracker.wait()
    text = generate_latest(registry).decode()
    assert 'model_version="v1"' not in text
    assert 'unetkit_drift_window_images{model_version="v2"} 1.0' in text and "unetkit_drift_score{" not in text
    tracker.close()


@pytest.fixture(scope="module")
def reference_images_for_tracker():
    return textured_images(8, seed=4)


def test_impossible_window_settings_fail_at_start(artifact_path):
    from unetkit.errors import ConfigError
    from unetkit.serve.app import create_app

    with pytest.raises(ConfigError, match=r"drift_min_images 50: expected 1 to drift_window \(10\)"):
        create_app(ServeConfig(artifact=str(artifact_path), drift_window=10, drift_min_images=50))
