"""What OpenTelemetry tracing costs `unetkit serve`: the same app with tracing off (the default) and on
(OTLP/HTTP protobuf to a loopback sink, the SDK's batch processor, as a deployment exports to a collector).

    .venv/bin/python benchmarks/tracing_overhead.py                  # 256x256 and 64x64 images, 300 requests each
    .venv/bin/python benchmarks/tracing_overhead.py --requests 60 --no-append   # smoke run

Both apps run in this process through FastAPI's TestClient (no sockets for the requests themselves),
sequential requests, in interleaved blocks of 20 (off, on, off, on, ...) so that the load of a shared
machine falls on both alike; medians per request and their ratio. Also the bare cost of one request's
record (`RequestContext`: the server span and the seven child spans a one-tile request gets) off and on,
without any HTTP or inference. Appends the table to docs/benchmarks.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from report import append_markdown

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as serve_load.py: fair under a shared machine
BLOCK = 20


class Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts and drops what it gets (the collector's side is not measured)."""

    received = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Sink.received += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def artifact(path: Path) -> Path:
    import torch

    from unetkit.artifact import ArtifactMeta, save_artifact
    from unetkit.config import ModelConfig
    from unetkit.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=3, out_channels=3, depth=3, base_width=8)
    meta = ArtifactMeta(model=cfg, class_names=("a", "b", "c"), mean=(120.0,) * 3, std=(60.0,) * 3, patch_size=(64, 64))
    return save_artifact(path, build_model(cfg).eval(), meta)


def png(size: int) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def started(app):  # noqa: ANN001, ANN201
    from fastapi.testclient import TestClient

    client = TestClient(app).__enter__()
    while client.get("/readyz").status_code != 200:
        time.sleep(0.02)
    return client


def request_latencies(model: Path, sizes: list[int], requests: int,
                      endpoint: str) -> dict[int, dict[str, list[tuple[float, float]]]]:
    """Per image size and setting: (wall seconds, process CPU seconds) of each request."""
    from unetkit.config import ServeConfig
    from unetkit.serve.app import create_app
    config = ServeConfig(artifact=str(model), max_wait_ms=2, log_level="warning")
    off = started(create_app(config))  # before the variable: tracing off, as by default
    assert off.app.state.unetkit.tracing is None
    os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint  # the exporter reads it itself
    clients = {"off": off, "on": started(create_app(config))}
    assert clients["on"].app.state.unetkit.tracing is not None
    out: dict[int, dict[str, list[tuple[float, float]]]] = {}
    try:
        for size in sizes:
            body = png(size)
            times: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
            for client in clients.values():  # warm-up
                for _ in range(5):
                    assert client.post("/v1/segment", content=body, headers={"Content-Type": "image/png"}).status_code == 200
            for _ in range(max(1, requests // BLOCK)):
                for name, client in clients.items():
                    for _ in range(BLOCK):
                        t0, c0 = time.perf_counter(), time.process_time()
                        r = client.post("/v1/segment", content=body, headers={"Content-Type": "image/png"})
                        times[name].append((time.perf_counter() - t0, time.process_time() - c0))
                        assert r.status_code == 200 and ("traceparent" in r.headers) == (name == "on")
            out[size] = times
    finally:
        for client in clients.values():
            client.__exit__(None, None, None)
    return out


def record_cost(repeats: int) -> dict[str, float]:
    """CPU microseconds per request record with the spans of a one-tile request, off and on (OTLP
    processor attached; `repeats` x 8 spans stay under the batch processor's queue of 2048)."""
    from unetkit.serve.tracing import RequestContext, Tracing

    tracing = Tracing.from_environment()
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}

    def one(t: Tracing | None) -> None:
        ctx = RequestContext.start("r", headers, t, "POST /v1/segment", {"http.request.method": "POST"})
        for name in ("receive", "decode"):
            with ctx.span(name):
                pass
        now = time.time_ns()
        ctx.batch(now, now, now + 1000, 1, 1, [])
        for name in ("postprocess", "encode"):
            with ctx.span(name):
                pass
        ctx.finish(200, {"http.route": "/v1/segment"})

    result = {}
    for name, t in (("off", None), ("on", tracing)):
        for _ in range(20):
            one(t)
        c0 = time.process_time()
        for _ in range(repeats):
            one(t)
        result[name] = (time.process_time() - c0) / repeats * 1e6
    assert tracing is not None
    tracing.shutdown()
    return result


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True, text=True)
                  .stdout.splitlines() if line.startswith("Model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per image size and setting")
    parser.add_argument("--sizes", default="256,64", help="square image sizes, comma-separated")
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    where = machine()
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory() as tmp:
        model = artifact(Path(tmp) / "m.unetkit")
        latencies = request_latencies(model, [int(s) for s in args.sizes.split(",")], args.requests, endpoint)
    time.sleep(6)  # the batch processor's queue drains (exports every 5 s)
    cost = record_cost(200)
    rows = []
    for size, times in latencies.items():
        med = {k: [statistics.median(v[i] for v in times[k]) * 1000 for i in (0, 1)] for k in ("off", "on")}
        rows.append(f"| {size}x{size} | {len(times['off'])} | {med['off'][0]:.2f} | {med['on'][0]:.2f} | "
                    f"{med['on'][0] / med['off'][0]:.3f} | {med['off'][1]:.2f} | {med['on'][1]:.2f} | "
                    f"{med['on'][1] / med['off'][1]:.3f} |")
    text = "\n".join([
        f"## Tracing overhead of `unetkit serve` ({started_at})",
        "",
        f"Command: `{shlex.join(['python', 'benchmarks/tracing_overhead.py', *sys.argv[1:]])}`; {where}. "
        "In-process TestClient, sequential requests, width-8 depth-3 U-Net on 64-px tiles; tracing on = "
        "OTLP/HTTP protobuf to a loopback sink through the SDK's batch processor; interleaved blocks of "
        f"{BLOCK} requests; medians per request of wall time and of the process's CPU time (all threads: "
        "the client, the route, the batcher, the exporter), the latter less sensitive to other processes. "
        f"The sink received {Sink.received} export calls.",
        "",
        "| image | requests each | wall ms, off | wall ms, on | on / off | CPU ms, off | CPU ms, on | on / off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"One request's record alone (server span + receive, decode, queue wait, forward, postprocess, encode), "
        f"CPU time: {cost['off']:.1f} µs off, {cost['on']:.1f} µs on.",
    ])
    print(text)
    if not args.no_append:
        print(f"appended to {append_markdown(ROOT / 'docs' / 'benchmarks.md', text)}")
    server.shutdown()


if __name__ == "__main__":
    main()
