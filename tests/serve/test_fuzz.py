"""Fuzzing as a habit, bounded: schemathesis against the app's own OpenAPI schema (no answer is a
5xx), and Hypothesis properties of the upload decoder (random, truncated or mangled PNG/TIFF bytes
give a clean 4xx-type error, never a crash). Each test stays within a few seconds."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import schemathesis
import tifffile
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.samples import png_of, synthetic_image
from unetkit.config import ServeConfig
from unetkit.serve.app import create_app
from unetkit.serve.encoding import CorruptImage, ImageTooLarge, UnsupportedImage, decode_upload
from unetkit.serve.errors import STATUS

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def api_schema(artifact_path):
    app = create_app(ServeConfig(artifact=str(artifact_path), docs=True, max_pixels=128 * 128, max_body_bytes=200_000,
                                 max_wait_ms=1))
    with TestClient(app):  # runs the lifespan: the model is loaded and stays loaded for every case
        deadline = time.monotonic() + 30
        while app.state.unetkit.status != "ready":
            assert time.monotonic() < deadline, app.state.unetkit.error
            time.sleep(0.02)
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_schema_fuzzing_finds_no_5xx(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/segment", "/v1/model", "/readyz"}
    for operation in operations:

        @settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def no_5xx(case):  # noqa: ANN001, ANN202
            response = case.call()
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"

        no_5xx()


# ---------------------------------------------------------------- the decoder's properties

VALID = (png_of(synthetic_image(24, 20)), None)
_tiff = io.BytesIO()
tifffile.imwrite(_tiff, synthetic_image(24, 20).astype(np.uint16), photometric="minisblack", planarconfig="separate",
                 compression="zlib")
VALID_TIFF = _tiff.getvalue()
CLEAN = (CorruptImage, UnsupportedImage, ImageTooLarge)


def decodes_cleanly(data: bytes) -> None:
    try:
        image = decode_upload(data, "fuzz", max_pixels=64 * 64)
    except CLEAN as e:
        status = next(s for cls, s in STATUS if isinstance(e, cls))
        assert 400 <= status < 500 and str(e)
        return
    assert image.ndim == 3 and image.dtype == np.float32 and np.isfinite(image).all()


@FAST
@given(st.binary(max_size=512))
def test_random_bytes_are_refused_cleanly(data):
    decodes_cleanly(data)


@FAST
@given(st.sampled_from([VALID[0], VALID_TIFF]), st.data())
def test_truncated_images_are_refused_cleanly(data, draw):
    decodes_cleanly(data[: draw.draw(st.integers(0, len(data)))])


@FAST
@given(st.sampled_from([VALID[0], VALID_TIFF]), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                          min_size=1, max_size=8))
def test_mangled_images_are_refused_cleanly_or_decoded(data, edits):
    mangled = bytearray(data)
    for where, value in edits:
        mangled[where % len(mangled)] = value
    decodes_cleanly(bytes(mangled))
