"""A rolling window over the features of the last N served images, and its drift report.

`DriftWindow.add(features)` keeps the newest `size` images' features (from `Baseline.measure`)
and recomputes the report once the window holds `min_images` images, then every `every` images:
cheap (a few thousand numbers binned and compared), so the server does it on the thread that
measured the image. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from unetkit.config import DRIFT_THRESHOLD
from unetkit.errors import ConfigError
from unetkit.monitor.baseline import Baseline
from unetkit.monitor.drift import DriftReport, compare


def check_window(size: int, min_images: int, every: int, threshold: float) -> None:
    """A `ConfigError` naming the `ServeConfig` field when a window setting is impossible."""
    if size < 1:
        raise ConfigError(f"drift_window {size}: expected at least 1 image")
    if not 1 <= min_images <= size:
        raise ConfigError(f"drift_min_images {min_images}: expected 1 to drift_window ({size})")
    if every < 1:
        raise ConfigError(f"drift_every {every}: expected at least 1 image")
    if threshold <= 0:
        raise ConfigError(f"drift_threshold {threshold}: expected a positive PSI value")


class DriftWindow:
    def __init__(self, baseline: Baseline, *, size: int = 200, min_images: int = 20, every: int = 10,
                 threshold: float = DRIFT_THRESHOLD, outputs: bool = True) -> None:
        check_window(size, min_images, every, threshold)
        self.baseline, self.size, self.min_images, self.every = baseline, size, min_images, every
        self.threshold, self.outputs = threshold, outputs
        self.report: DriftReport | None = None  # None until the window holds min_images images
        self._images: deque[dict[str, np.ndarray]] = deque(maxlen=size)
        self._since_report = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._images)

    def add(self, features: dict[str, np.ndarray]) -> DriftReport | None:
        """Add one image's features; returns the new report when one was computed, else None."""
        with self._lock:
            self._images.append(features)
            self._since_report += 1
            if len(self._images) < self.min_images or (self.report is not None and self._since_report < self.every):
                return None
            self._since_report = 0
            self.report = compare(self.baseline, list(self._images), self.threshold, outputs=self.outputs)
            return self.report
