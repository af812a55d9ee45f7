"""The framework-free service: segmentation, dynamic batching across requests, back-pressure."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.serve.samples import make_artifact, synthetic_image
from unetkit.config import ServeConfig
from unetkit.errors import ConfigError, InputError
from unetkit.inference.predict import sharpen
from unetkit.serve.batching import BatchStats, QueueFull, TileBatcher
from unetkit.serve.service import Observer, SegmentOptions, Service, agreement_iou, fit_channels


class Recorder(Observer):
    def __init__(self) -> None:
        self.batches: list[BatchStats] = []
        self.predictions: list[dict] = []
        self.agreements: list[float] = []

    def batch(self, model, stats):  # noqa: ANN001
        self.batches.append(stats)

    def prediction(self, model, summary):  # noqa: ANN001
        self.predictions.append(summary)

    def shadow(self, agreement_iou):  # noqa: ANN001
        self.agreements.append(agreement_iou)


@pytest.fixture(scope="module")
def service(artifact_path):
    svc = Service.from_artifact(artifact_path, ServeConfig(max_batch_size=8, max_wait_ms=20))
    yield svc
    svc.close()


def test_segment_matches_the_offline_engine(service, artifact_path):
    from unetkit.artifact import load_artifact
    from unetkit.config import TileConfig
    from unetkit.inference.backends import make_predictor
    from unetkit.inference.predict import predict_tiled

    image = synthetic_image(150, 97)
    seg = service.segment(image, SegmentOptions(keep_probabilities=True))
    assert seg.labels.shape == (150, 97) and seg.labels.dtype == np.uint8
    offline = predict_tiled(make_predictor(load_artifact(artifact_path), "torch"), image, TileConfig(tile_size=(64, 64)))
    np.testing.assert_allclose(seg.probabilities, offline, atol=1e-4)
    np.testing.assert_array_equal(seg.labels, offline.argmax(0))
    fractions = [c["pixel_fraction"] for c in seg.summary["classes"]]
    assert sum(fractions) == pytest.approx(1.0)
    assert 1 / 3 <= seg.summary["confidence"]["mean"] <= 1.0
    assert seg.model.role == "primary" and len(seg.model.version) == 12


def test_served_tiling_is_the_artifacts_with_the_configured_overlap(artifact_path):
    """TileConfig owns the overlap default; UNETKIT_SERVE_TILE_OVERLAP (or the config file) sets it."""
    from unetkit.artifact import load_artifact
    from unetkit.config import TileConfig
    from unetkit.serve.server import load_serve_config
    from unetkit.serve.service import LoadedModel

    assert ServeConfig().tile_overlap == TileConfig().overlap
    config = load_serve_config(None, env={"UNETKIT_SERVE_TILE_OVERLAP": "0.5"}, max_batch_size=2)
    model = LoadedModel(load_artifact(artifact_path), config)
    try:
        assert model.tile_config == TileConfig(tile_size=(64, 64), overlap=0.5, batch_size=4)
    finally:
        model.close()


def test_a_model_that_chose_tta_is_served_with_it_unless_the_request_says_no(artifact_path, tmp_path):
    """What was trained is what is served: an artifact whose training adopted TTA (`ArtifactMeta.tta`)
    averages the views for a request that does not say, and a request can still turn them off."""
    import shutil

    from unetkit.artifact import update_artifact

    chose = shutil.copyfile(artifact_path, tmp_path / "tta.unetkit")
    update_artifact(chose, tta=True)
    image = synthetic_image(70, 90)
    plain_service = Service.from_artifact(artifact_path, ServeConfig(max_batch_size=8, max_wait_ms=20))
    tta_service = Service.from_artifact(chose, ServeConfig(max_batch_size=8, max_wait_ms=20))
    try:
        assert plain_service.models()["primary"]["tta"] is False and tta_service.models()["primary"]["tta"] is True
        own = tta_service.segment(image, SegmentOptions(keep_probabilities=True))
        asked = plain_service.segment(image, SegmentOptions(tta=True, keep_probabilities=True))
        plain = plain_service.segment(image, SegmentOptions(keep_probabilities=True))
        declined = tta_service.segment(image, SegmentOptions(tta=False, keep_probabilities=True))
        assert own.tta and asked.tta and not plain.tta and not declined.tta
        np.testing.assert_allclose(own.probabilities, asked.probabilities, atol=1e-5)
        np.testing.assert_allclose(declined.probabilities, plain.probabilities, atol=1e-5)
        assert np.abs(own.probabilities - plain.probabilities).max() > 1e-3  # the views do change the output
        # the views' mean recalibrated with the artifact's temperature, which the model info reports
        update_artifact(chose, tta_temperature=0.7)
        sharp_service = Service.from_artifact(chose, ServeConfig(max_batch_size=8, max_wait_ms=20))
        try:
            info = sharp_service.models()["primary"]
            assert info["tta_temperature"] == 0.7 and tta_service.models()["primary"]["tta_temperature"] == 1.0
            assert info["resolutions"] == [] and info["resolutions_temperature"] == 1.0
            sharp = sharp_service.segment(image, SegmentOptions(keep_probabilities=True))
            np.testing.assert_allclose(sharp.probabilities, sharpen(own.probabilities.copy(), 0.7), atol=1e-5)
        finally:
            sharp_service.close()
    finally:
        plain_service.close()
        tta_service.close()


def test_served_tta_views_are_the_configured_set_and_refused_where_the_model_never_saw_them(artifact_path, tmp_path):
    """UNETKIT_SERVE_TTA_VIEWS=flips halves a dihedral model's TTA; a model trained upright refuses it."""
    import shutil

    from unetkit.artifact import load_artifact, update_artifact
    from unetkit.config import TileConfig
    from unetkit.inference.backends import make_predictor
    from unetkit.inference.predict import predict_tiled
    from unetkit.serve.server import load_serve_config

    config = load_serve_config(None, env={"UNETKIT_SERVE_TTA_VIEWS": "flips"}, max_wait_ms=1)
    image = synthetic_image(70, 90)
    flips = Service.from_artifact(artifact_path, config)
    try:
        assert flips.models()["primary"]["tta_views"] == "flips"
        seg = flips.segment(image, SegmentOptions(tta=True, keep_probabilities=True))
        offline = predict_tiled(make_predictor(load_artifact(artifact_path), "torch"), image,
                                TileConfig(tile_size=(64, 64), tta=True, tta_views="flips"))
        np.testing.assert_allclose(seg.probabilities, offline, atol=1e-4)
    finally:
        flips.close()
    upright = shutil.copyfile(artifact_path, tmp_path / "upright.unetkit")
    update_artifact(upright, train_config={"augment": {"flip_vertical": False}})
    with pytest.raises(ConfigError, match="TTA views 'flips' include views this model was not trained on"):
        Service.from_artifact(upright, config)
    with pytest.raises(ConfigError, match="tta_views"):
        load_serve_config(None, env={"UNETKIT_SERVE_TTA_VIEWS": "all"})


