"""Load test of `unetkit serve` on 127.0.0.1, compared with offline batched inference of the same model.

    .venv/bin/python benchmarks/serve_load.py                     # full run: 10,000 requests
    .venv/bin/python benchmarks/serve_load.py --requests 300 --no-append   # smoke run

For each image size (256x256, 1024x1024) and number of concurrent clients (1, 8, 32), a bounded
async httpx client sends raw PNG bodies in a closed loop and records throughput, p50/p95/p99
latency and errors. Then, for 256x256, an open-loop run at half the measured saturation rate
(Poisson arrivals) gives the latency a lightly loaded server offers. The server's RSS is read
before and after. Offline throughput: the same model through `predict_tiled` in this process,
batch size = the server's max batch size, no HTTP. The result table is appended to
docs/benchmarks.md with the command and the machine.

Targets: 0 errors; RSS flat within noise; at 32 clients throughput >= 85% of offline;
p95 <= 200 ms for 256x256 at half the saturation rate.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from report import append_markdown

ROOT = Path(__file__).resolve().parents[1]
# OpenMP's default active spin-wait makes a 2-thread torch forward up to 10x slower when other
# processes share the cores; passive waiting costs little on a quiet machine. Set before torch
# loads, here and (inherited) in the server, so both sides of the comparison run alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_artifact(path: Path, patch: int, width: int, depth: int) -> Path:
    import torch

    from unetkit.artifact import ArtifactMeta, save_artifact
    from unetkit.config import ModelConfig
    from unetkit.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=3, out_channels=2, depth=depth, base_width=width)
    meta = ArtifactMeta(model=cfg, class_names=("background", "foreground"), mean=(128.0,) * 3, std=(64.0,) * 3,
                        patch_size=(patch, patch), name=f"bench-unet-w{width}-d{depth}")
    return save_artifact(path, build_model(cfg).eval(), meta)


def png_image(size: int, seed: int = 0) -> tuple[np.ndarray, bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 60 + 120 * (((yy // 32) + (xx // 32)) % 2) + rng.normal(0, 20, (size, size))
    rgb = np.clip(np.stack([base, base * 0.9, base * 0.7], -1), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return rgb.transpose(2, 0, 1).astype(np.float32), buffer.getvalue()


def offline_throughput(artifact: Path, image: np.ndarray, batch: int, seconds: float) -> float:
    """Images per second through predict_tiled with batched tiles, no HTTP (1 / median time per
    image, robust to other processes' bursts)."""
    from unetkit.artifact import load_artifact
    from unetkit.config import TileConfig
    from unetkit.inference.backends import make_predictor
    from unetkit.inference.predict import predict_tiled

    art = load_artifact(artifact)
    predictor = make_predictor(art, "torch")
    cfg = TileConfig(tile_size=tuple(art.meta.patch_size), batch_size=batch)
    predict_tiled(predictor, image, cfg)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        predict_tiled(predictor, image, cfg).argmax(0)
        times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def closed_loop(url: str, body: bytes, clients: int, requests: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    remaining = requests

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            try:
                r = await client.post("/v1/segment", content=body, headers={"Content-Type": "image/png"})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return summary(latencies, errors, elapsed)


async def open_loop(url: str, body: bytes, rate: float, seconds: float, max_inflight: int = 256) -> dict[str, float]:
    """Poisson arrivals at `rate`/s for `seconds`; at most `max_inflight` outstanding (bounded)."""
    rng = np.random.default_rng(0)
    latencies: list[float] = []
    errors = 0
    gate = asyncio.Semaphore(max_inflight)

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal errors
        start = time.perf_counter()
        try:
            r = await client.post("/v1/segment", content=body, headers={"Content-Type": "image/png"})
            errors += r.status_code != 200
        except httpx.HTTPError:
            errors += 1
        latencies.append(time.perf_counter() - start)
        gate.release()

    tasks = []
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=max_inflight)) as client:
        start = next_at = time.perf_counter()
        while next_at - start < seconds:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await gate.acquire()
            tasks.append(asyncio.create_task(one(client)))
            next_at += rng.exponential(1.0 / rate)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return summary(latencies, errors, elapsed)


def summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "errors": errors, "throughput": len(ms) / elapsed,
            "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99))}


