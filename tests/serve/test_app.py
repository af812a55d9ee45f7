"""The HTTP API through FastAPI's TestClient: routes, error bodies, auth, limits, metrics, rollouts."""

from __future__ import annotations

import base64
import io
import json
import logging
import time

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from PIL import Image

from tests.serve.samples import png_of, synthetic_image
from unetkit.config import ServeConfig
from unetkit.data.rle import rle_to_mask
from unetkit.serve.app import create_app
from unetkit.serve.logs import LOGGER, JsonFormatter


def start(config: ServeConfig) -> TestClient:
    client = TestClient(create_app(config)).__enter__()
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)
    return client


@pytest.fixture(scope="module")
def client(artifact_path):
    c = start(ServeConfig(artifact=str(artifact_path), max_wait_ms=2, docs=True))
    yield c
    c.__exit__(None, None, None)


def metric(client: TestClient, line_start: str) -> float:
    text = client.get("/metrics").text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


def test_health_model_and_page(client, artifact_path):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}  # no version for a caller without a token
    info = client.get("/v1/model").json()
    assert info["name"] == "tiny" and len(info["version"]) == 12
    assert [c["name"] for c in info["classes"]] == ["background", "cell", "vessel"]
    assert info["classes"][1]["color"] == [230, 25, 75]
    assert info["in_channels"] == 3 and info["patch_size"] == [64, 64] and info["rollout"] == "none"
    assert info["backend"] == "torch"  # ServeConfig's default backend, as the predictor reports it
    page = client.get("/")
    assert page.status_code == 200 and "opacity" in page.text and "v1/segment" in page.text
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/*" in body
    assert "413" in spec["paths"]["/v1/segment"]["post"]["responses"]


def test_segment_png_multipart_and_raw(client):
    image = synthetic_image(100, 130)
    data = png_of(image)
    r = client.post("/v1/segment", files={"file": ("cells.png", data, "image/png")}, headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-request-id"] == "abc-123" and len(r.headers["x-model-version"]) == 12
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    assert mask.shape == (100, 130) and mask.max() <= 2
    raw = client.post("/v1/segment", content=data, headers={"Content-Type": "image/png"})
    assert raw.status_code == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(raw.content))), mask)
    assert len(raw.headers["x-request-id"]) == 32  # generated when the client sends none
    octet = client.post("/v1/segment", content=data, headers={"Content-Type": "application/octet-stream"})
    assert octet.status_code == 200


def test_segment_json_with_rle_polygons_and_images(client):
    data = png_of(synthetic_image(70, 90))
    mask = np.asarray(Image.open(io.BytesIO(client.post("/v1/segment", content=data).content)))
    r = client.post("/v1/segment?format=json&include=rle,polygons,mask,overlay,image&tta=true", content=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["tta"]) == (90, 70, True)
    assert sum(c["pixel_fraction"] for c in body["classes"]) == pytest.approx(1.0)
    assert 0.0 <= body["confidence"]["low_fraction"] <= 1.0 and body["timing"]["total_ms"] > 0
    tta_labels = np.zeros((70, 90), np.uint8)
    for i, c in enumerate(body["classes"]):
        tta_labels[rle_to_mask(body["rle"][c["name"]])] = i
    assert (tta_labels == mask).mean() > 0.9  # TTA may flip a few border pixels, no more
    assert body["polygons"]["type"] == "FeatureCollection"
    rgba = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
    assert rgba.shape == (70, 90, 4) and np.array_equal(rgba[..., 3] == 0, tta_labels == 0)
    for key in ("overlay_png", "image_png"):
        assert np.asarray(Image.open(io.BytesIO(base64.b64decode(body[key])))).shape == (70, 90, 3)
    accept = client.post("/v1/segment", content=data, headers={"Accept": "application/json"})
    assert accept.json()["model_role"] == "primary" and "rle" not in accept.json()


@pytest.mark.parametrize("output, media", [("color", "image/png"), ("overlay", "image/png"), ("probabilities", "image/tiff")])
def test_binary_outputs(client, output, media):
    r = client.post(f"/v1/segment?output={output}", content=png_of(synthetic_image(40, 50)))
    assert r.status_code == 200 and r.headers["content-type"] == media
    if output == "probabilities":
        probs = tifffile.imread(io.BytesIO(r.content))
        assert probs.shape == (3, 40, 50) and np.allclose(probs.sum(0), 1.0, atol=1e-4)
    else:
        assert np.asarray(Image.open(io.BytesIO(r.content))).shape == (40, 50, 3)


def test_large_image_is_tiled_and_16bit_tiff_accepted(client):
    image = (synthetic_image(300, 260) * 200).astype(np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, photometric="rgb", planarconfig="separate")
    r = client.post("/v1/segment?format=json", content=buffer.getvalue(), headers={"X-Filename": "big.tif"})
    assert r.status_code == 200, r.text
    assert (r.json()["width"], r.json()["height"]) == (260, 300)


def error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    return body["error"]["message"]


def test_error_codes_have_json_bodies(client):
    good = png_of(synthetic_image(32, 32))
    assert "not a PNG" in error(client.post("/v1/segment", content=b"\x00garbage" * 10), 415, "unsupported_media_type")
    error(client.post("/v1/segment", content=good, headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    error(client.post("/v1/segment", content=good[: len(good) // 2]), 400, "invalid_image")
    error(client.post("/v1/segment", content=b""), 400, "invalid_image")
    error(client.post("/v1/segment", files={"other": ("x.png", good, "image/png")}), 400, "invalid_image")
    error(client.post("/v1/segment", content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data; boundary=x"}),
          400, "invalid_image")
    assert "include" in error(client.post("/v1/segment?include=bogus", content=good), 422, "invalid_parameter")
    error(client.post("/v1/segment?output=jpeg", content=good), 422, "invalid_parameter")
    error(client.get("/v1/nothing"), 404, "not_found")
    error(client.get("/v1/segment"), 405, "method_not_allowed")
    assert client.get("/healthz").status_code == 200  # still alive


def test_limits_and_back_pressure(artifact_path):
    c = start(ServeConfig(artifact=str(artifact_path), max_body_bytes=20_000, max_pixels=64 * 64, max_inflight=1,
                          retry_after_seconds=3))
    try:
        big_body = png_of(np.random.default_rng(0).uniform(0, 255, (3, 120, 120)).astype(np.float32))
        assert len(big_body) > 20_000
        assert "20,000" in error(c.post("/v1/segment", content=big_body), 413, "body_too_large")
        assert "4,096" in error(c.post("/v1/segment", content=png_of(synthetic_image(65, 64))), 413, "image_too_large")
        with c.app.state.unetkit.service.admission():  # the one slot is taken
            r = c.post("/v1/segment", content=png_of(synthetic_image(32, 32)))
        assert "in flight" in error(r, 503, "overloaded") and r.headers["retry-after"] == "3"
        assert c.post("/v1/segment", content=png_of(synthetic_image(32, 32))).status_code == 200
        assert metric(c, 'unetkit_rejected_requests_total{reason="overloaded"}') == 1
    finally:
        c.__exit__(None, None, None)


def test_bearer_token(artifact_path, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    c = start(ServeConfig(artifact=str(artifact_path), token_file=str(secret)))
    try:
        r = c.get("/v1/model")
        error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        error(c.get("/v1/model", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ok = c.post("/v1/segment", content=png_of(synthetic_image(32, 32)), headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").json() == {"status": "ready"}  # probes stay open
        error(c.get("/metrics"), 401, "unauthorized")  # a plain token has every scope, metrics included
        assert c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ready = c.get("/readyz", headers={"Authorization": "Bearer s3cret"}).json()
        assert ready["model_version"] == c.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).json()["version"]
    finally:
        c.__exit__(None, None, None)


def test_failed_model_load_is_reported(tmp_path):
    bad = tmp_path / "bad.unetkit"
    bad.write_bytes(b"not a model")
    with TestClient(create_app(ServeConfig(artifact=str(bad)))) as c:
        deadline = time.monotonic() + 10
        while c.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json() == {"status": "failed"}  # no load error for anonymous callers
        assert c.get("/healthz").status_code == 500
        error(c.post("/v1/segment", content=b"x"), 503, "not_ready")


def test_metrics_report_traffic_batches_and_quality(client):
    for _ in range(3):
        client.post("/v1/segment", content=png_of(synthetic_image(64, 64)))
    client.post("/v1/segment", content=b"\x00garbage" * 10)  # a 415 of its own (not another test's)
    text = client.get("/metrics").text
    version = client.get("/v1/model").json()["version"]
    assert f'unetkit_model_info{{model_version="{version}",name="tiny",role="primary"}} 1.0' in text
    served = client.get("/v1/model").json()
    backend, precision = served["backend"], served["precision"]
    assert f'unetkit_model_backend{{backend="{backend}",model_version="{version}",precision="{precision}",role="primary"}} 1.0' in text
    assert metric(client, 'unetkit_http_requests_total{method="POST",route="/v1/segment",status="200"}') >= 3
    assert metric(client, 'unetkit_http_requests_total{method="POST",route="/v1/segment",status="415"}') >= 1
    assert metric(client, 'unetkit_http_request_duration_seconds_count{route="/v1/segment"}') >= 3
    assert metric(client, f'unetkit_batch_size_count{{model_version="{version}",role="primary"}}') >= 3
    assert metric(client, f'unetkit_inference_seconds_count{{model_version="{version}",role="primary"}}') >= 3
    assert metric(client, 'unetkit_queue_depth{role="primary"}') == 0
    assert metric(client, f'unetkit_predicted_class_fraction_count{{class_name="cell",model_version="{version}"}}') >= 3
    assert metric(client, f'unetkit_prediction_confidence_count{{model_version="{version}"}}') >= 3
    assert metric(client, "unetkit_ready ") == 1


def test_json_log_line_carries_the_request_id(client):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    try:
        client.post("/v1/segment", content=png_of(synthetic_image(32, 32)), headers={"X-Request-ID": "trace-42"})
    finally:
        LOGGER.removeHandler(handler)
    lines = [json.loads(JsonFormatter().format(r)) for r in records]
    access = [x for x in lines if x["message"] == "request"]
    assert access and access[-1]["request_id"] == "trace-42" and access[-1]["status"] == 200
    assert access[-1]["path"] == "/v1/segment" and access[-1]["duration_ms"] > 0


def test_canary_split_follows_the_percentage(artifact_path, candidate_path):
    c = start(ServeConfig(artifact=str(artifact_path), canary_artifact=str(candidate_path), canary_percent=25, seed=3))
    try:
        info = c.get("/v1/model").json()
        assert info["rollout"] == "canary" and info["candidate"]["name"] == "tiny-candidate"
        data = png_of(synthetic_image(16, 16))
        roles = [c.post("/v1/segment", content=data).headers["x-model-role"] for _ in range(120)]
        share = roles.count("candidate") / len(roles)
        assert 0.15 <= share <= 0.35, share
        assert metric(c, 'unetkit_model_requests_total{model_version="' + info["candidate"]["version"] + '",role="candidate"}') \
            == roles.count("candidate")
    finally:
        c.__exit__(None, None, None)


def test_shadow_mode_exports_agreement(artifact_path, candidate_path):
    c = start(ServeConfig(artifact=str(artifact_path), canary_artifact=str(candidate_path), shadow=True))
    try:
        for i in range(3):
            assert c.post("/v1/segment", content=png_of(synthetic_image(48, 48, seed=i))).headers["x-model-role"] == "primary"
        c.app.state.unetkit.service.wait_for_shadow()
        assert metric(c, "unetkit_shadow_agreement_iou_count") + metric(c, "unetkit_shadow_dropped_total") == 3
        assert metric(c, "unetkit_shadow_agreement_iou_count") >= 1
        assert 0.0 <= metric(c, "unetkit_shadow_agreement_iou_last") <= 1.0
    finally:
        c.__exit__(None, None, None)


def test_sampling_is_capped(artifact_path, tmp_path):
    folder = tmp_path / "samples"
    c = start(ServeConfig(artifact=str(artifact_path), sample_dir=str(folder), sample_rate=1.0, sample_max_bytes=6_000))
    try:
        for i in range(6):
            c.post("/v1/segment", content=png_of(synthetic_image(32, 32, seed=i)))
            c.app.state.unetkit.sampler.flush()  # samples are written by the sampler's thread
    finally:
        c.__exit__(None, None, None)
    samples = sorted(p for p in folder.iterdir() if p.is_dir())
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert 1 <= len(samples) < 6 and total <= 6_000
    meta = json.loads((samples[-1] / "meta.json").read_text())
    assert meta["model_version"] and (samples[-1] / "input.png").exists() and (samples[-1] / "mask.png").exists()


def test_unexpected_errors_are_500_json_and_the_server_lives_on(client, monkeypatch):
    service = client.app.state.unetkit.service

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(service, "segment", broken)
    r = client.post("/v1/segment", content=png_of(synthetic_image(32, 32)))
    assert "server log" in error(r, 500, "internal") and "simulated" not in r.text
    assert r.headers["x-request-id"]
    monkeypatch.undo()
    assert client.post("/v1/segment", content=png_of(synthetic_image(32, 32))).status_code == 200
