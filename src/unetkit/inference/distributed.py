"""Batch prediction on a Ray cluster: the work of `files.predict_files`, spread over a pool of
model-holding actors.

Each actor (`PredictWorker`, one per `threads` CPUs of the cluster) receives the model once
through Ray's object store, makes its predictor on its own node (`backend="auto"` measures the
candidates there) and warms it up. An in-memory input is one task (`files.predict_input`, the
same code as the local path, writing the same files); a streamed (gigapixel) input is cut into
stripes of tile rows (`streaming.predict_rows`, bit for bit the local stream's rows) whose rows
the driver writes, in order, to the same tiled BigTIFF / zarr outputs (`streaming.StreamWriter`).
A model trained at reduced resolution streams such an input whole on one worker instead (stripes
are bands of native tile rows; `reduced.py` resamples its own bands).

Faults are Ray's to handle: actors restart (`max_restarts`) and the tasks of a killed worker
run again on the restarted one (`max_task_retries`). Every output is written atomically, and a
run journal in the out folder (`.unetkit-predict/<run key>/done/`) records which inputs are
finished: a task that finds its input done returns the recorded result instead of writing again,
and a rerun of the whole command (same model, tiling and outputs) skips finished inputs. A task
that comes back from another process than the one it was sent to ran again after its worker died
(the summary names it).
A run that finishes everything removes its journal. An input that fails is reported by name and
the rest finish; an input whose worker died more often than the retries allow is reported as lost
(`errors.WorkersLost`, exit status 4).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import Artifact, load_artifact
from unetkit.config import OutputConfig, TileChoice, TileConfig, to_dict
from unetkit.data.atomic import atomic_write
from unetkit.data.io import file_sha256, image_header
from unetkit.errors import ConfigError, InputError, UnetkitError, WorkersLost
from unetkit.inference.backends import make_predictor
from unetkit.inference.files import (
    InputResult,
    coco_document,
    collect_inputs,
    failure_message,
    is_zarr,
    predict_input,
    route,
    stream_outputs,
    tile_config_for,
)
from unetkit.inference.predict import resolve_tile_size, row_blocks
from unetkit.inference.streaming import (
    StreamWriter,
    check_memory,
    estimate_memory,
    geotiff_tags,
    open_lazy,
    predict_rows,
)

JOURNAL_DIR = ".unetkit-predict"
STRIPE_TILE_ROWS = 16  # tile rows per stripe: each stripe also predicts the one tile row reaching into it (~6 %)
CONNECT_TIMEOUT = 10.0  # seconds to reach a Ray head before giving up
MAX_RESTARTS = 4  # times an actor is restarted after its worker process dies
MAX_TASK_RETRIES = 2  # times a killed worker's task runs again on the restarted actor
IN_FLIGHT = 2  # tasks queued per actor, so that none waits for the driver between two tasks


# ---------------------------------------------------------------- the cluster


def require_ray() -> Any:
    try:
        import ray  # lazy: optional extra (unetkit[ray])
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'unetkit[ray]'") from None
    return ray


def connect(address: str | None, timeout: float = CONNECT_TIMEOUT) -> bool:
    """Join the Ray cluster at `address` (HOST:PORT of its head, "auto": the one running on this
    machine) or, for None, start one on this machine. True when this call started Ray in this
    process (the caller shuts it down). An unreachable address is a `ConfigError` within `timeout`."""
    import ray  # lazy: optional extra (unetkit[ray])

    if ray.is_initialized():
        return False
    if address not in (None, "auto") and "://" not in address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--address '{address}': expected HOST:PORT of a Ray head (what `ray start --head` prints) or 'auto'")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as e:
            raise ConfigError(f"no Ray cluster reachable at {address} ({e.strerror or e}, waited up to {timeout:g} s); start "
                              f"one there with `ray start --head --port {port}` or check --address") from None
    try:
        ray.init(address=address or "local", logging_level="ERROR", log_to_driver=False,
                 **({"include_dashboard": False} if address is None else {}))
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot join the Ray cluster at {address}: {first}") from None
    return True


def node_name() -> str:
    import ray  # lazy: optional extra (unetkit[ray])

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


class PredictWorker:
    """A Ray actor holding one model: its predictor is made and warmed up once, on its node."""

    def __init__(self, model: Any, tile_choice: TileChoice, outputs: OutputConfig, backend: str, threads: int) -> None:
        self.model, self.outputs = model, outputs
        self.tile = tile_config_for(model, tile_choice)
        self.predictor = make_predictor(model, backend=backend, threads=threads)
        th, tw = resolve_tile_size(self.tile, self.predictor)
        channels = getattr(self.predictor, "in_channels", None) or len(getattr(model.meta, "mean", ()) or (1,))
        self.predictor(np.zeros((self.tile.batch_size, channels, th, tw), dtype=np.float32))  # warm-up
        self.node, self.backend = node_name(), str(getattr(self.predictor, "backend", backend))

    def info(self) -> dict[str, Any]:
        return {"node": self.node, "backend": self.backend, "pid": os.getpid()}

    def predict_input(self, path: str, stem: str, out: str, journal: str) -> dict[str, Any]:
        """One in-memory input, as `files.predict_input` writes it; its result is journaled."""
        book = Journal(Path(journal))
        start = time.perf_counter()
        done = book.done(Path(path), stem)
        if done is not None:  # finished by an attempt that died before returning
            return {**self.info(), "result": done, "seconds": 0.0}
        try:
            result = predict_input(self.model, self.predictor, self.tile, Path(path), Path(stem), Path(out), self.outputs)
        except UnetkitError as e:
            return {**self.info(), "error": failure_message(Path(path), e), "seconds": time.perf_counter() - start}
        record = result_record(result)
        book.finish(Path(path), stem, record)
        return {**self.info(), "result": record, "seconds": time.perf_counter() - start}

    def predict_rows(self, path: str, rows: tuple[int, int], kinds: list[str]) -> dict[str, Any]:
        """One stripe of a streamed input: its output rows (labels, probabilities) for the driver."""
        start = time.perf_counter()
        try:
            arrays = predict_rows(self.predictor, path, self.tile, rows, kinds)
        except UnetkitError as e:
            return {**self.info(), "error": failure_message(Path(path), e), "seconds": time.perf_counter() - start}
        return {**self.info(), "rows": arrays, "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------- the run journal


def result_record(result: InputResult) -> dict[str, Any]:
    record = asdict(result)
    record.update(path=str(result.path), stem=str(result.stem), written=[str(p) for p in result.written])
    return record


def from_record(record: dict[str, Any]) -> InputResult:
    return InputResult(**{**record, "path": Path(record["path"]), "stem": Path(record["stem"]),
                          "written": [Path(p) for p in record["written"]]})


def run_key(model: Any, tile: TileConfig, outputs: OutputConfig) -> str:
    """What makes two runs the same run: the model's bytes, the tiling and the outputs asked for."""
    path = getattr(model, "path", None)
    identity = getattr(model.meta, "weights_sha256", "") or (file_sha256(path) if path else "")
    text = json.dumps({"model": identity, "tile": to_dict(tile), "outputs": to_dict(outputs)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Journal:
    """`<folder>/done/<h>.json`: an input's recorded result, valid while the input file is unchanged
    and its outputs exist (`h` hashes the input's output name)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, name: str) -> Path:
        return self.folder / "done" / (hashlib.sha256(name.encode()).hexdigest()[:24] + ".json")

    def done(self, path: Path, stem: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._file(stem).read_text())
        except (OSError, ValueError):
            return None
        if entry.get("input") != input_stamp(path) or not all(Path(p).exists() for p in entry["result"]["written"]):
            return None
        return entry["result"]

    def finish(self, path: Path, stem: str, record: dict[str, Any]) -> None:
        # not fsynced (one fsync per input was ~20 of Ray's ~50 ms per input): the outputs were made
        # durable before this record, so a record lost in a power cut only means the input is redone
        atomic_write(self._file(stem), json.dumps({"input": input_stamp(path), "result": record}).encode(),
                     durable=False)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()  # the journal folder, when no other run's journal is in it
        except OSError:
            pass


def input_stamp(path: Path) -> list[Any]:
    """The input as it was: size and modification time (a folder: its zarr metadata's)."""
    target = path / "zarr.json" if is_zarr(path) and (path / "zarr.json").exists() else path / ".zarray" if is_zarr(path) else path
    try:
        st = target.stat()
    except OSError:
        return [str(path)]
    return [str(path), st.st_size, st.st_mtime_ns]


# ---------------------------------------------------------------- the report


@dataclass
class NodeTime:
    backend: str
    tasks: int = 0
    inputs: int = 0
    pixels: int = 0
    seconds: float = 0.0  # in tasks (predicting and writing on the worker)


@dataclass
class DistributedReport:
    """What a distributed run did: results in input order, the inputs that failed (message each)
    or were lost with their workers, the tasks that ran again after a worker was lost, the inputs
    a previous run had finished, and each node's share of the work."""

    results: list[InputResult] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    reruns: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    nodes: dict[str, NodeTime] = field(default_factory=dict)
    workers: int = 0
    startup: float = 0.0  # until every worker had its model loaded and warmed up
    seconds: float = 0.0

    @property
    def pixels(self) -> int:
        return sum(r.pixels for r in self.results if str(r.path) not in self.skipped)

    def summary(self) -> str:
        done = len(self.results) - len(self.skipped)
        work = max(self.seconds - self.startup, 1e-9)
        lines = [f"{done} inputs predicted on {self.workers} Ray workers in {self.seconds:.1f} s, {self.startup:.1f} s of "
                 f"it starting the workers ({done / work:.2f} images/s, {self.pixels / 1e6 / work:.2f} MP/s once started)"]
        lines += [f"  {name}: {n.backend}, {n.tasks} tasks, {n.pixels / 1e6:.1f} MP, {n.seconds:.1f} s in tasks "
                  f"({100 * n.seconds / max(self.seconds, 1e-9):.0f}% of the run)" for name, n in sorted(self.nodes.items())]
        if self.skipped:
            lines.append(f"  {len(self.skipped)} inputs finished by an earlier run of this command: skipped")
        if self.reruns:
            lines.append(f"  {len(self.reruns)} tasks ran again after their worker died: {', '.join(sorted(set(self.reruns)))}")
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        """`WorkersLost` when inputs were lost with their workers, else `InputError` naming the
        inputs that failed; nothing when every input was predicted."""
        if self.lost:
            raise WorkersLost(f"{len(self.lost)} inputs not predicted, their workers died more often than the retries "
                              f"allow ({'; '.join(self.lost.values())}); rerun the same command to finish them")
        if self.failed:
            raise InputError(f"{len(self.failed)} of {len(self.results) + len(self.failed)} inputs failed (the others "
                             "were written): " + "; ".join(self.failed.values()))


# ---------------------------------------------------------------- the run


@dataclass
class _Stream:
    """A streamed input on the driver: its stripes, the rows that came back early, its writer."""

    path: Path
    stem: Path
    shape: tuple[int, int, int]
    stripes: list[tuple[int, int]]
    files: list[tuple[Path, str]]
    classes: int
    waiting: dict[int, list[np.ndarray]] = field(default_factory=dict)
    next: int = 0
    writer: StreamWriter | None = None
    failed: bool = False
    started: float = field(default_factory=time.perf_counter)


def predict_files_ray(
    model: str | Path | Artifact | Any,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: TileChoice = None,
    *,
    outputs: OutputConfig = OutputConfig(),
    backend: str = "auto",
    address: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    progress: bool = True,
) -> DistributedReport:
    """`files.predict_files` on a Ray cluster (`connect(address)`): the same outputs, from
    `workers` actors of `threads` CPUs each (default: as many as the cluster's CPUs allow). Every
    input path must be readable, and `out_dir` writable, under the same name on every node (a
    shared file system). Returns the report; `report.raise_for_failures()` raises for what failed."""
    ray = require_ray()
    from tqdm import tqdm

    artifact = load_artifact(model) if isinstance(model, (str, Path)) else model
    if threads < 1:
        raise ConfigError(f"threads {threads}: expected at least one CPU per worker")
    files = collect_inputs(inputs)
    tile = tile_config_for(artifact, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    journal = Journal(out / JOURNAL_DIR / run_key(artifact, tile, outputs))
    report = DistributedReport()
    started_ray = connect(address)
    start = time.perf_counter()
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        count = workers or max(1, cpus // threads)
        if count * threads > cpus:
            raise ConfigError(f"{count} workers x {threads} threads need {count * threads} CPUs; the cluster has {cpus}")
        options = dict(num_cpus=threads, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)
        shared = ray.put(artifact)
        pool = [ray.remote(PredictWorker).options(**options).remote(shared, config, outputs, backend, threads)
                for _ in range(count)]
        report.workers = count
        pids = [info["pid"] for info in ray.get([actor.info.remote() for actor in pool])]  # every model loaded and warm
        report.startup = time.perf_counter() - start
        tasks, streams, total = _plan(files, artifact, tile, outputs, out, journal, report)
        with tqdm(total=total, unit="px", unit_scale=True, desc=f"predict on {count} Ray workers", disable=not progress) as bar:
            _dispatch(pool, pids, tasks, streams, out, journal, report, bar)
    finally:
        if started_ray:
            ray.shutdown()
    report.seconds = time.perf_counter() - start
    order = {str(path): i for i, (path, _) in enumerate(files)}
    report.results.sort(key=lambda r: order[str(r.path)])
    report.written = [p for r in report.results for p in r.written]
    if outputs.coco and any(r.coco_image for r in report.results):
        doc = coco_document(report.results, artifact.meta.class_names)
        report.written.append(atomic_write(out / "coco.json", json.dumps(doc).encode()))
    if not report.failed and not report.lost:
        journal.clear()
    return report


def _plan(files: list[tuple[Path, Path]], artifact: Any, tile: TileConfig, outputs: OutputConfig, out: Path,
          journal: Journal, report: DistributedReport) -> tuple[deque[tuple[Any, ...]], dict[str, _Stream], int]:
    """The tasks: one per in-memory input, one per stripe of a streamed one (one whole for a reduced-
    resolution model); finished inputs skipped."""
    tasks: deque[tuple[Any, ...]] = deque()
    streams: dict[str, _Stream] = {}
    total = 0
    classes = len(artifact.meta.class_names)
    kinds = [kind for _, kind in stream_outputs(out, Path("x"), outputs)]
    tile_hw = resolve_tile_size(tile)
    for path, stem in files:
        done = journal.done(path, str(stem))
        if done is not None:
            report.results.append(from_record(done))
            report.skipped.append(str(path))
            continue
        try:
            how = route(path, classes, outputs.max_memory, bool(tile.resolutions))
            if how == "stream" and (tile.resolution != 1.0 or tile.resolutions):  # stripes are native rows: one
                how = "whole"  # worker streams it whole (`reduced.py`; multi-scale: refused), as the local path does
            if how == "stream":
                lazy = open_lazy(path)
                shape, source_dtype, chunk_rows = lazy.shape, lazy.array.dtype, lazy.chunk_rows
                lazy.close()
                estimate = estimate_memory(shape, classes, tile, tile_hw, source_itemsize=np.dtype(source_dtype).itemsize,
                                           probabilities_dtype="float16" if outputs.probabilities else None,
                                           source_chunk_rows=chunk_rows)
                check_memory(path, shape, estimate, outputs.max_memory)
        except UnetkitError as e:
            report.failed[str(path)] = failure_message(path, e)
            continue
        if how in ("memory", "whole"):
            try:
                header = image_header(path)
                total += header.height * header.width
            except UnetkitError:
                pass  # the worker reports it, as the local path does
            tasks.append(("input", str(path), str(stem)))
            continue
        bounds = row_blocks(shape[1], tile, tile_hw)
        stripes = [(bounds[i], bounds[min(i + STRIPE_TILE_ROWS, len(bounds) - 1)])
                   for i in range(0, len(bounds) - 1, STRIPE_TILE_ROWS)]
        streams[str(path)] = _Stream(path, stem, shape, stripes, stream_outputs(out, stem, outputs), classes)
        tasks.extend(("rows", str(path), rows, kinds) for rows in stripes)
        total += shape[1] * shape[2]
    return tasks, streams, total


def _dispatch(pool: list[Any], pids: list[int], tasks: deque[tuple[Any, ...]], streams: dict[str, _Stream], out: Path,
              journal: Journal, report: DistributedReport, bar: Any) -> None:
    """Keep every actor `IN_FLIGHT` tasks deep until all are done. Ray reruns a killed worker's
    tasks on its restarted actor: this loop sees them come back from another process than the one
    they were sent to (`pids`), and hears of failures only when they outlived the retries."""
    import ray  # lazy: optional extra (unetkit[ray])
    from ray.exceptions import RayActorError, RayTaskError

    load = [0] * len(pool)
    alive = [True] * len(pool)
    inflight: dict[Any, tuple[tuple[Any, ...], int, int]] = {}
    images = 0

    def submit() -> None:
        while tasks and any(alive):
            i = min((j for j in range(len(pool)) if alive[j]), key=lambda j: load[j])
            if load[i] >= IN_FLIGHT:
                return
            task = tasks.popleft()
            if task[0] == "input":
                ref = pool[i].predict_input.remote(task[1], task[2], str(out), str(journal.folder))
            else:
                ref = pool[i].predict_rows.remote(task[1], task[2], task[3])
            inflight[ref] = (task, i, pids[i])
            load[i] += 1

    submit()
    while inflight:
        [ref], _ = ray.wait(list(inflight), num_returns=1)
        task, i, sent_to = inflight.pop(ref)
        load[i] -= 1
        path = task[1]
        try:
            value = ray.get(ref)
        except RayActorError as e:
            report.lost[path] = f"{path}: worker lost ({type(e).__name__})"
            alive[i] = _alive(pool[i])
            _abort(streams.get(path))
            value = None
        except RayTaskError as e:  # a bug, not a bad input (those come back as "error")
            report.failed[path] = f"{path}: {type(e.cause).__name__ if e.cause else 'error'} in the worker: {e.cause or e}"
            _abort(streams.get(path))
            value = None
        if not any(alive):
            for rest in [*tasks, *(t for t, _, _ in inflight.values())]:
                report.lost.setdefault(rest[1], f"{rest[1]}: no worker left (every actor died more than {MAX_RESTARTS} times)")
            break
        if value is not None:
            node = report.nodes.setdefault(value["node"], NodeTime(value["backend"]))
            node.tasks += 1
            node.seconds += value["seconds"]
            if value["pid"] != sent_to:  # its worker died; Ray ran it again in the restarted one
                pids[i] = value["pid"]
                report.reruns.append(Path(path).name + (f" rows {task[2][0]}-{task[2][1]}" if task[0] == "rows" else ""))
            if "error" in value:
                report.failed[path] = value["error"]
                _abort(streams.get(path))
            elif task[0] == "input":
                result = from_record(value["result"])
                report.results.append(result)
                node.inputs += 1
                node.pixels += result.pixels
                images += 1
                bar.update(result.pixels)
            else:
                stream = streams[path]
                pixels = (task[2][1] - task[2][0]) * stream.shape[2]
                node.pixels += pixels
                bar.update(pixels)
                if _write_stripe(stream, task[2], value["rows"], journal, report):
                    images += 1
            bar.set_postfix_str(f"{images} images", refresh=False)
        submit()


def _write_stripe(stream: _Stream, rows: tuple[int, int], arrays: list[np.ndarray], journal: Journal,
                  report: DistributedReport) -> bool:
    """Write the stripes that are next in order; True when the input is complete (published)."""
    if stream.failed:
        return False
    stream.waiting[stream.stripes.index(rows)] = arrays
    try:
        if stream.writer is None:
            _, height, width = stream.shape
            stream.writer = StreamWriter(stream.files, height, width, stream.classes, extratags=geotiff_tags(stream.path))
        while stream.next in stream.waiting:
            stream.writer.add(stream.waiting.pop(stream.next))
            stream.next += 1
        if stream.next < len(stream.stripes):
            return False
        stream.writer.close(True)
    except UnetkitError as e:
        report.failed[str(stream.path)] = failure_message(stream.path, e)
        _abort(stream)
        return False
    _, height, width = stream.shape
    result = InputResult(stream.path, stream.stem, [p for p, _ in stream.files], height * width,
                         time.perf_counter() - stream.started, streamed=True)
    journal.finish(stream.path, str(stream.stem), result_record(result))
    report.results.append(result)
    return True


def _abort(stream: _Stream | None) -> None:
    if stream is not None and not stream.failed:
        stream.failed = True
        stream.waiting.clear()
        if stream.writer is not None:
            stream.writer.close(False)


def _alive(actor: Any) -> bool:
    """Whether the actor answers (Ray restarts it after its worker dies, up to `MAX_RESTARTS` times)."""
    import ray  # lazy: optional extra (unetkit[ray])

    try:
        ray.get(actor.info.remote())
        return True
    except Exception:  # noqa: BLE001 - any failure to answer means this actor is gone for good
        return False
