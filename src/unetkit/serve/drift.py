"""Drift of the served traffic as Prometheus gauges, per model version, off the request path.

The service hands each answered request's image and output to `DriftTracker.observe` (through
`ServeMetrics`, its Observer); the tracker queues them for one background thread, which measures
the features (`Baseline.measure`), adds them to the model's rolling `DriftWindow` and publishes:

- `unetkit_drift_window_images{model_version}`: images in the current window;
- `unetkit_drift_threshold{model_version}`: the PSI threshold (from the start);
- `unetkit_drift_score{model_version}` and `unetkit_drift_feature_psi{model_version,feature}`:
  only once the window holds `drift_min_images` images: absent before, never NaN, so an alert
  rule on the score cannot fire on an almost empty window;
- `unetkit_drift_dropped_images_total`: images not measured because the queue was full.

A model without a baseline logs one warning and exports nothing for drift. When a new version
answers in a role (a registry promotion), the previous version's drift series are removed, so a
stale score never keeps an alert firing. When its
calibration or postprocessing changed since the baseline was measured, the output features are
left out (one warning) and the inputs are still compared.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from unetkit.config import ServeConfig
from unetkit.errors import ConfigError
from unetkit.monitor.baseline import Baseline, outputs_mismatch
from unetkit.monitor.drift import DriftReport
from unetkit.monitor.window import DriftWindow, check_window
from unetkit.serve.logs import log

if TYPE_CHECKING:
    from unetkit.serve.service import LoadedModel

QUEUE_IMAGES = 4  # requests waiting to be measured; beyond: dropped (counted)
QUEUE_PIXELS = 16_000_000  # and at most this many image pixels held for it (bounds memory; one image always fits)


class DriftTracker:
    def __init__(self, config: ServeConfig, registry: CollectorRegistry) -> None:
        check_window(config.drift_window, config.drift_min_images, config.drift_every, config.drift_threshold)
        self.config = config
        self.score = Gauge("unetkit_drift_score", "Drift score (max PSI over features) of the rolling window; "
                           "absent until the window holds drift_min_images images", ["model_version"], registry=registry)
        self.threshold = Gauge("unetkit_drift_threshold", "PSI threshold above which the score means drift",
                               ["model_version"], registry=registry)
        self.feature_psi = Gauge("unetkit_drift_feature_psi", "PSI of one feature over the rolling window",
                                 ["model_version", "feature"], registry=registry)
        self.window_images = Gauge("unetkit_drift_window_images", "Images in the drift window",
                                   ["model_version"], registry=registry)
        self.dropped = Counter("unetkit_drift_dropped_images", "Images not measured for drift (queue full)",
                               registry=registry)
        self._windows: dict[str, DriftWindow | None] = {}  # by model version
        self._roles: dict[str, str] = {}  # role (primary / candidate) -> the version last seen in it
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._queued_pixels = 0
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------ per model

    def window(self, model: LoadedModel) -> DriftWindow | None:
        """The model's window, made on first use (None, after one warning, without a baseline).
        A new version in a role (a registry promotion) retires the previous one's series."""
        with self._lock:
            previous = self._roles.get(model.role)
            if previous is not None and previous != model.version:
                self._retire(previous)
            self._roles[model.role] = model.version
            if model.version not in self._windows:
                self._windows[model.version] = self._new_window(model)
            return self._windows[model.version]

    def _retire(self, version: str) -> None:
        window = self._windows.pop(version, None)
        if window is None:
            return
        for gauge in (self.score, self.threshold, self.window_images):
            try:
                gauge.remove(version)
            except KeyError:  # never published (window not full yet)
                pass
        for ref in window.baseline.features:
            try:
                self.feature_psi.remove(version, ref.name)
            except KeyError:
                pass

    def _new_window(self, model: LoadedModel) -> DriftWindow | None:
        try:
            baseline = Baseline.from_dict(model.meta.drift_baseline, f"{model.artifact.path}: drift_baseline")
        except ConfigError as e:  # no baseline, or one this version cannot read: serving goes on
            log(logging.WARNING, "drift monitoring off for this model", model_version=model.version, reason=str(e))
            return None
        mismatch = outputs_mismatch(baseline, model.meta)
        if mismatch and baseline.has_outputs:
            log(logging.WARNING, "drift: comparing inputs only", model_version=model.version, reason=mismatch)
        c = self.config
        window = DriftWindow(baseline, size=c.drift_window, min_images=c.drift_min_images, every=c.drift_every,
                             threshold=c.drift_threshold, outputs=mismatch is None)
        self.threshold.labels(model.version).set(window.threshold)
        self.window_images.labels(model.version).set(0)
        return window

    # ------------------------------------------------------------ traffic

    def observe(self, model: LoadedModel, image: np.ndarray, probabilities: np.ndarray | None,
                labels: np.ndarray) -> None:
        """Queue one answered request for measuring; never blocks (drops when busy)."""
        window = self.window(model)
        if window is None or self._closed:
            return
        pixels = int(image.shape[-2] * image.shape[-1])
        with self._lock:
            if self._queue.qsize() >= QUEUE_IMAGES or (self._queued_pixels and self._queued_pixels + pixels > QUEUE_PIXELS):
                self.dropped.inc()
                return
            self._queued_pixels += pixels
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="unetkit-drift", daemon=True)
                self._thread.start()
        outputs = probabilities if window.outputs else None
        self._queue.put((model.version, window, image, outputs, labels, pixels))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            version, window, image, probabilities, labels, pixels = item
            try:
                report = window.add(window.baseline.measure(image, probabilities, labels))
                with self._lock:  # a retired version publishes nothing more
                    if self._windows.get(version) is window:
                        self.window_images.labels(version).set(len(window))
                        if report is not None:
                            self.publish(version, report)
            except Exception as e:  # noqa: BLE001 - drift monitoring never affects serving
                log(logging.WARNING, "drift measurement failed", model_version=version, error=f"{type(e).__name__}: {e}")
            finally:
                with self._lock:
                    self._queued_pixels -= pixels
                self._queue.task_done()

    def publish(self, version: str, report: DriftReport) -> None:
        for feature in report.features:
            self.feature_psi.labels(version, feature.name).set(feature.psi)
        self.score.labels(version).set(report.score)

    def wait(self, timeout: float = 10.0) -> None:
        """Block until every queued image is measured (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
