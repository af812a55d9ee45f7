"""A real server process: hostile inputs never kill it; SIGTERM lets in-flight requests finish."""

from __future__ import annotations

import signal
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import tifffile

from tests.serve.live import LiveServer
from tests.serve.samples import png_of, synthetic_image


@pytest.fixture(scope="module")
def server(artifact_path, tmp_path_factory):
    live = LiveServer(artifact_path, tmp_path_factory.mktemp("live") / "server.log", max_pixels=1_000_000,
                      max_body_bytes=2_000_000)
    yield live
    live.stop()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (valid CRC) followed by a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def tiff_of(image: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image.astype(np.uint8), photometric="rgb", planarconfig="separate")
    return buffer.getvalue()


def fuzz_cases(rng: np.random.Generator, n: int) -> list[tuple[str, bytes, str]]:
    good_png, good_tiff = png_of(synthetic_image(48, 40)), tiff_of(synthetic_image(40, 48))
    import io

    from PIL import Image

    jpeg = io.BytesIO()
    Image.fromarray(synthetic_image(40, 40).transpose(1, 2, 0).astype(np.uint8)).save(jpeg, format="JPEG")
    good_jpeg = jpeg.getvalue()
    fixed = [
        ("huge png header", png_claiming(100_000, 100_000), "image/png"),
        ("1x huge png", png_claiming(1, 2_000_000), "image/png"),
        ("zero-size png", png_claiming(0, 0), "image/png"),
        ("text", b"hello world", "text/plain"),
        ("json", b'{"image": 1}', "application/json"),
        ("pdf", b"%PDF-1.4\n" + rng.bytes(200), "application/octet-stream"),
        ("gif header only", b"GIF89a", "image/gif"),
        ("bmp header only", b"BM" + rng.bytes(10), "image/bmp"),
        ("tiff magic only", b"II*\x00", "image/tiff"),
        ("empty", b"", "image/png"),
        ("over body limit", rng.bytes(2_100_000), "image/png"),
    ]
    cases = list(fixed)
    for i in range(n - len(fixed)):
        kind = i % 5
        if kind == 0:
            source = [good_png, good_tiff, good_jpeg][i % 3]
            cases.append((f"truncated {i}", source[: int(rng.integers(1, len(source)))], "application/octet-stream"))
        elif kind == 1:
            cases.append((f"random {i}", rng.bytes(int(rng.integers(1, 5000))), "application/octet-stream"))
        elif kind == 2:
            magic = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF89a", b"BM"][i % 6]
            cases.append((f"magic + random {i}", magic + rng.bytes(int(rng.integers(0, 3000))), "application/octet-stream"))
        elif kind == 3:
            corrupt = bytearray([good_png, good_tiff, good_jpeg][i % 3])
            for pos in rng.integers(0, len(corrupt), 8):
                corrupt[pos] = int(rng.integers(0, 256))
            cases.append((f"bit flips {i}", bytes(corrupt), "application/octet-stream"))
        else:
            cases.append((f"multipart garbage {i}", rng.bytes(300), "multipart/form-data; boundary=xyz"))
    return cases


def test_fuzzed_inputs_never_kill_the_server(server):
    rng = np.random.default_rng(1234)
    statuses: dict[int, int] = {}
    start = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, body, ctype in fuzz_cases(rng, 120):
            r = client.post("/v1/segment", content=body, headers={"Content-Type": ctype})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code in (200, 400, 413, 415), (name, r.status_code, r.text[:300])
            if r.status_code != 200:
                assert set(r.json()["error"]) == {"code", "message"}, name
        assert time.monotonic() - start < 60
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        ok = client.post("/v1/segment", content=png_of(synthetic_image(64, 64)))
        assert ok.status_code == 200
        assert 'status="500"' not in client.get("/metrics").text
    assert server.proc.poll() is None
    assert statuses.get(413, 0) >= 3 and statuses.get(415, 0) >= 3 and statuses.get(400, 0) >= 10, statuses


def inflight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith("unetkit_http_inflight_requests "))


def test_sigterm_drains_in_flight_requests(artifact_path, tmp_path):
    live = LiveServer(artifact_path, tmp_path / "server.log", drain_seconds=20)
    results: list[int] = []
    big = png_of(synthetic_image(512, 512))

    def call() -> None:
        with httpx.Client(timeout=60) as c:
            results.append(c.post(f"{live.url}/v1/segment?tta=true", content=big).status_code)

    workers = [threading.Thread(target=call) for _ in range(2)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 20
    while inflight(live.url) < 3:  # the two segment requests + this metrics request
        assert time.monotonic() < deadline, "requests never reached the server"
        time.sleep(0.02)
    code = live.stop(timeout=60)
    for w in workers:
        w.join(60)
    assert results == [200, 200]
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    assert '"stopped"' in (tmp_path / "server.log").read_text()
