"""Prometheus metrics of the server: traffic, latency, queueing, batching, model quality proxies.

Each app gets its own `CollectorRegistry`, so several apps (tests) never clash. `ServeMetrics`
is also the service's `Observer`: the service reports batches, predictions, shadow comparisons
and answered images (for the drift gauges of `drift.py`) to it without knowing about Prometheus.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from unetkit.config import ServeConfig
from unetkit.serve.drift import DriftTracker
from unetkit.serve.service import Observer

if TYPE_CHECKING:
    import numpy as np

    from unetkit.serve.batching import BatchStats
    from unetkit.serve.service import LoadedModel, Service

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)
FRACTION_BUCKETS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServeMetrics(Observer):
    def __init__(self, max_batch_size: int = 8, config: ServeConfig | None = None) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, CPU seconds...
        GCCollector(registry=r)  # python_gc_* per generation
        self.requests = Counter("unetkit_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("unetkit_http_request_duration_seconds", "HTTP request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("unetkit_http_inflight_requests", "HTTP requests being handled", registry=r)
        self.rejected = Counter("unetkit_rejected_requests", "Requests refused before inference, by reason",
                                ["reason"], registry=r)
        self.queue_depth = Gauge("unetkit_queue_depth", "Tiles waiting for a forward pass", ["role"], registry=r)
        batch_buckets = sorted({1, 2, 4, 8, 16, 32, 64, max_batch_size})
        self.batch_size = Histogram("unetkit_batch_size", "Tiles per forward pass", ["role", "model_version"],
                                    buckets=batch_buckets, registry=r)
        self.batch_requests = Histogram("unetkit_batch_requests", "Distinct requests whose tiles shared a forward pass",
                                        ["role"], buckets=batch_buckets, registry=r)
        self.inference = Histogram("unetkit_inference_seconds", "Predictor time per forward pass",
                                   ["role", "model_version"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_info = Gauge("unetkit_model_info", "Loaded models (value 1)", ["role", "name", "model_version"], registry=r)
        self.model_backend = Gauge("unetkit_model_backend", "Inference backend each loaded model runs on (value 1; "
                                   "'auto' chose it by measurement) and what it computes in: fp32, bf16 or int8",
                                   ["role", "model_version", "backend", "precision"], registry=r)
        self.model_requests = Counter("unetkit_model_requests", "Segmentations answered, by model",
                                      ["role", "model_version"], registry=r)
        self.class_fraction = Histogram("unetkit_predicted_class_fraction", "Per-request fraction of pixels per class",
                                        ["model_version", "class_name"], buckets=FRACTION_BUCKETS, registry=r)
        self.confidence = Histogram("unetkit_prediction_confidence", "Per-request mean winning-class probability",
                                    ["model_version"], buckets=FRACTION_BUCKETS, registry=r)
        self.low_confidence = Histogram("unetkit_low_confidence_fraction",
                                        "Per-request fraction of pixels with winning probability < 0.5",
                                        ["model_version"], buckets=FRACTION_BUCKETS, registry=r)
        self.shadow_iou = Histogram("unetkit_shadow_agreement_iou", "Candidate vs primary mean IoU per shadowed request",
                                    buckets=FRACTION_BUCKETS, registry=r)
        self.shadow_last = Gauge("unetkit_shadow_agreement_iou_last", "Last candidate vs primary mean IoU", registry=r)
        self.shadow_dropped_total = Counter("unetkit_shadow_dropped", "Shadow comparisons skipped (busy) or failed",
                                            registry=r)
        self.samples = Counter("unetkit_samples_saved", "Requests sampled to the sample folder", registry=r)
        self.ready = Gauge("unetkit_ready", "1 when the model is loaded and warm", registry=r)
        self.drift = DriftTracker(config or ServeConfig(), r)

    def attach(self, service: Service) -> None:
        """Export the loaded models and their live queue depths."""
        for model in (service.primary, service.candidate):
            if model is not None:
                self.model_info.labels(model.role, model.name, model.version).set(1)
                self.model_backend.labels(model.role, model.version, model.backend, model.precision).set(1)
                self.queue_depth.labels(model.role).set_function(lambda m=model: m.batcher.queue_depth)
        self.ready.set(1)

    def replaced(self, old: LoadedModel, new: LoadedModel) -> None:
        """A new primary (registry promotion): `unetkit_model_info` shows only the one now answering."""
        try:
            self.model_info.remove(old.role, old.name, old.version)
            self.model_backend.remove(old.role, old.version, old.backend, old.precision)
        except KeyError:
            pass
        self.model_info.labels(new.role, new.name, new.version).set(1)
        self.model_backend.labels(new.role, new.version, new.backend, new.precision).set(1)
        self.queue_depth.labels(new.role).set_function(lambda m=new: m.batcher.queue_depth)

    # ------------------------------------------------------------ Observer

    def batch(self, model: LoadedModel, stats: BatchStats) -> None:
        self.batch_size.labels(model.role, model.version).observe(stats.size)
        self.batch_requests.labels(model.role).observe(stats.sessions)
        self.inference.labels(model.role, model.version).observe(stats.seconds)

    def prediction(self, model: LoadedModel, summary: dict[str, Any]) -> None:
        """Per-request quality proxies; a non-finite value is never observed (a histogram's sum would
        stay NaN for the life of the process)."""
        self.model_requests.labels(model.role, model.version).inc()
        for c in summary["classes"]:
            _observe(self.class_fraction.labels(model.version, c["name"]), c["pixel_fraction"])
        _observe(self.confidence.labels(model.version), summary["confidence"]["mean"])
        _observe(self.low_confidence.labels(model.version), summary["confidence"]["low_fraction"])

    def segmented(self, model: LoadedModel, image: np.ndarray, probabilities: np.ndarray | None,
                  labels: np.ndarray) -> None:
        self.drift.observe(model, image, probabilities, labels)

    def shadow(self, agreement_iou: float) -> None:
        _observe(self.shadow_iou, agreement_iou)
        self.shadow_last.set(agreement_iou)

    def shadow_dropped(self) -> None:
        self.shadow_dropped_total.inc()

    def close(self) -> None:
        """Stop the drift thread once the images queued for it are measured."""
        self.drift.close()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _observe(histogram: Any, value: float) -> None:
    if math.isfinite(value):
        histogram.observe(value)