def test_tta_and_small_and_gray_images(service):
    tiny = synthetic_image(20, 33)
    assert service.segment(tiny, SegmentOptions(tta=True)).labels.shape == (20, 33)
    gray = synthetic_image(64, 64)[:1]
    assert service.segment(gray).labels.shape == (64, 64)
    with pytest.raises(InputError, match="5 channels but the model takes 3"):
        fit_channels(np.zeros((5, 8, 8), np.float32), 3)
    with pytest.raises(InputError, match="NaN"):
        service.segment(np.full((3, 16, 16), np.nan, np.float32))


def test_tiles_of_concurrent_requests_share_batches(artifact_path):
    recorder = Recorder()
    svc = Service.from_artifact(artifact_path, ServeConfig(max_batch_size=8, max_wait_ms=50), recorder)
    recorder.batches.clear()
    results = {}

    def run(i: int) -> None:
        results[i] = svc.segment(synthetic_image(64, 64, seed=i)).labels  # one tile each

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    svc.close()
    assert len(results) == 6
    assert max(b.sessions for b in recorder.batches) >= 2, recorder.batches
    assert sum(b.size for b in recorder.batches) == 6
    assert len(recorder.batches) < 6


def test_lone_request_does_not_wait_for_a_full_batch():
    calls = []
    batcher = TileBatcher(lambda x: calls.append(len(x)) or x, max_batch_size=8, max_wait_ms=2000, max_queue=16)
    with batcher.session() as s:
        start = time.perf_counter()
        out = batcher.predict(np.ones((3, 1, 4, 4), np.float32), s)
    batcher.close()
    assert time.perf_counter() - start < 1.0 and calls == [3]
    assert out.shape == (3, 1, 4, 4)


