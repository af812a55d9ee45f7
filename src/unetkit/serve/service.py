"""The segmentation service, without any web framework: usable from tests, scripts or any server.

`Service.from_artifact(path, config)` loads the primary model (and a candidate for a canary or
shadow rollout), starts one batching worker per model and warms both up: a constructed Service
is ready. `segment(image, options)` is synchronous and thread-safe: call it from many threads
(the HTTP layer calls it from its thread pool) and their tiles share forward passes.

Rollouts: with `canary_percent` > 0 that share of requests (seeded RNG) is answered by the
candidate; with `shadow` the primary answers every request and the candidate runs on a copy in
the background, its labels compared with the primary's (mean IoU over the classes either
predicts) and reported to the observer; shadow work is dropped, never queued, when it falls behind.

Replacing the primary (`replace_primary`, used when following a model registry): the new model is
loaded and warmed by the caller, then swapped in under a lock. Each request holds the model it was
given until its tiles are done (`model_for_request`), so the old model finishes its in-flight
requests and is closed only after the last one (`LoadedModel.close_when_idle`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from unetkit.artifact import Artifact
from unetkit.config import ServeConfig
from unetkit.errors import ConfigError, InputError
from unetkit.export.deployed import DeployedModel, load_model
from unetkit.inference.backends import make_predictor
from unetkit.inference.files import labels_from_probabilities, tile_config_for
from unetkit.inference.predict import predict_tiled
from unetkit.serve.batching import (
    BatchStats,
    ClientDisconnected,
    DeadlineExceeded,
    PixelBudget,
    QueueFull,
    Session,
    TileBatcher,
)
from unetkit.serve.encoding import MAX_CHANNELS, ImageTooLarge
from unetkit.signing import TrustPolicy

Role = Literal["primary", "candidate"]


class Observer:
    """What the service reports; the default ignores everything (metrics.py exports it)."""

    def batch(self, model: LoadedModel, stats: BatchStats) -> None: ...

    def prediction(self, model: LoadedModel, summary: dict[str, Any]) -> None: ...

    def segmented(self, model: LoadedModel, image: np.ndarray, probabilities: np.ndarray | None,
                  labels: np.ndarray) -> None:
        """One answered request: the `(C, H, W)` image the model saw, its `(K, H, W)` probabilities
        (None when the request asked for TTA other than the model's own choice: the drift baseline
        holds the outputs as the model predicts by default) and the served labels. Called on the request's thread: hand any real work to another thread."""

    def shadow(self, agreement_iou: float) -> None: ...

    def shadow_dropped(self) -> None: ...

    def replaced(self, old: LoadedModel, new: LoadedModel) -> None:
        """The primary model changed (a registry promotion); `old` finishes its requests, then closes."""


@dataclass(frozen=True)
class SegmentOptions:
    tta: bool | None = None  # average the flips/rotations (8x the compute); None: the model's own choice
    keep_probabilities: bool = False
    deadline: float | None = None  # time.monotonic() past which the request's remaining tiles are skipped
    cancelled: threading.Event | None = None  # set when the client is gone: the remaining tiles are skipped
    context: Any = None  # the request's `tracing.RequestContext`: hears the model chosen; spans of the work


@dataclass(frozen=True)
class Segmentation:
    labels: np.ndarray  # (H, W) uint8 class indices
    confidence: np.ndarray  # (H, W) float32 winning-class probability
    probabilities: np.ndarray | None  # (K, H, W) float32 when asked for
    model: LoadedModel
    summary: dict[str, Any]  # per-class fractions and confidences, see `summarize`
    seconds: float
    tta: bool = False  # whether the views were averaged


