"""A real Prometheus scraping a real `unetkit serve` every second with the repository's rules
(`for:` shortened to 2 s, nothing else changed): alerts stay quiet under normal traffic and fire
when it goes wrong; every dashboard query runs on it.

The served model carries a drift baseline of 64x64 textured images (the drift tests' synthetic
scene type); normal traffic is fresh images of that kind, drifted traffic blurred copies of them.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime

import httpx
import pytest

from tests.deploy.monitoring import dashboards, grafana_queries
from tests.deploy.prometheus import LivePrometheus, rules_for_test
from tests.monitor.conftest import blurred, textured_images
from tests.serve.live import LiveServer
from tests.serve.samples import png_of

SIZE = (64, 64)  # one tile of the test model: cheap requests
WINDOW = 100  # the server's drift window; the alert needs this many images in it
TIMEOUT = 180  # seconds for anything to happen: generous, the machine may be busy with other work


@pytest.fixture(scope="module")
def monitored_artifact(artifact_path, tmp_path_factory):
    from unetkit.artifact import load_artifact, update_artifact
    from unetkit.monitor.measure import artifact_baseline

    path = shutil.copy(artifact_path, tmp_path_factory.mktemp("monitored") / "monitored.unetkit")
    images = textured_images(40, seed=1, size=SIZE)
    update_artifact(path, drift_baseline=artifact_baseline(load_artifact(path), images, images[:12]).to_dict())
    return path


@pytest.fixture(scope="module")
def stack(prometheus_tools, monitored_artifact, tmp_path_factory):
    work = tmp_path_factory.mktemp("alerts-live")
    server = LiveServer(monitored_artifact, work / "server.log", ready_timeout=TIMEOUT, max_inflight=2,
                        drift_window=WINDOW)
    try:
        prometheus = LivePrometheus(prometheus_tools["prometheus"], work / "prometheus",
                                    [f"127.0.0.1:{server.port}"], rules_for_test(work / "rules"))
    except BaseException:
        server.stop()
        raise
    yield server, prometheus
    prometheus.stop()
    server.stop()


def segment(server: LiveServer, body: bytes, client: httpx.Client | None = None) -> int:
    post = (client or httpx).post
    return post(f"{server.url}/v1/segment", content=body, headers={"content-type": "image/png"}, timeout=60).status_code


def scraped(server: LiveServer, name: str) -> float:
    """Sum of a metric's samples on the server's /metrics right now."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def fill_window(server: LiveServer, images: list[bytes]) -> int:
    """Send `images` (two clients at a time), then more of them until the server has measured a
    whole window of them (the drift thread drops images when it falls behind: those do not count)."""
    dropped = scraped(server, "unetkit_drift_dropped_images_total")
    sent = 0
    with httpx.Client() as client, ThreadPoolExecutor(2) as pool:
        while sent - (scraped(server, "unetkit_drift_dropped_images_total") - dropped) < WINDOW:
            assert set(pool.map(lambda body: segment(server, body, client), images)) == {200}
            sent += len(images)
            images = images[: max(1, WINDOW // 10)]
    return sent


@contextmanager
def steady_traffic(server: LiveServer, images: list[bytes]) -> Iterator[list[int]]:
    """One client sending `images` in a loop until the block ends; yields the statuses so far.

    Rates need traffic that goes on across scrapes: a counter first scraped after its requests
    gives rate 0, and an error ratio of 0/0."""
    statuses: list[int] = []
    stop = threading.Event()

    def run() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                statuses.append(segment(server, images[len(statuses) % len(images)], client))
                stop.wait(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(60)


def evaluated_after(prometheus: LivePrometheus, group: str, moment: float) -> bool:
    """Has the rule group run an evaluation that started after `moment` (unix seconds)?"""
    for g in prometheus.api("rules")["groups"]:
        if g["name"] == group:  # RFC 3339 with up to nanoseconds: Python reads microseconds
            stamp = re.sub(r"(\.\d{6})\d+", r"\1", g["lastEvaluation"]).replace("Z", "+00:00")
            return datetime.fromisoformat(stamp).timestamp() > moment
    raise AssertionError(f"no rule group {group}")


def normal_images(n: int, seed: int) -> list[bytes]:
    return [png_of(image) for image in textured_images(n, seed=seed, size=SIZE)]


def test_drift_alert_fires_on_drifted_images_and_not_before(stack):
    server, prometheus = stack
    instance = f"127.0.0.1:{server.port}"

    # A whole window of fresh images of the training distribution: a score, below the threshold.
    fill_window(server, normal_images(WINDOW, seed=2))
    filled = time.time()  # the score scraped from now on is the normal window's (not an earlier test's)
    full = prometheus.wait_until(
        lambda: prometheus.query(f'unetkit_drift_window_images{{instance="{instance}"}} >= {WINDOW} and on '
                                 f'(instance, model_version) timestamp(unetkit_drift_score) > {filled:.3f}'), TIMEOUT,
        "a full window and its score scraped")
    version = full[0]["metric"]["model_version"]
    settled = time.time()
    score = float(prometheus.query(f'unetkit_drift_score{{instance="{instance}"}}')[0]["value"][1])
    threshold = float(prometheus.query(f'unetkit_drift_threshold{{instance="{instance}"}}')[0]["value"][1])
    assert 0 <= score < threshold == 0.2
    # Longer than `for:` (2 s) and two evaluations later: neither pending nor firing.
    prometheus.wait_until(lambda: evaluated_after(prometheus, "unetkit-quality", settled + 3), TIMEOUT,
                          "the quality rules evaluated on the normal window")
    assert prometheus.alerts("UnetkitInputDrift") == []

    # A camera out of focus: blurred copies of the same kind of image.
    drifted = [png_of(blurred(image)) for image in textured_images(30, seed=3, size=SIZE)]
    with httpx.Client() as client:
        assert all(segment(server, body, client) == 200 for body in drifted)
    alert = prometheus.wait_until(lambda: prometheus.firing("UnetkitInputDrift"), TIMEOUT, "UnetkitInputDrift firing")[0]
    assert alert["labels"] == {"alertname": "UnetkitInputDrift", "instance": instance, "job": "unetkit",
                               "model_version": version, "severity": "warning"}
    assert float(alert["value"]) > threshold
    description = alert["annotations"]["description"]
    assert f"The drift score of the images served by {instance} is" in description
    assert "sharpness" in description.split("Most shifted features (PSI):", 1)[1]
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#unetkitinputdrift"


def overload(server: LiveServer, big: bytes, small: bytes) -> list[int]:
    """Two large images hold both admission slots (max_inflight=2) while small requests keep
    arriving: those are turned away with 503 overloaded until a large one finishes."""
    statuses = []
    with httpx.Client() as client, ThreadPoolExecutor(2) as pool:
        blockers = [pool.submit(segment, server, big) for _ in range(2)]
        while not all(b.done() for b in blockers):
            statuses.append(segment(server, small, client))
            time.sleep(0.02)
        return statuses + [b.result() for b in blockers]


def test_error_budget_burn_fires_on_overload_and_not_before(stack):
    server, prometheus = stack
    with steady_traffic(server, normal_images(8, seed=4)) as normal:
        # Prometheus has scraped normal answers over several seconds and evaluated the rules on them.
        prometheus.wait_until(lambda: prometheus.query("unetkit:segment_errors:ratio_rate5m == 0"), TIMEOUT,
                              "an error ratio of 0 recorded")
        assert prometheus.alerts("UnetkitErrorBudgetFastBurn") == []

        # Overloaded until the alert fires: rates need the 503s to go on across scrapes.
        big, small = png_of(textured_images(1, seed=5, size=(1024, 1024))[0]), normal_images(1, seed=7)[0]
        statuses: list[int] = []
        alert = prometheus.wait_until(lambda: statuses.extend(overload(server, big, small)) or
                                      prometheus.firing("UnetkitErrorBudgetFastBurn"), TIMEOUT,
                                      "UnetkitErrorBudgetFastBurn firing")[0]
    # the alert answers real 503s: the overload's and the steady traffic's (which gets some of them
    # when the machine is slow) together
    assert statuses.count(503) + normal.count(503) >= 10 and set(statuses) <= {200, 503}, statuses
    assert set(normal) <= {200, 503}, normal
    assert alert["labels"] == {"alertname": "UnetkitErrorBudgetFastBurn", "job": "unetkit", "severity": "critical",
                               "slo": "availability"}
    assert "of POST /v1/segment requests failed with a 5xx" in alert["annotations"]["description"]
    assert alert["annotations"]["runbook_url"] == "docs/runbook.md#unetkiterrorbudgetfastburn"
    rejected = prometheus.wait_until(lambda: prometheus.firing("UnetkitRequestsRejected"), TIMEOUT,
                                     "UnetkitRequestsRejected firing")
    assert rejected[0]["labels"]["instance"] == f"127.0.0.1:{server.port}"


# Panels with data as soon as the server has answered requests for a few seconds.
EXPECT_DATA = {
    "unetkit-executive": {"Availability", "Availability error budget left", "Within 2 s", "Latency error budget left",
                          "Traffic", "Latency of POST /v1/segment", "Model in production", "Ready replicas",
                          "Alerts firing"},
    "unetkit-oncall": {"Availability burn rate", "Latency burn rate", "Requests by status", "In-flight requests",
                       "Queue depth (tiles)", "Tiles per forward pass", "p99 latency per replica", "Forward pass p95",
                       "Up and ready"},
    "unetkit-debug": {"Latency of $route", "Predictor seconds per forward pass", "Requests per forward pass",
                      "Forward passes per second", "Segmentations by model", "Predicted class fraction",
                      "Mean confidence", "Low-confidence pixels", "Confidence per request",
                      "Images in the drift window"},
}


def test_every_dashboard_query_runs_on_prometheus(stack):
    server, prometheus = stack
    with steady_traffic(server, normal_images(8, seed=6)):
        prometheus.wait_until(lambda: prometheus.query("unetkit:segment_slow:ratio_rate5m"), TIMEOUT,
                              "a latency ratio recorded")
        time.sleep(2)  # a few more scrapes of the traffic
    with_data: dict[str, set[str]] = {name: set() for name in EXPECT_DATA}
    for name, board in dashboards().items():
        for where, query in grafana_queries(board):
            result = prometheus.api("query", query=query)["result"]  # a parse error fails here
            if result and " variable " not in where:
                with_data[name].add(where.split(": ", 1)[1].rsplit(" [", 1)[0])
    for name, titles in EXPECT_DATA.items():
        assert titles <= with_data[name], f"{name}: no data for {sorted(titles - with_data[name])}"
