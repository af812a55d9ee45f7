"""Sampling of inputs and outputs to a size-capped folder, for audits and drift checks.

A sampled request becomes `<dir>/<utc time>-<request id>/` with the uploaded bytes (`input.*`),
the class-index mask (`mask.png`) and `meta.json` (model, classes, fractions, confidence). When the
folder grows past `max_bytes`, the oldest samples are deleted first.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from unetkit.serve.encoding import png_bytes, sniff_format


class Sampler:
    def __init__(self, folder: str | Path, rate: float, max_bytes: int, seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample_rate {rate}: expected a fraction in [0, 1]")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rate, self.max_bytes = rate, max_bytes
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sizes = {p: _folder_size(p) for p in sorted(self.folder.iterdir()) if p.is_dir()}

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def maybe_save(self, request_id: str, data: bytes, labels: Any, meta: dict[str, Any]) -> Path | None:
        """Save this request with probability `rate`; returns the sample folder or None."""
        with self._lock:
            if self._rng.random() >= self.rate:
                return None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.6f}"[1:]
        target = self.folder / f"{stamp}-{request_id}"
        target.mkdir(parents=True, exist_ok=True)
        (target / f"input.{sniff_format(data) or 'bin'}").write_bytes(data)
        (target / "mask.png").write_bytes(png_bytes(labels))
        (target / "meta.json").write_text(json.dumps(meta, default=float, indent=1))
        with self._lock:
            self._sizes[target] = _folder_size(target)
            while self.total_bytes > self.max_bytes and self._sizes:
                oldest = min(self._sizes)
                shutil.rmtree(oldest, ignore_errors=True)
                del self._sizes[oldest]
        return target if target.exists() else None


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