class LoadedModel:
    """One model with its predictor, behind its own batching worker; warmed up on construction.

    The model is an artifact or an exported model (`export.deployed.DeployedModel`: an `.onnx` or
    OpenVINO `.xml` with its plan), which runs on its own runtime: there `backend` "torch" (serving's
    default) means "auto", the exported model's measured choice; its version is its file's sha256."""

    def __init__(self, artifact: Artifact | DeployedModel, config: ServeConfig, role: Role = "primary",
                 observer: Observer | None = None, origin: dict[str, Any] | None = None) -> None:
        self.artifact = artifact
        self.meta = artifact.meta
        self.role: Role = role
        self.origin = origin  # where it came from: {"registry", "name", "version", "stage", "sha256"}, or None
        self.name = origin["name"] if origin else self.meta.name
        exported = isinstance(artifact, DeployedModel)
        sha = artifact.model_sha256 if exported else self.meta.weights_sha256
        self.version = str(origin["version"]) if origin else sha[:12]
        self._users = 0  # requests using this model (see Service.model_for_request)
        self._idle = threading.Condition()
        self.colors = [tuple(int(v) for v in c) for c in self.meta.colors()]
        self.patch = tuple(int(v) for v in self.meta.patch_size[:2])
        if len(self.patch) != 2:
            raise ConfigError(f"{artifact.path}: patch_size {self.meta.patch_size}: serving needs a 2-D patch size")
        # the model's own tiling with what serving sets: its 2-D patch, the configured overlap and
        # enough tiles per request to fill the shared batches; worked out first, so TTA views the model
        # never saw (`ServeConfig.tta_views`) are refused before a worker starts
        self.tile_config = tile_config_for(artifact, {
            "tile_size": self.patch, "overlap": config.tile_overlap,
            "batch_size": max(1, min(config.max_queue, 2 * config.max_batch_size)),
        } | ({} if config.tta_views == "model" else {"tta_views": config.tta_views}))
        backend = "auto" if exported and config.backend == "torch" else config.backend
        predictor = make_predictor(artifact, backend, batch_size=config.max_batch_size)
        self.backend = str(getattr(predictor, "backend", backend))
        self.precision = served_precision(artifact, predictor)
        self.format = artifact.path.suffix.lstrip(".").lower() if exported else "artifact"  # onnx, xml or artifact
        observer = observer or Observer()
        self.batcher = TileBatcher(
            predictor, max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue, on_batch=lambda stats: observer.batch(self, stats), name=role,
        )
        self.batcher.predict(np.zeros((config.max_batch_size, self.meta.in_channels, *self.patch), np.float32))

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "role": self.role,
            "classes": [{"index": i, "name": n, "color": c} for i, (n, c) in enumerate(zip(self.meta.class_names, self.colors, strict=True))],
            "in_channels": self.meta.in_channels, "patch_size": list(self.patch),
            "temperature": self.meta.temperature, "created": self.meta.created, "registry": self.origin,
            "backend": self.backend, "precision": self.precision,
            "format": self.format, "tta": self.tile_config.tta, "tta_views": self.tile_config.tta_views,
            "tta_temperature": self.tile_config.tta_temperature, "resolutions": list(self.tile_config.resolutions),
            "resolutions_temperature": self.tile_config.resolutions_temperature,
        }

    def probabilities(self, image: np.ndarray, tta: bool | None = None, deadline: float | None = None,
                      cancelled: threading.Event | None = None, context: Any = None) -> np.ndarray:
        """(K, H, W) probabilities through the shared batcher (blocks the calling thread); `DeadlineExceeded`
        when `deadline` (time.monotonic()) passes before the last batch, `ClientDisconnected` once
        `cancelled` is set. `context`: the request's RequestContext (its trace gets the forward passes).
        `tta`: average the views, or not; None: as the model's artifact chose (`ArtifactMeta.tta`)."""
        with self.batcher.session(context) as session:
            predictor = _SessionPredictor(self.batcher, session, self.meta.in_channels, self.patch, deadline,
                                          cancelled)
            tile = self.tile_config if tta is None else replace(self.tile_config, tta=tta)
            return predict_tiled(predictor, image, tile, max_pixels=image.shape[1] * image.shape[2])

    def close(self) -> None:
        self.batcher.close()

    def acquire(self) -> None:
        """One more request uses this model (the service calls it under its swap lock)."""
        with self._idle:
            self._users += 1

    def release(self) -> None:
        with self._idle:
            self._users -= 1
            self._idle.notify_all()

    def close_when_idle(self, timeout: float = 300.0) -> bool:
        """Close once no request holds the model (or after `timeout` s); False when it timed out."""
        with self._idle:
            idle = self._idle.wait_for(lambda: self._users == 0, timeout)
        self.close()
        return idle


