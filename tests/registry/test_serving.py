"""`unetkit serve --registry`: serve the version in a stage and follow promotions and rollbacks under
load without dropping a request; in-process (TestClient) and through a real uvicorn process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.serve.live import free_port
from tests.serve.samples import png_of, synthetic_image
from unetkit.config import ServeConfig
from unetkit.registry.registry import Registry
from unetkit.serve.app import create_app
from unetkit.serve.service import Service

DEADLINE = 120  # seconds; generous, the machine may be busy


@pytest.fixture
def served(tmp_path, artifacts):
    """An SQLite registry: tiny:1 in production, tiny:2 (better) a candidate."""
    path = str(tmp_path / "reg" / "registry.db")
    with Registry.open(path) as reg:
        reg.add(artifacts["base"])
        reg.add(artifacts["better"])
        reg.promote("tiny:1", "production")
    return path


class Hammer:
    """Threads sending requests until stopped; every status and X-Model-Version is recorded in order."""

    def __init__(self, send, threads: int = 4) -> None:
        self.send, self.results, self._stop = send, [], threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                status, version = self.send()
            except Exception as e:  # noqa: BLE001 - recorded, the test fails on it
                status, version = repr(e), None
            with self._lock:
                self.results.append((status, version))

    def mark(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_for_version(self, version: str, after: int = 0) -> None:
        """Until a request recorded after index `after` was answered by `version`."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            with self._lock:
                if any(v == version for _, v in self.results[after:]):
                    return
            time.sleep(0.05)
        raise AssertionError(f"version {version} never answered: {Counter(self.results)}")

    def stop(self) -> list:
        self._stop.set()
        for t in self._threads:
            t.join(DEADLINE)
        return self.results


def started(config: ServeConfig) -> TestClient:
    client = TestClient(create_app(config)).__enter__()
    deadline = time.monotonic() + DEADLINE
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)
    return client


def test_promotions_and_rollbacks_swap_the_model_without_dropping_requests(served):
    client = started(ServeConfig(registry=served, registry_poll_seconds=0.1, max_wait_ms=2))
    data = png_of(synthetic_image(64, 64))

    def send():
        r = client.post("/v1/segment", content=data, headers={"Content-Type": "image/png"})
        return r.status_code, r.headers.get("x-model-version")

    try:
        info = client.get("/v1/model").json()  # /readyz tells the version only to a token holding the model scope
        assert info["version"] == "1" and info["name"] == "tiny"
        assert info["registry"]["version"] == 1 and info["registry"]["stage"] == "production"
        hammer = Hammer(send)
        hammer.wait_for_version("1")
        with Registry.open(served) as reg:
            promoted = hammer.mark()
            reg.promote("tiny:2", "production")
            hammer.wait_for_version("2", after=promoted)
            reg.rollback("tiny", reason="test")
            # not the hammer's first "1" after the rollback: a request that started on version 1 before
            # the promotion may finish after it (each keeps the model it started on; slow under load)
            deadline = time.monotonic() + DEADLINE
            while client.get("/v1/model").json()["version"] != "1":
                assert time.monotonic() < deadline, "the rollback was never served"
                time.sleep(0.05)
            hammer.wait_for_version("1", after=hammer.mark())
        results = hammer.stop()
        assert {status for status, _ in results} == {200}, Counter(results)
        assert "2" not in [v for _, v in results[:promoted]]
        assert client.get("/v1/model").json()["version"] == "1"
        metrics = client.get("/metrics").text
        info_lines = [line for line in metrics.splitlines() if line.startswith("unetkit_model_info{")]
        assert info_lines == ['unetkit_model_info{model_version="1",name="tiny",role="primary"} 1.0']
    finally:
        client.__exit__(None, None, None)


def test_a_tampered_version_is_not_served_and_the_current_one_stays(served, tmp_path):
    client = started(ServeConfig(registry=served, registry_poll_seconds=3600, max_wait_ms=2))
    try:
        follower = client.app.state.unetkit.follower
        with Registry.open(served) as reg:
            blob = reg.store.path(reg.get("tiny:2").sha256)
            blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
            reg.promote("tiny:2", "production")
        assert follower.check() is False and follower.check() is False  # refused once, then skipped
        assert client.get("/v1/model").json()["version"] == "1"
        assert client.post("/v1/segment", content=png_of(synthetic_image(40, 40))).status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_a_replaced_model_finishes_its_requests_before_closing(artifacts):
    service = Service.from_artifact(artifacts["base"], ServeConfig(max_wait_ms=2))
    from unetkit.artifact import load_artifact
    from unetkit.serve.service import LoadedModel

    try:
        with service.model_for_request() as old:  # a request in flight on the old model
            new = LoadedModel(load_artifact(artifacts["better"]), service.config)
            assert service.replace_primary(new) is old
            closer = threading.Thread(target=old.close_when_idle)
            closer.start()
            time.sleep(0.2)
            assert closer.is_alive()  # waits for the request
            probabilities = old.probabilities(synthetic_image(64, 64))  # the old model still answers it
            assert probabilities.shape == (3, 64, 64)
        closer.join(DEADLINE)
        assert not closer.is_alive()
        with service.model_for_request() as current:
            assert current is new
    finally:
        service.close()


def test_serve_command_follows_the_registry(served, tmp_path):
    port = free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "unetkit", "serve", "--registry", served, "--port", str(port),
                             "--poll", "0.2"], env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        data = png_of(synthetic_image(64, 64))
        http = httpx.Client(timeout=60)

        def send():
            r = http.post(f"{url}/v1/segment", content=data, headers={"Content-Type": "image/png"})
            return r.status_code, r.headers.get("x-model-version")

        hammer = Hammer(send, threads=3)
        hammer.wait_for_version("1")
        with Registry.open(served) as reg:
            reg.promote("tiny:2", "production")
        hammer.wait_for_version("2")
        results = hammer.stop()
        assert {status for status, _ in results} == {200}, Counter(results)
        assert httpx.get(f"{url}/v1/model").json()["version"] == "2"
        assert 'unetkit_model_info{model_version="2",name="tiny",role="primary"} 1.0' in httpx.get(f"{url}/metrics").text
    finally:
        proc.terminate()
        proc.wait(DEADLINE)


def test_serve_refuses_an_empty_stage_in_one_line(served, tmp_path):
    done = subprocess.run([sys.executable, "-m", "unetkit", "serve", "--registry", served, "--stage", "staging"],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 2
    assert done.stderr.startswith("error: no model has a version in staging (registry sqlite:///") and done.stderr.count("\n") == 1