def start_server(artifact: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "UNETKIT_SERVE_MAX_BATCH_SIZE": str(args.batch), "UNETKIT_SERVE_MAX_WAIT_MS": str(args.wait_ms),
           "UNETKIT_SERVE_MAX_INFLIGHT": "64", "UNETKIT_SERVE_MAX_QUEUE": "1024", "UNETKIT_SERVE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "unetkit", "serve", str(artifact), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit("server exited during start-up")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server not ready within 120 s")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0]
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load avg {load:.2f} at start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="total closed-loop requests over all cells")
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=1, help="repeat each cell; the report gives medians")
    parser.add_argument("--artifact", type=Path, help="model to serve (default: a random-weight U-Net, 256 patches)")
    parser.add_argument("--width", type=int, default=16, help="base width of the default model")
    parser.add_argument("--depth", type=int, default=4, help="depth of the default model")
    parser.add_argument("--batch", type=int, default=8, help="server max batch size (and the offline batch)")
    parser.add_argument("--wait-ms", type=float, default=5.0)
    parser.add_argument("--open-seconds", type=float, default=20.0, help="duration of the half-saturation run")
    parser.add_argument("--offline-seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-append", action="store_true", help="print only; do not touch docs/benchmarks.md")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="unetkit-bench-"))
    artifact = args.artifact or build_artifact(tmp / "bench.unetkit", 256, args.width, args.depth)
    images = {s: png_image(s) for s in sizes}
    host = machine()
    print(f"machine: {host}")
    offline = {s: offline_throughput(artifact, images[s][0], args.batch, args.offline_seconds) for s in sizes}
    print("offline batched images/s:", {s: round(v, 2) for s, v in offline.items()})

    cost = {s: (s / sizes[0]) ** 2 for s in sizes}  # a 1024x1024 request costs 16x a 256x256 one
    per_cell = {s: max(10, round(args.requests / len(levels) / cost[s] / sum(1 / c for c in cost.values())))
                for s in sizes}
    proc = start_server(artifact, args.port, args)
    url = f"http://127.0.0.1:{args.port}"
    rows = []
    try:
        for s in sizes:  # reach the memory high-water mark of the heaviest cells before the baseline
            asyncio.run(closed_loop(url, images[s][1], max(levels), max(levels)))
        rss_before = rss_mb(proc.pid)
        for s in sizes:
            for c in levels:
                n = max(per_cell[s], 2 * c)  # every client sends at least twice
                runs = [asyncio.run(closed_loop(url, images[s][1], c, n)) for _ in range(args.repeats)]
                row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                row.update(size=s, clients=c, errors=sum(r["errors"] for r in runs), offline=offline[s])
                rows.append(row)
                print(f"{s}x{s} clients={c:>2}: {row['throughput']:.2f} req/s ({row['throughput'] / offline[s]:.0%} of offline) "
                      f"p50 {row['p50']:.0f} p95 {row['p95']:.0f} p99 {row['p99']:.0f} ms, errors {row['errors']}")
        rss_after = rss_mb(proc.pid)
        open_row = None
        saturated = max((r for r in rows if r["size"] == sizes[0]), key=lambda r: r["throughput"])
        if args.open_seconds > 0:
            open_row = asyncio.run(open_loop(url, images[sizes[0]][1], saturated["throughput"] / 2, args.open_seconds))
            print(f"{sizes[0]}x{sizes[0]} open loop at {saturated['throughput'] / 2:.1f} req/s: p50 {open_row['p50']:.0f} "
                  f"p95 {open_row['p95']:.0f} p99 {open_row['p99']:.0f} ms, errors {open_row['errors']}")
        print(f"server RSS: {rss_before:.0f} MB before, {rss_after:.0f} MB after")
        healthy = httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(60)
    # offline again, now that the server is gone: keep the better figure, so a burst of other
    # load during one measurement cannot flatter the server's ratio
    for s in sizes:
        offline[s] = max(offline[s], offline_throughput(artifact, images[s][0], args.batch, args.offline_seconds))
    print("offline batched images/s (best of before/after):", {s: round(v, 2) for s, v in offline.items()})
    for row in rows:
        row["offline"] = offline[row["size"]]
    if not args.no_append:
        append_report(sys.argv, host, rows, open_row, saturated, rss_before, rss_after, healthy, args)


def append_report(argv: list[str], host: str, rows: list[dict], open_row: dict | None, saturated: dict,
                  rss_before: float, rss_after: float, healthy: bool, args: argparse.Namespace) -> None:
    top = max(r["clients"] for r in rows)
    lines = [
        f"\n## serve load ({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')})\n",
        f"- command: `{shlex.join(['python', *argv])}`",
        f"- machine: {host}",
        f"- server: max batch {args.batch}, max wait {args.wait_ms} ms; medians over {args.repeats} repeat(s)\n",
        "| image | clients | requests | req/s | % of offline | p50 ms | p95 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['size']}² | {r['clients']} | {int(r['requests'])} | {r['throughput']:.2f} | "
                     f"{r['throughput'] / r['offline']:.0%} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {int(r['errors'])} |")
    lines.append("")
    lines.append("offline batched: " + ", ".join(f"{s}² {v:.2f} img/s" for s, v in sorted({r['size']: r['offline'] for r in rows}.items())))
    if open_row:
        lines.append(f"\nopen loop {saturated['size']}² at half saturation ({saturated['throughput'] / 2:.1f} req/s): "
                     f"p50 {open_row['p50']:.0f} ms, p95 {open_row['p95']:.0f} ms, errors {int(open_row['errors'])}")
    lines.append(f"\nserver RSS {rss_before:.0f} MB before, {rss_after:.0f} MB after; healthy afterwards: {healthy}")
    errors = sum(int(r["errors"]) for r in rows) + int(open_row["errors"] if open_row else 0)
    at_top = [r["throughput"] / r["offline"] for r in rows if r["clients"] == top]
    lines.append(f"\ntargets: errors {errors} (0); RSS growth {rss_after - rss_before:+.0f} MB (flat); "
                 f"{top} clients at {min(at_top):.0%} of offline (>= 85%); "
                 + (f"p95 at half saturation {open_row['p95']:.0f} ms (<= 200 ms)" if open_row else "open loop not run"))
    path = append_markdown(ROOT / "docs" / "benchmarks.md", "\n".join(lines))
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
