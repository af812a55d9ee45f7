"""Batch prediction on a real Ray cluster started by the tests: a head and one more node (two
raylets of one CPU each, `ray.cluster_utils.Cluster`, on this machine's own address: Ray resolves
127.0.0.1 to it). One cluster for the module; the Ray runs are few and small (start-up is seconds)."""

from __future__ import annotations

import filecmp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import ray
import tifffile
import torch
from ray.cluster_utils import Cluster
from tests.evaluation_fixtures import tiny_artifact
from tests.test_cli import assert_one_line_error, run_cli

import unetkit.inference.distributed as distributed
from unetkit.config import OutputConfig
from unetkit.data.io import write_png
from unetkit.errors import InputError, WorkersLost
from unetkit.inference.distributed import JOURNAL_DIR, predict_files_ray
from unetkit.inference.files import in_memory_bytes, predict_files

# a tall tiled TIFF whose in-memory footprint is over this limit while streaming it fits: streamed, in 4 stripes
STREAMED = (1200, 200)
LIMIT = in_memory_bytes(*STREAMED, 3, 2) - 1


def start_cluster(attempts: int = 3) -> Cluster:
    """Ray gives a node 30 s to register (hard-coded); on a machine loaded far beyond its cores
    that can pass, so a node that timed out is started again (its processes stopped first)."""
    for attempt in range(attempts):
        nodes = Cluster()
        try:
            nodes.add_node(num_cpus=1, object_store_memory=100_000_000, include_dashboard=False)
            nodes.add_node(num_cpus=1, object_store_memory=100_000_000)
            nodes.wait_for_nodes()
            return nodes
        except Exception:
            nodes.shutdown()
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    nodes = start_cluster()
    try:
        ray.init(address=nodes.address, logging_level="ERROR", log_to_driver=False)
        yield nodes
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("model") / "model.unetkit", seed=5)