def test_full_queue_raises_back_pressure_and_admitted_requests_finish():
    release, running = threading.Event(), threading.Event()

    def slow(x: np.ndarray) -> np.ndarray:
        running.set()
        release.wait(5)
        return x

    batcher = TileBatcher(slow, max_batch_size=2, max_wait_ms=0, max_queue=4)
    started = [threading.Thread(target=batcher.predict, args=(np.zeros((2, 1, 2, 2), np.float32),)) for _ in range(3)]
    started[0].start()
    assert running.wait(5)  # the first batch holds the worker before the others queue (else the third may be refused)
    for t in started[1:]:
        t.start()
    deadline = time.monotonic() + 5
    while batcher.queue_depth < 4 and time.monotonic() < deadline:  # 1 batch running, 4 tiles queued
        time.sleep(0.01)
    assert batcher.queue_depth == 4
    with pytest.raises(QueueFull, match="queue full"):
        batcher.predict(np.zeros((1, 1, 2, 2), np.float32))
    release.set()
    for t in started:
        t.join(5)
    assert batcher.queue_depth == 0
    batcher.close()
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.predict(np.zeros((1, 1, 2, 2), np.float32))


def test_predictor_failure_reaches_the_caller_and_the_worker_survives():
    def flaky(x: np.ndarray) -> np.ndarray:
        if x.sum() > 0:
            raise RuntimeError("boom")
        return x

    batcher = TileBatcher(flaky, max_batch_size=4, max_wait_ms=0, max_queue=8)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.predict(np.ones((1, 1, 2, 2), np.float32))
    assert batcher.predict(np.zeros((1, 1, 2, 2), np.float32)).shape == (1, 1, 2, 2)
    batcher.close()


def test_admission_limit(artifact_path, service):
    limited = Service(service.primary, ServeConfig(max_inflight=1))
    with limited.admission():
        with pytest.raises(QueueFull, match="1 requests already in flight"):
            with limited.admission():
                pass
    with limited.admission():
        pass


def test_canary_split_and_shadow_agreement(artifact_path, candidate_path):
    with pytest.raises(ConfigError, match="need canary_artifact"):
        Service.from_artifact(artifact_path, ServeConfig(canary_percent=10))
    recorder = Recorder()
    cfg = ServeConfig(canary_artifact=str(candidate_path), shadow=True)
    svc = Service.from_artifact(artifact_path, cfg, recorder)
    seg = svc.segment(synthetic_image(64, 64))
    svc.wait_for_shadow()
    svc.close()
    assert seg.model.role == "primary"
    assert len(recorder.agreements) == 1 and 0.0 <= recorder.agreements[0] <= 1.0
    assert svc.models()["rollout"] == "shadow"


def test_incompatible_candidate_is_refused_without_leaking_workers(artifact_path, tmp_path):
    other = make_artifact(tmp_path / "other.unetkit", seed=2, classes=("background", "tumour", "stroma"))
    before = {t for t in threading.enumerate() if t.name.startswith("unetkit-batcher")}
    with pytest.raises(ConfigError, match="differ from the primary's"):
        Service.from_artifact(artifact_path, ServeConfig(canary_artifact=str(other), canary_percent=5))
    after = {t for t in threading.enumerate() if t.name.startswith("unetkit-batcher") and t.is_alive()}
    assert after <= before