def served_precision(model: Artifact | DeployedModel, predictor: Any) -> str:
    """What the loaded model computes in: int8 for an int8 export, bf16 for a bf16 backend, else fp32."""
    if getattr(model.meta, "precision", "fp32") == "int8":
        return "int8"
    return "bf16" if getattr(predictor, "precision", "") == "bf16" else "fp32"


class _SessionPredictor:
    """What `predict_tiled` calls: one request's view of the shared batcher."""

    def __init__(self, batcher: TileBatcher, session: Session, in_channels: int, tile_size: tuple[int, int],
                 deadline: float | None = None, cancelled: threading.Event | None = None) -> None:
        self.batcher, self.session = batcher, session
        self.in_channels, self.tile_size = in_channels, tile_size
        self.deadline, self.cancelled = deadline, cancelled

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self.cancelled is not None and self.cancelled.is_set():
            raise ClientDisconnected("the client closed the connection; the remaining tiles were skipped")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("request_timeout_seconds passed before the image was segmented; "
                                   "send a smaller image or retry when the server is less busy")
        return self.batcher.predict(batch, self.session)


class Service:
    def __init__(self, primary: LoadedModel, config: ServeConfig, candidate: LoadedModel | None = None,
                 observer: Observer | None = None) -> None:
        if (config.canary_percent > 0 or config.shadow) and candidate is None:
            raise ConfigError("canary_percent/shadow need canary_artifact (the candidate model)")
        if not 0.0 <= config.canary_percent <= 100.0:
            raise ConfigError(f"canary_percent {config.canary_percent}: expected 0-100")
        self.primary, self.candidate, self.config = primary, candidate, config
        self.observer = observer or Observer()
        self.rollout = "shadow" if config.shadow else ("canary" if candidate is not None and config.canary_percent > 0 else "none")
        self._rng = random.Random(config.seed)
        self._rng_lock = threading.Lock()
        self._inflight = threading.BoundedSemaphore(config.max_inflight)
        self.pixel_budget = PixelBudget(config.max_inflight_pixels, config.queue_timeout_seconds)
        self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="unetkit-shadow") if self.rollout == "shadow" else None
        self._shadow_pending = 0
        self._shadow_lock = threading.Lock()
        self._swap_lock = threading.Lock()  # choosing a model for a request vs replacing the primary

    @classmethod
    def from_artifact(cls, path: str | Path | Artifact, config: ServeConfig | None = None, observer: Observer | None = None,
                      origin: dict[str, Any] | None = None) -> Service:
        """Load, check and warm up the primary (and candidate) models: the result is ready to serve.
        `path` may be an Artifact already loaded and verified (a registry version); a file is checked
        against `config.sha256` and `config.trusted_keys` / `require_signature` (as is the candidate).
        `origin` tells where the primary came from (a registry version; see LoadedModel)."""
        config = config or ServeConfig()
        observer = observer or Observer()
        trust = TrustPolicy.load(config.trusted_keys, config.require_signature)
        artifact = path if isinstance(path, Artifact) else load_model(path, sha256=config.sha256 or None, trust=trust)
        primary = LoadedModel(artifact, config, "primary", observer, origin)
        candidate = None
        try:
            if config.canary_artifact:
                candidate = LoadedModel(load_model(config.canary_artifact, trust=trust), config, "candidate", observer)
                if candidate.meta.class_names != primary.meta.class_names:
                    raise ConfigError(
                        f"{config.canary_artifact}: classes {list(candidate.meta.class_names)} differ from the primary's "
                        f"{list(primary.meta.class_names)}; a candidate must predict the same classes"
                    )
            return cls(primary, config, candidate, observer)
        except BaseException:
            for model in (primary, candidate):
                if model is not None:
                    model.close()  # no worker thread outlives a failed construction
            raise

    # ------------------------------------------------------------ serving

    @contextmanager
    def admission(self) -> Any:
        """Hold a slot for one request, or raise `QueueFull` at once when `max_inflight` are busy."""
        if not self._inflight.acquire(blocking=False):
            raise QueueFull(f"{self.config.max_inflight} requests already in flight", self.config.retry_after_seconds)
        try:
            yield
        finally:
            self._inflight.release()

    def max_channels(self) -> int:
        """The most channels an upload may have: 4 (RGBA), or more when a model takes more."""
        models = [m for m in (self.primary, self.candidate) if m is not None]
        return max([MAX_CHANNELS] + [m.meta.in_channels for m in models])

    def pixels(self, n: int, deadline: float | None = None) -> Any:
        """Context manager: wait for room for an `n`-pixel image in the memory budget (else `QueueFull`)."""
        return self.pixel_budget.hold(n, deadline)

    def choose_model(self) -> LoadedModel:
        if self.rollout != "canary":
            return self.primary
        with self._rng_lock:
            draw = self._rng.random() * 100.0
        assert self.candidate is not None
        return self.candidate if draw < self.config.canary_percent else self.primary

    @contextmanager
    def model_for_request(self) -> Iterator[LoadedModel]:
        """The model that answers a request, held until the block ends (a replaced primary waits for it)."""
        with self._swap_lock:
            model = self.choose_model()
            model.acquire()
        try:
            yield model
        finally:
            model.release()

    def replace_primary(self, new: LoadedModel) -> LoadedModel:
        """Answer new requests with `new` (loaded and warm); returns the old primary, which still finishes
        the requests holding it: close it with `old.close_when_idle()`."""
        if self.candidate is not None and new.meta.class_names != self.candidate.meta.class_names:
            raise ConfigError(f"model {new.name}:{new.version}: classes {list(new.meta.class_names)} differ from the "
                              f"candidate's {list(self.candidate.meta.class_names)}")
        with self._swap_lock:
            old, self.primary = self.primary, new
        self.observer.replaced(old, new)
        return old

    def segment(self, image: np.ndarray, options: SegmentOptions = SegmentOptions()) -> Segmentation:
        """Segment one `(C, H, W)` raw-intensity image (any size: tiled). Thread-safe, blocking."""
        start = time.perf_counter()
        if image.ndim != 3 or image.shape[1] * image.shape[2] > self.config.max_pixels:
            raise ImageTooLarge(f"image of shape {image.shape}: expected (C, H, W) with at most {self.config.max_pixels:,} pixels")
        context = options.context
        with self.model_for_request() as model:
            if context is not None:
                context.model_chosen(model.version)
            image = fit_channels(image, model.meta.in_channels)
            tta = model.tile_config.tta if options.tta is None else options.tta
            try:
                probs = model.probabilities(image, tta=tta, deadline=options.deadline,
                                            cancelled=options.cancelled,
                                            context=context if context is not None and context.traced else None)
            except QueueFull as e:
                e.retry_after = self.config.retry_after_seconds
                raise
        if not np.isfinite(probs).all():  # e.g. values near float32's max overflow the normalization
            raise InputError(f"image values {float(image.min()):.3g}..{float(image.max()):.3g} overflow the model's "
                             "arithmetic (non-finite probabilities); send values in the range the model was trained on")
        with context.span("postprocess") if context is not None else nullcontext():
            labels = labels_from_probabilities(probs, model.artifact)
            confidence = probs.max(axis=0)
            summary = summarize(labels, confidence, model.meta.class_names, model.colors)
        model_seconds = time.perf_counter() - start
        self.observer.prediction(model, summary)
        self.observer.segmented(model, image, probs if tta == model.tile_config.tta else None, labels)
        if self.rollout == "shadow":
            self._shadow(image, labels, options)
        return Segmentation(labels, confidence, probs if options.keep_probabilities else None, model, summary, model_seconds,
                            tta)

    def _shadow(self, image: np.ndarray, labels: np.ndarray, options: SegmentOptions) -> None:
        assert self._shadow_pool is not None and self.candidate is not None
        with self._shadow_lock:
            if self._shadow_pending >= 2:
                self.observer.shadow_dropped()
                return
            self._shadow_pending += 1
        self._shadow_pool.submit(self._run_shadow, image, labels, options)

    def _run_shadow(self, image: np.ndarray, labels: np.ndarray, options: SegmentOptions) -> None:
        try:
            assert self.candidate is not None
            probs = self.candidate.probabilities(image, tta=options.tta)
            other = labels_from_probabilities(probs, self.candidate.artifact)
            self.observer.shadow(agreement_iou(labels, other, self.primary.meta.num_classes))
        except Exception:  # noqa: BLE001 - shadow work never affects serving
            self.observer.shadow_dropped()
        finally:
            with self._shadow_lock:
                self._shadow_pending -= 1

    def wait_for_shadow(self, timeout: float = 10.0) -> None:
        """Block until queued shadow comparisons are done (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._shadow_pending and time.monotonic() < deadline:
            time.sleep(0.01)

    def models(self) -> dict[str, Any]:
        return {
            "primary": self.primary.info(), "candidate": self.candidate.info() if self.candidate else None,
            "rollout": self.rollout, "canary_percent": self.config.canary_percent if self.rollout == "canary" else 0.0,
        }

    def close(self) -> None:
        """Finish queued work and stop the workers."""
        if self._shadow_pool is not None:
            self._shadow_pool.shutdown(wait=True, cancel_futures=True)
        for model in (self.primary, self.candidate):
            if model is not None:
                model.close()


# ---------------------------------------------------------------- pure helpers


def fit_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Gray -> repeated for colour models; RGB -> channel mean for gray models; else exact."""
    have = image.shape[0]
    if have == channels:
        return image
    if have == 1:
        return np.repeat(image, channels, axis=0)
    if channels == 1 and have in (3, 4):
        return image[:3].mean(axis=0, keepdims=True)
    raise InputError(f"image has {have} channels but the model takes {channels}")


