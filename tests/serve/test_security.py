"""Issue 16's attacks on the HTTP service that the ASGI test client can reproduce, one test per case.

The attacks that need a real server and sockets (slow headers, slow and chunked bodies) are in
test_attacks_live.py."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from tests.serve.samples import png_of, synthetic_image
from unetkit.config import ServeConfig
from unetkit.errors import ConfigError, DataError
from unetkit.serve import encoding
from unetkit.serve.app import create_app
from unetkit.serve.auth import token_line
from unetkit.serve.logs import LOGGER
from unetkit.serve.render import OutputTooLarge, output_values, segment_json
from unetkit.serve.sampling import Sampler


def start(config: ServeConfig) -> TestClient:
    client = TestClient(create_app(config)).__enter__()
    deadline = time.monotonic() + 30
    while client.app.state.unetkit.status != "ready":
        assert time.monotonic() < deadline, client.app.state.unetkit.error
        time.sleep(0.02)
    return client


@pytest.fixture
def served(artifact_path):
    clients: list[TestClient] = []

    def make(**settings: object) -> TestClient:
        clients.append(start(ServeConfig(artifact=str(artifact_path), max_wait_ms=2, **settings)))
        return clients[-1]

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def error(r, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
    return r.json()["error"]["message"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- case 8: auth, roles, what is public


def test_case8_empty_token_file_is_an_error_not_auth_off(artifact_path, tmp_path):
    empty = tmp_path / "token"
    for text in ("", "\n  \n", "# only a comment\n"):
        empty.write_text(text)
        with pytest.raises(ConfigError, match="holds no token; refusing to run without auth"):
            create_app(ServeConfig(artifact=str(artifact_path), token_file=str(empty)))
    empty.write_text("sha256:abc alice segment\n")
    with pytest.raises(ConfigError, match=r"token:1: expected 'sha256:<64 hex digits>"):
        create_app(ServeConfig(artifact=str(artifact_path), token_file=str(empty)))
    empty.write_text(token_line("x", "alice", ("segment", "root")) + "\n")
    with pytest.raises(ConfigError, match=r"scopes \['root'\]"):
        create_app(ServeConfig(artifact=str(artifact_path), token_file=str(empty)))


def test_case8_scoped_hashed_tokens_are_reloaded_without_restart(served, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# hashed tokens\n{token_line('seg-secret', 'alice', ('segment',))}\n"
                      f"{token_line('scrape-secret', 'prometheus', ('metrics',))}\n")
    assert "seg-secret" not in tokens.read_text()
    c = served(token_file=str(tokens))
    image = png_of(synthetic_image(32, 32))
    assert c.post("/v1/segment", content=image, headers=bearer("seg-secret")).status_code == 200
    assert "lacks the 'model' scope" in error(c.get("/v1/model", headers=bearer("seg-secret")), 403, "forbidden")
    error(c.post("/v1/segment", content=image, headers=bearer("scrape-secret")), 403, "forbidden")
    error(c.post("/v1/segment", content=image), 401, "unauthorized")
    error(c.post("/v1/segment", content=image, headers=bearer("guess")), 401, "unauthorized")
    error(c.get("/metrics"), 401, "unauthorized")
    error(c.get("/metrics", headers=bearer("seg-secret")), 403, "forbidden")
    assert "unetkit_http_requests_total" in c.get("/metrics", headers=bearer("scrape-secret")).text
    # rotation: a new file is read on the next request (after the 1 s recheck), no restart
    tokens.write_text(f"{token_line('new-secret', 'alice', ('segment', 'model'))}\n")
    os.utime(tokens, (time.time() + 5, time.time() + 5))
    time.sleep(1.1)
    assert c.get("/v1/model", headers=bearer("new-secret")).status_code == 200
    error(c.post("/v1/segment", content=image, headers=bearer("seg-secret")), 401, "unauthorized")
    # a broken rewrite keeps the tokens we had: never auth off, never everyone locked out
    tokens.write_text("")
    os.utime(tokens, (time.time() + 10, time.time() + 10))
    time.sleep(1.1)
    assert c.get("/v1/model", headers=bearer("new-secret")).status_code == 200


def test_case8_the_identity_is_in_the_request_log(served, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("alice-secret", "alice") + "\n")
    c = served(token_file=str(tokens))
    lines: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = lines.append  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    try:
        c.get("/v1/model", headers=bearer("alice-secret"))
    finally:
        LOGGER.removeHandler(handler)
    requests = [r for r in lines if r.getMessage() == "request"]
    assert requests and requests[-1].fields["identity"] == "alice"  # type: ignore[attr-defined]


def test_case8_docs_off_readyz_and_healthz_say_only_the_state(served, tmp_path, artifact_path):
    c = served()
    for path in ("/docs", "/redoc", "/openapi.json"):
        error(c.get(path), 404, "not_found")
    assert c.get("/readyz").json() == {"status": "ready"}
    tokens = tmp_path / "tokens"
    tokens.write_text(token_line("m", "ops", ("model",)) + "\n")
    d = served(token_file=str(tokens), docs=True)
    assert d.get("/openapi.json").status_code == 200
    version = d.get("/v1/model", headers=bearer("m")).json()["version"]
    assert d.get("/readyz").json() == {"status": "ready"}
    assert d.get("/readyz", headers=bearer("wrong")).json() == {"status": "ready"}  # probes never answer 401
    assert d.get("/readyz", headers=bearer("m")).json() == {"status": "ready", "model_version": version}
    bad = tmp_path / "bad.unetkit"
    bad.write_bytes(b"not a model: /secret/path")
    with TestClient(create_app(ServeConfig(artifact=str(bad), token_file=str(tokens)))) as f:
        deadline = time.monotonic() + 10
        while f.app.state.unetkit.status == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert f.get("/readyz").json() == {"status": "failed"} and f.get("/healthz").json() == {"status": "failed"}
        assert "bad.unetkit" in f.get("/readyz", headers=bearer("m")).json()["error"]
        assert "secret" not in error(f.post("/v1/segment", content=b"x", headers=bearer("m")), 403, "forbidden")


def test_case8_no_token_on_a_public_address_is_warned_loudly(artifact_path):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    LOGGER.addHandler(handler)
    try:
        create_app(ServeConfig(artifact=str(artifact_path), host="0.0.0.0"))
        create_app(ServeConfig(artifact=str(artifact_path), host="127.0.0.1"))
    finally:
        LOGGER.removeHandler(handler)
    warnings = [r for r in records if "WITHOUT AUTHENTICATION" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


# ---------------------------------------------------------------- case 11: cross-site requests, formats


def test_case11_form_content_types_and_cross_site_requests_are_refused(served):
    c = served()
    image = png_of(synthetic_image(32, 32))
    for kind in ("application/x-www-form-urlencoded", "text/plain"):
        error(c.post("/v1/segment", content=image, headers={"Content-Type": kind}), 415, "unsupported_media_type")
    error(c.post("/v1/segment", content=image, headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "image/png"}),
          403, "forbidden")
    assert c.post("/v1/segment", content=image, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200


def test_case11_pillow_opens_only_the_expected_formats(tmp_path):
    ppm = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(ppm, format="PPM")
    path = tmp_path / "disguised.png"
    path.write_bytes(ppm.getvalue())
    from unetkit.data.io import decode_image, read_image

    with pytest.raises(DataError, match="unreadable or corrupt image"):
        read_image(path)
    with pytest.raises(DataError, match="unreadable or corrupt image"):
        decode_image(ppm.getvalue(), "x.png")
    with pytest.raises(encoding.CorruptImage):  # sniffed as BMP, a BMP it is not: Pillow tries no other format
        encoding.image_dimensions(b"BM" + ppm.getvalue(), "bmp")


# ---------------------------------------------------------------- case 2: TIFF pages x samples


def tiff_pages(pages: int, size: int, samples: int = 1) -> bytes:
    buffer = io.BytesIO()
    shape = (pages, size, size, samples) if samples > 1 else (pages, size, size)
    tifffile.imwrite(buffer, np.zeros(shape, np.uint8), compression="zlib",
                     photometric="rgb" if samples == 3 else "minisblack")
    return buffer.getvalue()


def test_case2_multipage_tiff_is_refused_before_decoding(served, monkeypatch):
    c = served(max_pixels=1_000_000)
    decoded: list[str] = []
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda self, *a, **k: decoded.append("page") or 1 / 0)
    pages16 = tiff_pages(16, 1000)
    assert len(pages16) < 100_000  # a few KB of zlib pages that would decode to 16 MB
    message = error(c.post("/v1/segment", content=pages16, headers={"Content-Type": "image/tiff"}), 413, "image_too_large")
    assert "more than 4 channels" in message
    four_d = tiff_pages(2, 64, samples=3)
    assert "4-D" in error(c.post("/v1/segment", content=four_d), 400, "invalid_image")
    too_big = tiff_pages(1, 1001)
    assert "max_pixels" in error(c.post("/v1/segment", content=too_big), 413, "image_too_large")
    assert decoded == []  # nothing was decoded


def test_case2_the_file_reader_checks_channels_before_decoding(tmp_path, monkeypatch):
    from unetkit.data import io as data_io

    path = tmp_path / "stack.tif"
    path.write_bytes(tiff_pages(2, 32, samples=3))
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", lambda *a, **k: 1 / 0)
    with pytest.raises(DataError, match="expected a 2-D image"):
        data_io.read_image(path)
    path.write_bytes(tiff_pages(data_io.MAX_CHANNELS + 1, 8))
    with pytest.raises(DataError, match=f"exceeds the limit of {data_io.MAX_CHANNELS}"):
        data_io.read_image(path)


def test_case2_many_channels_count_in_the_pixel_budget(served, monkeypatch):
    c = served()
    held: list[int] = []
    service = c.app.state.unetkit.service
    real = service.pixels
    monkeypatch.setattr(service, "pixels", lambda n, deadline=None: held.append(n) or real(n, deadline))
    c.post("/v1/segment", content=tiff_pages(3, 40))
    assert held == [40 * 40]


# ---------------------------------------------------------------- case 5: bodies held once, budgeted


def test_case5_bodies_in_memory_are_budgeted(served):
    c = served(max_inflight_body_bytes=10_000)
    big = png_of(np.random.default_rng(0).uniform(0, 255, (3, 80, 80)).astype(np.float32))
    assert len(big) > 10_000
    assert "max_inflight_body_bytes" in error(c.post("/v1/segment", content=big), 503, "overloaded")
    assert c.app.state.unetkit.bodies.used == 0  # given back
    small = png_of(synthetic_image(32, 32))
    assert c.post("/v1/segment", files={"file": ("a.png", small, "image/png")}).status_code == 200
    assert c.app.state.unetkit.bodies.used == 0


def test_case5_over_limit_answers_close_the_connection(served):
    c = served(max_body_bytes=1000)
    r = c.post("/v1/segment", content=b"\x89PNG" + b"x" * 5000)
    error(r, 413, "body_too_large")
    assert r.headers["connection"] == "close"


# ---------------------------------------------------------------- case 6: output amplification


def test_case6_noise_labels_with_rle_and_polygons_are_refused_before_tracing(served, monkeypatch):
    c = served(max_output_values=1_000_000)
    noise = np.random.default_rng(0).integers(0, 3, (1000, 1000)).astype(np.uint8)
    assert output_values(noise, {"rle", "polygons"}, 3) > 1_000_000
    service = c.app.state.unetkit.service
    real_segment = service.segment

    def noisy(image, options):  # the tiny model's labels on noise are not noisy enough: force them
        seg = real_segment(image, options)
        return type(seg)(noise, seg.confidence, seg.probabilities, seg.model, seg.summary, seg.seconds)

    monkeypatch.setattr(service, "segment", noisy)
    traced: list[int] = []
    monkeypatch.setattr("unetkit.serve.render.labels_to_geojson", lambda *a, **k: traced.append(1))
    start_time = time.monotonic()
    r = c.post("/v1/segment?format=json&include=rle,polygons", content=png_of(synthetic_image(64, 64)))
    assert "max_output_values" in error(r, 413, "output_too_large")
    assert traced == [] and time.monotonic() - start_time < 5
    assert c.post("/v1/segment?format=png", content=png_of(synthetic_image(64, 64))).status_code == 200


def test_case6_the_estimate_bounds_the_real_output():
    rng = np.random.default_rng(1)
    labels = (rng.uniform(size=(60, 70)) > 0.7).astype(np.uint8) + (rng.uniform(size=(60, 70)) > 0.9)
    from unetkit.inference.vectorize import labels_to_geojson, mask_to_rle

    runs = sum(len(mask_to_rle(labels == i)["counts"]) for i in range(3))
    coords = sum(2 * len(ring) for f in labels_to_geojson(labels, ("a", "b", "c"))["features"]
                 for ring in f["geometry"]["coordinates"])
    assert output_values(labels, {"rle"}, 3) >= runs
    assert output_values(labels, {"polygons"}, 3) >= coords
    with pytest.raises(OutputTooLarge):
        segment_json(type("S", (), {"labels": labels, "model": type("M", (), {"meta": type("m", (), {
            "class_names": ("a", "b", "c")})})})(), labels, {"rle"}, "r", {}, False, max_output_values=10)


# ---------------------------------------------------------------- case 14: huge finite floats


def test_case14_huge_finite_floats_give_no_nan_json_and_no_nan_metrics(served):
    c = served()
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.full((3, 64, 64), 3e38, np.float32), photometric="minisblack", planarconfig="separate")
    r = c.post("/v1/segment?format=json", content=buffer.getvalue())
    assert r.status_code in (200, 400), r.text
    json.loads(r.text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON answer"))
    for line in c.get("/metrics").text.splitlines():
        if not line.startswith("#") and line.split()[-1].lower() in ("nan", "+inf", "-inf"):
            assert "_bucket" in line and 'le="+Inf"' in line, line
    assert c.post("/v1/segment", content=png_of(synthetic_image(32, 32))).status_code == 200


def test_case14_metrics_never_observe_non_finite_values():
    from unetkit.serve.metrics import ServeMetrics

    metrics = ServeMetrics()
    model = type("M", (), {"role": "primary", "version": "v"})()
    metrics.prediction(model, {"classes": [{"name": "a", "pixel_fraction": math.nan}],
                               "confidence": {"mean": math.nan, "low_fraction": math.inf}})
    assert "nan" not in metrics.exposition().decode().lower()


# ---------------------------------------------------------------- case 12: private, atomic samples


def test_case12_samples_keep_pixels_only_privately_and_atomically(served, tmp_path, monkeypatch):
    folder = tmp_path / "samples"
    (folder / ".tmp-crashed").mkdir(parents=True)  # left by a crash: removed at start
    c = served(sample_dir=str(folder), sample_rate=1.0)
    image = Image.fromarray(synthetic_image(40, 40).transpose(1, 2, 0).astype(np.uint8))
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Dr. Secret, patient 1234")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    r = c.post("/v1/segment", files={"file": ("patient-1234.png", buffer.getvalue(), "image/png")})
    assert r.status_code == 200
    c.app.state.unetkit.sampler.flush()
    samples = [p for p in folder.iterdir()]
    assert len(samples) == 1 and not samples[0].name.startswith(".tmp-")
    sample = samples[0]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(sample.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in sample.iterdir()} == {0o600}
    saved = (sample / "input.png").read_bytes()
    assert b"Secret" not in saved and b"tEXt" not in saved
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(saved))), np.asarray(image))
    meta = (sample / "meta.json").read_text()
    assert "patient" not in meta and json.loads(meta)["name_sha256"]
    # a failing write (disk full) leaves no partial folder
    monkeypatch.setattr("unetkit.serve.sampling._write_private", lambda *a: (_ for _ in ()).throw(OSError(28, "No space")))
    assert c.post("/v1/segment", content=png_of(synthetic_image(32, 32))).status_code == 200
    c.app.state.unetkit.sampler.flush()
    assert [p.name for p in folder.iterdir()] == [sample.name]


def test_case12_samples_past_the_age_limit_are_deleted(tmp_path):
    old = tmp_path / "20200101T000000.000000-old"
    old.mkdir(parents=True)
    (old / "meta.json").write_text("{}")
    os.utime(old, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    sampler = Sampler(tmp_path, 1.0, 10**9, max_age_seconds=86400)
    try:
        assert not old.exists()
        assert sampler.maybe_save("r1", synthetic_image(8, 8), np.zeros((8, 8), np.uint8), {"name": "x"})
        sampler.flush()
        assert len(list(Path(tmp_path).iterdir())) == 1
    finally:
        sampler.close()


# ---------------------------------------------------------------- availability extras


def test_draining_is_visible_in_readyz_and_requests_are_still_answered(served):
    import uvicorn

    from unetkit.serve.connections import DrainingServer

    c = served()
    server = DrainingServer(uvicorn.Config(c.app), c.app.state.unetkit)
    server.handle_exit(15, None)  # what SIGTERM calls
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json() == {"status": "draining"}
    assert c.post("/v1/segment", content=png_of(synthetic_image(32, 32))).status_code == 200
    assert server.should_exit


def test_metrics_have_process_and_gc_collectors(served):
    text = served().get("/metrics").text
    assert "process_resident_memory_bytes" in text and "python_gc_collections_total" in text


def test_case7_max_pixels_above_the_inflight_budget_is_refused_at_start(artifact_path):
    """Before: the default max_pixels (64 M) exceeded max_inflight_pixels (16 M), so one request ran
    alone beyond the memory budget. Now the defaults agree and a config that breaks the rule says so."""
    assert ServeConfig().max_pixels <= ServeConfig().max_inflight_pixels
    with pytest.raises(ConfigError, match="max_pixels 2,000,000 exceeds max_inflight_pixels 1,000,000"):
        create_app(ServeConfig(artifact=str(artifact_path), max_pixels=2_000_000, max_inflight_pixels=1_000_000))
