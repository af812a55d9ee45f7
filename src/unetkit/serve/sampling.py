"""Sampling of inputs and outputs to a private, size- and age-capped folder, for audits and drift checks.

A sampled request becomes `<dir>/<utc time>-<request id>/` with the input re-encoded from its
pixels (`input.png`, or `input.tif` for values a PNG cannot hold), the class-index mask (`mask.png`)
and `meta.json` (request id, trace id, model name/version/role, classes, fractions, confidence, and the
sha256 of the client's file name, never the name): what leads from an alert to the exact inputs and
model (docs/observability.md). Nothing of the uploaded file but its pixels is kept: no EXIF, PNG text or TIFF tags.

Privacy and durability: the folder and each sample are 0700, files 0600. Samples are written by one
background thread (a request only queues its arrays; when the queue is full the sample is dropped),
first into `.tmp-<name>/`, then renamed: a failed write (disk full) removes its temporary folder, and
temporary folders left by a crash are removed at start-up, so every folder in `<dir>` is a whole
sample that the size cap counts. Past `max_bytes` the oldest samples are deleted first; samples
older than `max_age_seconds` are deleted at every write and at start-up.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.serve.encoding import png_bytes
from unetkit.serve.logs import log

TEMP_PREFIX = ".tmp-"


class Sampler:
    def __init__(self, folder: str | Path, rate: float, max_bytes: int, seed: int = 0,
                 max_age_seconds: float = 30 * 86400, queue_size: int = 4,
                 on_saved: Callable[[], None] | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample_rate {rate}: expected a fraction in [0, 1]")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        self.rate, self.max_bytes, self.max_age_seconds = rate, max_bytes, max_age_seconds
        self.dropped = 0
        self._on_saved = on_saved or (lambda: None)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        for leftover in self.folder.glob(f"{TEMP_PREFIX}*"):  # a crash mid-write: never a sample
            shutil.rmtree(leftover, ignore_errors=True)
        self._sizes = {p: _folder_size(p) for p in sorted(self.folder.iterdir()) if p.is_dir()}
        self._prune()
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._run, name="unetkit-sampler", daemon=True)
        self._thread.start()

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def maybe_save(self, request_id: str, image: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> bool:
        """Queue this request for saving with probability `rate` (the `(C, H, W)` image as decoded, the
        labels, the meta); True when queued. Never blocks and never writes on the caller's thread."""
        with self._lock:
            if self._rng.random() >= self.rate:
                return False
        try:
            self._queue.put_nowait((request_id, image, labels, dict(meta)))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until the queued samples are written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except Exception as e:  # noqa: BLE001 - sampling never affects serving
                log(logging.WARNING, "sampling failed", error=f"{type(e).__name__}: {e}")
            finally:
                self._queue.task_done()

    def _write(self, request_id: str, image: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:]
        name = f"{stamp}-{request_id}"
        temp, target = self.folder / f"{TEMP_PREFIX}{name}", self.folder / name
        client_name = meta.pop("name", None)
        if client_name is not None:
            meta["name_sha256"] = hashlib.sha256(str(client_name).encode()).hexdigest()
        data, suffix = pixels_only(image)
        try:
            temp.mkdir(mode=0o700)
            _write_private(temp / f"input.{suffix}", data)
            _write_private(temp / "mask.png", png_bytes(labels))
            _write_private(temp / "meta.json", json.dumps(meta, default=float, indent=1).encode())
            os.rename(temp, target)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        with self._lock:
            self._sizes[target] = _folder_size(target)
            self._prune()
        if target.exists():
            self._on_saved()

    def _prune(self) -> None:
        """Delete samples past the age limit, then the oldest while over the size cap."""
        cutoff = time.time() - self.max_age_seconds
        for path in [p for p in self._sizes if _mtime(p) < cutoff]:
            shutil.rmtree(path, ignore_errors=True)
            del self._sizes[path]
        while self.total_bytes > self.max_bytes and self._sizes:
            oldest = min(self._sizes)
            shutil.rmtree(oldest, ignore_errors=True)
            del self._sizes[oldest]


def pixels_only(image: np.ndarray) -> tuple[bytes, str]:
    """A `(C, H, W)` image re-encoded from its values alone: PNG when they are 8-bit (1, 3 or 4 channels)
    or 16-bit gray integers, else a float32 TIFF without tags beyond the image structure."""
    channels = image.shape[0]
    integral = bool(np.all(image >= 0)) and bool(np.array_equal(image, np.round(image)))
    peak = float(image.max()) if image.size else 0.0
    if integral and peak <= 255 and channels in (1, 3, 4):
        array = image.astype(np.uint8)
        return png_bytes(array[0] if channels == 1 else np.moveaxis(array, 0, -1)), "png"
    if integral and peak <= 65535 and channels == 1:
        return png_bytes(image[0].astype(np.uint16)), "png"
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image.astype(np.float32), photometric="minisblack", planarconfig="separate",
                     metadata=None, software=False)
    return buffer.getvalue(), "tif"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
