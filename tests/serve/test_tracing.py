"""OpenTelemetry traces of served requests (the SDK's in-memory exporter, and a real OTLP/HTTP
receiver on loopback) and the per-request record behind X-Request-ID / X-Model-Version / the sample log."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra (pip install 'unetkit[otel]')")

from fastapi.testclient import TestClient  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from tests.serve.otlp_receiver import OtlpReceiver  # noqa: E402
from tests.serve.samples import png_of, synthetic_image  # noqa: E402
from unetkit.config import ServeConfig  # noqa: E402
from unetkit.errors import ConfigError  # noqa: E402
from unetkit.serve.app import create_app  # noqa: E402
from unetkit.serve.service import SegmentOptions, Service  # noqa: E402
from unetkit.serve.tracing import RequestContext, Tracing, traceparent_trace_id  # noqa: E402

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
STAGES = ["receive", "decode", "queue wait", "forward", "postprocess", "encode"]


def in_memory() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def started(config: ServeConfig, tracing: Tracing | None = None) -> TestClient:
    client = TestClient(create_app(config, tracing)).__enter__()
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return client


def test_traceparent_parsing() -> None:
    assert traceparent_trace_id(TRACEPARENT) == TRACE
    for bad in (None, "", "garbage", f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01",
                f"ff-{TRACE}-{PARENT}-01", f"00-{TRACE[:-1]}-{PARENT}-01", f"00-{TRACE}-{PARENT}-01-extra"):
        assert traceparent_trace_id(bad) is None, bad


def test_tracing_is_off_unless_the_otel_variables_ask() -> None:
    assert Tracing.from_environment({}) is None
    assert Tracing.from_environment({"OTEL_SERVICE_NAME": "x"}) is None  # naming is not asking
    assert Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                     "OTEL_SDK_DISABLED": "true"}) is None
    assert Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                                     "OTEL_TRACES_EXPORTER": "none"}) is None
    on = Tracing.from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert on is not None
    on.shutdown()
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER=zipkin: unknown exporter 'zipkin'"):
        Tracing.from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc: .*http/protobuf"):
        Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
                                  "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_a_request_is_traced_from_receive_to_encode(artifact_path) -> None:
    tracing, exporter = in_memory()
    client = started(ServeConfig(artifact=str(artifact_path), max_wait_ms=2), tracing)
    try:
        exporter.clear()
        r = client.post("/v1/segment", content=png_of(synthetic_image(150, 130)),
                        headers={"Content-Type": "image/png", "traceparent": TRACEPARENT})
        assert r.status_code == 200
        spans = exporter.get_finished_spans()
    finally:
        client.__exit__(None, None, None)
    [root] = [s for s in spans if s.name == "POST /v1/segment"]
    assert format(root.context.trace_id, "032x") == TRACE and format(root.parent.span_id, "016x") == PARENT
    assert root.attributes["http.response.status_code"] == 200 and root.attributes["http.route"] == "/v1/segment"
    assert root.attributes["unetkit.model_version"] == r.headers["X-Model-Version"]
    assert root.attributes["unetkit.request_id"] == r.headers["X-Request-ID"]
    children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
                      key=lambda s: s.start_time)
    names = [s.name for s in children]
    assert set(names) == set(STAGES), names
    assert names[:2] == ["receive", "decode"] and names[-2:] == ["postprocess", "encode"]
    forwards = [s for s in children if s.name == "forward"]
    waits = [s for s in children if s.name == "queue wait"]
    # a 150x130 image in 64-px tiles: every tile went through some forward pass
    assert len(forwards) == len(waits) >= 1
    assert sum(s.attributes["unetkit.tiles"] for s in forwards) == sum(s.attributes["unetkit.tiles"] for s in waits) > 1
    for w, f in zip(waits, forwards, strict=True):
        assert w.end_time == f.start_time and f.attributes["unetkit.batch.size"] >= f.attributes["unetkit.tiles"]
    # the answer names the server span: same trace, the root's span id
    assert r.headers["traceparent"] == f"00-{TRACE}-{format(root.context.span_id, '016x')}-01"


def test_an_invalid_traceparent_starts_a_new_trace(artifact_path) -> None:
    tracing, exporter = in_memory()
    client = started(ServeConfig(artifact=str(artifact_path), max_wait_ms=2), tracing)
    try:
        r = client.post("/v1/segment", content=png_of(synthetic_image(64, 64)),
                        headers={"Content-Type": "image/png", "traceparent": "00-not-a-trace-01"})
    finally:
        client.__exit__(None, None, None)
    assert r.status_code == 200
    trace_id = traceparent_trace_id(r.headers["traceparent"])
    assert trace_id and trace_id != TRACE
    [root] = [s for s in exporter.get_finished_spans() if s.name == "POST /v1/segment"]
    assert root.parent is None and format(root.context.trace_id, "032x") == trace_id


def test_requests_sharing_a_batch_are_linked(artifact_path) -> None:
    tracing, exporter = in_memory()
    svc = Service.from_artifact(artifact_path, ServeConfig(max_batch_size=8, max_wait_ms=200))
    contexts = [RequestContext.start(f"r{i}", {}, tracing, "segment", {}) for i in range(6)]
    barrier = threading.Barrier(6)

    def run(i: int) -> None:
        barrier.wait()
        svc.segment(synthetic_image(64, 64, seed=i), SegmentOptions(context=contexts[i]))  # one tile each

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    svc.close()
    for c in contexts:
        c.finish(200, {})
    spans = exporter.get_finished_spans()
    roots = {s.context.span_id: s for s in spans if s.name == "segment"}
    forwards = [s for s in spans if s.name == "forward"]
    assert len(forwards) == 6 and sum(s.attributes["unetkit.tiles"] for s in forwards) == 6
    shared = [s for s in forwards if s.attributes["unetkit.batch.requests"] > 1]
    assert shared, [s.attributes for s in forwards]
    for s in forwards:  # linked to exactly the other requests of its batch, which share its times
        assert len(s.links) == s.attributes["unetkit.batch.requests"] - 1
        for link in s.links:
            assert link.context.span_id in roots and link.context.span_id != s.parent.span_id
            peer = next(f for f in forwards if f.parent.span_id == link.context.span_id)
            assert (peer.start_time, peer.end_time) == (s.start_time, s.end_time)


def test_untraced_requests_still_carry_request_model_and_callers_trace(artifact_path, tmp_path, caplog) -> None:
    """Tracing off: no spans, no traceparent out; the caller's trace id still reaches the sample and the log,
    and an error after the model was chosen still names the model."""
    config = ServeConfig(artifact=str(artifact_path), max_wait_ms=2, sample_dir=str(tmp_path / "samples"),
                         sample_rate=1.0, max_output_values=10)
    client = started(config)
    try:
        assert client.app.state.unetkit.tracing is None
        r = client.post("/v1/segment", content=png_of(synthetic_image(64, 64)),
                        headers={"Content-Type": "image/png", "traceparent": TRACEPARENT, "X-Request-ID": "alert-42"})
        assert r.status_code == 200 and "traceparent" not in r.headers
        assert r.headers["X-Request-ID"] == "alert-42" and len(r.headers["X-Model-Version"]) == 12
        client.app.state.unetkit.sampler.flush()
        [sample] = list((tmp_path / "samples").iterdir())
        meta = json.loads((sample / "meta.json").read_text())
        assert meta["request_id"] == "alert-42" and meta["trace_id"] == TRACE
        assert meta["model_version"] == r.headers["X-Model-Version"] and meta["model_name"] == "tiny"
        assert sample.name.endswith("-alert-42")
        # 413: too many RLE values -- refused after the model answered, and the answer names that model
        err = client.post("/v1/segment?format=json&include=rle", content=png_of(synthetic_image(64, 64)),
                          headers={"Content-Type": "image/png"})
        assert err.status_code == 413 and err.headers["X-Model-Version"] == r.headers["X-Model-Version"]
        assert err.headers["X-Request-ID"]
    finally:
        client.__exit__(None, None, None)


def test_spans_reach_a_real_otlp_receiver(artifact_path, monkeypatch) -> None:
    receiver = OtlpReceiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "segmenter-test")
        client = started(ServeConfig(artifact=str(artifact_path), max_wait_ms=2))  # tracing from the variables
        try:
            r = client.post("/v1/segment", content=png_of(synthetic_image(64, 64)),
                            headers={"Content-Type": "image/png", "traceparent": TRACEPARENT})
            assert r.status_code == 200
        finally:
            client.__exit__(None, None, None)  # shutdown flushes the batch processor
        spans = [s for s in receiver.spans if s["trace_id"] == TRACE]
        assert {s["name"] for s in spans} == {"POST /v1/segment", *STAGES}
        [root] = [s for s in spans if s["name"] == "POST /v1/segment"]
        assert root["parent_span_id"] == PARENT and root["service"] == "segmenter-test"
        assert root["attributes"]["unetkit.request_id"] == r.headers["X-Request-ID"]
        assert all(s["parent_span_id"] == root["span_id"] for s in spans if s is not root)
        assert all(s["start"] <= s["end"] for s in spans)
    finally:
        receiver.close()


def test_serve_refuses_an_unknown_exporter_in_one_line(artifact_path) -> None:
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "unetkit", "serve", str(artifact_path), "--port", "0"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OTEL_TRACES_EXPORTER": "zipkin"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [("error: OTEL_TRACES_EXPORTER=zipkin: unknown exporter 'zipkin'; "
                                                     "expected otlp, console, none")]