def summarize(labels: np.ndarray, confidence: np.ndarray, class_names: tuple[str, ...],
              colors: list[tuple[int, ...]]) -> dict[str, Any]:
    """Per-class pixel fractions and mean confidence, and an overall confidence summary."""
    k = len(class_names)
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=k)[:k]
    sums = np.bincount(flat, weights=confidence.ravel(), minlength=k)[:k]
    total = max(int(flat.size), 1)
    sample = confidence.ravel()[:: max(1, flat.size // 262_144)]
    classes = [
        {"index": i, "name": class_names[i], "color": tuple(colors[i]), "pixel_fraction": float(counts[i] / total),
         "mean_confidence": float(sums[i] / counts[i]) if counts[i] else None}
        for i in range(k)
    ]
    return {
        "classes": classes,
        "confidence": {"mean": float(confidence.mean()), "p05": float(np.percentile(sample, 5)),
                       "low_fraction": float((confidence < 0.5).mean())},
    }


def agreement_iou(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean IoU between two label maps over the classes either one predicts (1.0 when identical)."""
    ious = []
    for c in range(num_classes):
        in_a, in_b = a == c, b == c
        union = np.count_nonzero(in_a | in_b)
        if union:
            ious.append(np.count_nonzero(in_a & in_b) / union)
    return float(np.mean(ious)) if ious else 1.0