def images(folder: Path, n: int, rng: np.random.Generator, size: tuple[int, int] = (70, 61)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(folder / f"im{i:02d}.png", rng.integers(0, 255, (size[0] + i, size[1], 3), dtype=np.uint8))
    return folder


def local(model: Path, inputs: list[Path], out: Path, **kwargs) -> None:
    """The local path, at the workers' one thread (float sums in the network depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        predict_files(model, inputs, out, backend="torch", progress=False, **kwargs)
    except InputError:
        pass  # the bad input: compared below
    finally:
        torch.set_num_threads(threads)


def same_files(a: Path, b: Path) -> list[str]:
    """The files under `a` and `b` (the run journal aside) after checking that they are identical:
    byte for byte, and TIFF pixels and GeoTIFF tags."""
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file() and JOURNAL_DIR not in p.parts)
    for name in names:
        if name.endswith(".tif"):
            with tifffile.TiffFile(a / name) as x, tifffile.TiffFile(b / name) as y:
                np.testing.assert_array_equal(x.asarray(), y.asarray())
                assert {t.code: t.value for t in x.pages.first.tags.values() if t.code > 33000} == \
                       {t.code: t.value for t in y.pages.first.tags.values() if t.code > 33000}
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    return names


def test_ray_writes_what_the_local_path_writes_names_a_bad_input_and_a_rerun_skips_finished_ones(cluster, model, tmp_path, rng):
    """Images, a streamed tiled GeoTIFF (its 4 stripes spread over both nodes) and a corrupt file:
    the same masks, probabilities, GeoJSON, COCO and tiled BigTIFFs as the local path; the bad file
    is reported by name and the rest finish; the same command again skips what is finished."""
    folder = images(tmp_path / "in", 3, rng)
    geo = [(33550, "d", 3, (2.0, 2.0, 0.0), True), (33922, "d", 6, (0.0, 0.0, 0.0, 500.0, 900.0, 0.0), True)]
    tifffile.imwrite(folder / "scene.tif", rng.integers(0, 255, (*STREAMED, 3), dtype=np.uint8), tile=(32, 32),
                     photometric="rgb", extratags=geo)
    (folder / "broken.png").write_bytes(b"not a png")
    options = dict(probabilities=True, geojson=True, coco=True, max_memory=LIMIT)
    local(model, [folder], tmp_path / "local", **options)
    report = predict_files_ray(model, [folder], tmp_path / "ray", outputs=OutputConfig(**options), backend="torch",
                               threads=1, progress=False)
    names = same_files(tmp_path / "local", tmp_path / "ray")
    assert {"scene_mask.tif", "scene_prob.tif", "coco.json", "im00.geojson", "im02_prob.tif"} <= set(names)
    assert list(report.failed) == [str(folder / "broken.png")] and "broken.png: unreadable" in report.failed[str(folder / "broken.png")]
    assert len(report.nodes) == 2 and sum(n.tasks for n in report.nodes.values()) == 3 + 4 + 1  # 3 images, 4 stripes, 1 bad
    assert not report.lost and not report.reruns and len(report.results) == 4
    assert "4 inputs predicted on 2 Ray workers" in report.summary()
    with pytest.raises(InputError, match="1 of 5 inputs failed .*broken.png"):
        report.raise_for_failures()

    again = predict_files_ray(model, [folder], tmp_path / "ray", outputs=OutputConfig(**options), backend="torch",
                              threads=1, progress=False)
    assert sorted(again.skipped) == sorted(str(folder / n) for n in ("im00.png", "im01.png", "im02.png", "scene.tif"))
    assert sum(n.tasks for n in again.nodes.values()) == 1 and list(again.failed) == list(report.failed)
    assert same_files(tmp_path / "local", tmp_path / "ray") == names
    (folder / "broken.png").unlink()  # a run with nothing left to do removes its journal
    predict_files_ray(model, [folder], tmp_path / "ray", outputs=OutputConfig(**options), backend="torch", progress=False)
    assert not (tmp_path / "ray" / JOURNAL_DIR).exists()


def _kill_a_busy_worker(killed: list[int], stop: threading.Event) -> None:
    """SIGKILL the first worker process seen predicting an input (Ray titles it with the method)."""
    me = psutil.Process()
    while not stop.is_set() and not killed:
        for p in me.children(recursive=True):
            try:
                title = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::PredictWorker.predict_input"):
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p.pid)
                return
        time.sleep(0.005)


@pytest.mark.parametrize("retries", [True, False], ids=["rerun", "lost"])
def test_a_worker_killed_mid_run(cluster, model, tmp_path, rng, monkeypatch, retries):
    """A real SIGKILL of a worker process while it predicts. With Ray's retries its task runs again on
    the restarted actor: every output complete, once, identical to the local path, no temp file
    left, and the report names the rerun. Without retries the input is lost: named, the others
    finish, and the run ends in `WorkersLost` (exit status 4)."""
    if not retries:
        monkeypatch.setattr(distributed, "MAX_RESTARTS", 0)
        monkeypatch.setattr(distributed, "MAX_TASK_RETRIES", 0)
    folder = images(tmp_path / "in", 10, rng, size=(300, 260))
    local(model, [folder], tmp_path / "local", probabilities=True)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_busy_worker, args=(killed, stop))
    killer.start()
    try:
        report = predict_files_ray(model, [folder], tmp_path / "ray", outputs=OutputConfig(probabilities=True),
                                   backend="torch", threads=1, progress=False)
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker was seen predicting"
    assert not list((tmp_path / "ray").rglob(".*.tmp"))
    if retries:  # the task it was running and the one queued behind it
        assert 1 <= len(report.reruns) <= distributed.IN_FLIGHT and not report.lost and not report.failed
        assert "ran again after their worker died" in report.summary()
        same_files(tmp_path / "local", tmp_path / "ray")
        report.raise_for_failures()
    else:
        assert 1 <= len(report.lost) <= distributed.IN_FLIGHT and not report.failed
        for lost in report.lost:
            assert not list((tmp_path / "ray").glob(Path(lost).stem + "_*"))
        written = sorted(p.name for p in (tmp_path / "ray").glob("*.*") if p.name != JOURNAL_DIR)
        assert len(written) == 2 * (10 - len(report.lost))
        assert len(list((tmp_path / "ray" / JOURNAL_DIR).rglob("*.json"))) == 10 - len(report.lost)  # kept for a rerun
        assert all(filecmp.cmp(tmp_path / "local" / n, tmp_path / "ray" / n, shallow=False) for n in written)
        first = Path(sorted(report.lost)[0]).name
        with pytest.raises(WorkersLost, match=f"{len(report.lost)} inputs not predicted.*{first}: worker lost.*rerun the same"):
            report.raise_for_failures()


def test_cli_engine_ray_and_an_unreachable_cluster(cluster, model, tmp_path, rng):
    folder = images(tmp_path / "in", 2, rng)
    proc = run_cli("predict", str(model), str(folder), "--out", str(tmp_path / "out"), "--engine", "ray",
                   "--address", cluster.address, "--backend", "torch", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "2 inputs predicted on 2 Ray workers" in proc.stderr and "wrote 2 files" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im00_mask.png", "im01_mask.png"]

    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    start = time.monotonic()
    proc = run_cli("predict", str(model), str(folder), "--engine", "ray", "--address", f"127.0.0.1:{port}")
    assert proc.returncode == 2 and time.monotonic() - start < 60
    assert_one_line_error(proc, f"no Ray cluster reachable at 127.0.0.1:{port}")
    proc = subprocess.run([sys.executable, "-m", "unetkit", "predict", str(model), str(folder), "--engine", "ray",
                           "--address", "nowhere"], capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc, "--address 'nowhere': expected HOST:PORT")


def test_a_half_resolution_models_large_input_streams_whole_on_one_worker(cluster, model, tmp_path, rng):
    """Stripes are bands of native tile rows: a model trained at half resolution gets one task per
    streamed input, which its worker streams as the local path does, and writes the same files."""
    from unetkit.artifact import update_artifact

    half = tmp_path / "half.unetkit"
    half.write_bytes(model.read_bytes())
    update_artifact(half, resolution=0.5)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "scene.tif", rng.integers(0, 255, (*STREAMED, 3), dtype=np.uint8), tile=(32, 32),
                     photometric="rgb")
    options = dict(probabilities=True, max_memory=LIMIT)
    local(half, [folder], tmp_path / "local", **options)
    report = predict_files_ray(half, [folder], tmp_path / "ray", outputs=OutputConfig(**options), backend="torch",
                               threads=1, progress=False)
    assert same_files(tmp_path / "local", tmp_path / "ray") == ["scene_mask.tif", "scene_prob.tif"]
    assert sum(n.tasks for n in report.nodes.values()) == 1 and not report.failed
    assert tifffile.imread(tmp_path / "ray" / "scene_mask.tif").shape == STREAMED
