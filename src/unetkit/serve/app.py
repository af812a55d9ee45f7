"""The HTTP layer: `create_app(config)` builds the FastAPI app over a `Service`.

The model loads in a worker thread after start-up, so /healthz answers at once and /readyz turns
ready only when the model is loaded and warm. Routes never do CPU work on the event loop: decoding,
inference (through the batcher) and encoding run in the thread pool. Every error is a JSON body
`{"error": {"code", "message"}}`; every response carries X-Request-ID.

The parts: `routes_health.py` (probes, metrics, page), `routes_v1.py` (the API), `state.py` (the
shared `AppState` on `app.state.unetkit`, reached through dependencies), `auth.py` (bearer token),
`middleware.py` (request ids, metrics, logs), `tracing.py` (the request's record; OpenTelemetry spans
when OTEL_* variables ask for them), `errors.py` (statuses and JSON error bodies), `upload.py`
(reading request bodies under limits).

/docs, /redoc and /openapi.json exist only with `docs` on. Serving on a non-loopback address without
a token logs a warning at start-up (and at every model load): anyone who reaches the port may use it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from unetkit.config import ServeConfig
from unetkit.errors import ConfigError
from unetkit.serve import routes_health, routes_v1
from unetkit.serve.auth import TokenStore, is_loopback
from unetkit.serve.errors import add_error_handlers
from unetkit.serve.follow import RegistryFollower
from unetkit.serve.logs import configure_logging, log
from unetkit.serve.metrics import ServeMetrics
from unetkit.serve.middleware import observe
from unetkit.serve.sampling import Sampler
from unetkit.serve.service import Service
from unetkit.serve.state import AppState
from unetkit.serve.tracing import Tracing
from unetkit.serve.upload import BodyBudget

try:
    import anyio.to_thread
    from fastapi import FastAPI
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None


def create_app(config: ServeConfig, tracing: Tracing | None = None) -> FastAPI:
    """The app over `config`; `tracing`: OpenTelemetry traces (default: as the OTEL_* variables say,
    `Tracing.from_environment`, off when they say nothing)."""
    if not config.artifact and not config.registry:
        raise ConfigError("serve: no model artifact given (argument ARTIFACT, config 'artifact' or UNETKIT_SERVE_ARTIFACT), "
                          "nor a model registry (--registry)")
    if config.artifact and config.registry:
        raise ConfigError(f"serve: both a model artifact ({config.artifact}) and a registry ({config.registry}) given; choose one")
    if config.max_pixels > config.max_inflight_pixels:
        raise ConfigError(f"serve: max_pixels {config.max_pixels:,} exceeds max_inflight_pixels "
                          f"{config.max_inflight_pixels:,}: one image would run beyond the memory budget; "
                          "raise max_inflight_pixels or lower max_pixels")
    configure_logging(config.log_level)
    tracing = tracing if tracing is not None else Tracing.from_environment()
    tokens = TokenStore(config)
    if not tokens.enabled and not is_loopback(config.host):
        log(logging.WARNING, "SERVING WITHOUT AUTHENTICATION on a non-loopback address: anyone who reaches "
            f"{config.host}:{config.port} can use the model; set token_file (see docs/serving.md)", host=config.host)
    metrics = ServeMetrics(config.max_batch_size, config)
    sampler = Sampler(config.sample_dir, config.sample_rate, config.sample_max_bytes, config.seed,
                      max_age_seconds=config.sample_max_age_days * 86400, on_saved=metrics.samples.inc) \
        if config.sample_dir and config.sample_rate > 0 else None
    docs = {} if config.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="unetkit segmentation service", version="1", lifespan=lifespan, **docs,
                  description="Segment images with a unetkit model artifact. Errors: `{\"error\": {\"code\", \"message\"}}`.")
    app.state.unetkit = AppState(config, metrics, tokens, sampler, BodyBudget(config.max_inflight_body_bytes,
                                                                             config.retry_after_seconds),
                                 tracing=tracing)
    app.middleware("http")(observe)
    add_error_handlers(app)
    app.include_router(routes_health.router)
    app.include_router(routes_v1.router)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> Any:
    """Load the model in the background while the server starts; on shutdown drain and close."""
    state: AppState = app.state.unetkit
    limiter = anyio.to_thread.current_default_thread_limiter()  # request threads block on the batcher
    limiter.total_tokens = max(limiter.total_tokens, state.config.max_inflight + 8)
    loading = asyncio.create_task(load(state))
    yield
    state.status = "draining"
    state.metrics.ready.set(0)
    await loading
    if state.follower is not None:
        await asyncio.to_thread(state.follower.stop)
    if state.service is not None:
        await asyncio.to_thread(state.service.close)
    if state.sampler is not None:
        await asyncio.to_thread(state.sampler.close)
    await asyncio.to_thread(state.metrics.close)
    if state.tracing is not None:
        await asyncio.to_thread(state.tracing.shutdown)  # export the last spans
    log(logging.INFO, "stopped")


async def load(state: AppState) -> None:
    """Load and warm the model (from the artifact, or the registry's stage, then follow its promotions)."""
    config = state.config
    try:
        if config.registry:
            state.follower = await asyncio.to_thread(RegistryFollower.open, config)
            state.service = await asyncio.to_thread(state.follower.load_service, state.metrics)
        else:
            state.service = await asyncio.to_thread(Service.from_artifact, config.artifact, config, state.metrics)
    except Exception as e:  # noqa: BLE001 - reported by /readyz and /healthz and the log
        state.status, state.error = "failed", f"{type(e).__name__}: {e}"
        log(logging.ERROR, "model load failed", error=state.error)
        return
    state.metrics.attach(state.service)
    state.status = "ready"
    if state.follower is not None:
        state.follower.start()
    log(logging.INFO, "model ready", model_version=state.service.primary.version,
        rollout=state.service.rollout, load_seconds=round(time.monotonic() - state.started, 3))