def test_agreement_iou():
    a = np.array([[0, 0], [1, 1]])
    assert agreement_iou(a, a, 3) == 1.0
    assert agreement_iou(a, np.array([[0, 1], [1, 1]]), 3) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_pixel_budget_waits_then_gives_back_pressure():
    from unetkit.serve.batching import PixelBudget

    budget = PixelBudget(100, timeout=0.2)
    with budget.hold(60):
        with pytest.raises(QueueFull, match="60 pixels in progress"):
            with budget.hold(50):
                pass
        with budget.hold(40):
            assert budget.used == 100
    with budget.hold(1000):  # larger than the budget: runs alone
        assert budget.used == 1000
    slow = PixelBudget(10, timeout=5)
    holding = threading.Event()

    def hold_briefly() -> None:
        with slow.hold(10):
            holding.set()
            time.sleep(0.2)

    worker = threading.Thread(target=hold_briefly)
    worker.start()
    holding.wait(5)
    start = time.perf_counter()
    with slow.hold(10):  # waits for the other holder instead of failing
        waited = time.perf_counter() - start
    worker.join()
    assert 0.1 < waited < 4


def test_pixel_budget_is_first_come_first_served():
    from unetkit.serve.batching import PixelBudget

    budget = PixelBudget(10, timeout=5)
    order: list[str] = []
    first = threading.Event()

    def take(name: str, n: int) -> None:
        with budget.hold(n):
            order.append(name)

    with budget.hold(8):
        big = threading.Thread(target=take, args=("big", 9))  # waits: 8 + 9 > 10
        big.start()
        while not budget._waiting:
            time.sleep(0.005)
        small = threading.Thread(target=take, args=("small", 1))  # would fit now, but queues behind big
        small.start()
        first.wait(0.2)
        assert order == []
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_exported_model_serves_like_its_artifact(artifact_path, tmp_path, monkeypatch, fmt):
    """`serve model.onnx` / `model.xml`: the exported file with its plan runs on its own runtime (the
    default backend "torch" means auto there), /v1/model says which, and the labels are the artifact's."""
    import shutil

    monkeypatch.setenv("UNETKIT_CACHE_DIR", str(tmp_path / "cache"))
    source = shutil.copy(artifact_path, tmp_path / "model.unetkit")
    if fmt == "onnx":
        from unetkit.export.onnx import export_artifact as export
    else:
        pytest.importorskip("openvino", reason="the openvino extra: pip install 'unetkit[openvino]'")
        from unetkit.export.openvino import export_openvino as export
    exported = export(source).model_path
    image = synthetic_image(150, 130, seed=3)
    reference = Service.from_artifact(source, ServeConfig(max_wait_ms=1))
    served = Service.from_artifact(exported, ServeConfig(max_wait_ms=1, canary_artifact=str(source), shadow=True))
    try:
        info = served.primary.info()
        assert info["format"] == exported.suffix.lstrip(".") and info["precision"] == "fp32"
        assert info["backend"] == ("onnx" if fmt == "onnx" else "openvino"), info
        assert info["version"] == served.primary.artifact.model_sha256[:12] != reference.primary.version
        assert info["patch_size"] == reference.primary.info()["patch_size"] and info["in_channels"] == 3
        want, got = reference.segment(image), served.segment(image)
        assert got.model is served.primary and got.labels.shape == want.labels.shape
        assert (got.labels == want.labels).mean() > 0.999
        np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-3)
    finally:
        reference.close()
        served.close()


def test_an_exported_model_is_not_served_under_a_pin_or_signature_policy(artifact_path, tmp_path):
    import shutil

    from unetkit.export.onnx import export_artifact

    exported = export_artifact(shutil.copy(artifact_path, tmp_path / "model.unetkit")).model_path
    with pytest.raises(ConfigError, match="model.onnx: signatures and sha256 pins cover model artifacts"):
        Service.from_artifact(exported, ServeConfig(sha256="0" * 64))
