"""The HTTP layer: `create_app(config)` builds the FastAPI app over a `Service`.

The model loads in a worker thread after start-up, so /healthz answers at once and /readyz turns
ready only when the model is loaded and warm. Routes never do CPU work on the event loop: decoding,
inference (through the batcher) and encoding run in the thread pool. Every error is a JSON body
`{"error": {"code", "message"}}`; every response carries X-Request-ID.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unetkit.config import ServeConfig
from unetkit.errors import ConfigError, InputError, UnetkitError
from unetkit.serve.batching import QueueFull
from unetkit.serve.encoding import (
    CorruptImage,
    ImageTooLarge,
    UnsupportedImage,
    decode_upload,
    inspect_upload,
)
from unetkit.serve.logs import configure_logging, log, new_request_id, request_id_var
from unetkit.serve.metrics import CONTENT_TYPE, ServeMetrics
from unetkit.serve.render import INCLUDES, binary_output, segment_json
from unetkit.serve.sampling import Sampler
from unetkit.serve.service import SegmentOptions, Service

try:
    from fastapi import Depends, FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None

from unetkit.serve import schemas

PAGE = Path(__file__).with_name("static") / "index.html"
SEGMENT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                                           "required": ["file"]}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse, "description": text} for code, text in {
        400: "corrupt image or bad request", 401: "missing or wrong bearer token", 413: "body or image too large",
        415: "unsupported image format", 422: "invalid parameter", 503: "overloaded or not ready (see Retry-After)",
    }.items()
}


class BodyTooLarge(InputError):
    code = "body_too_large"


class NotReady(UnetkitError):
    code = "not_ready"


class Unauthorized(UnetkitError):
    code = "unauthorized"


STATUS: list[tuple[type[BaseException], int]] = [
    (UnsupportedImage, 415), (ImageTooLarge, 413), (BodyTooLarge, 413), (Unauthorized, 401),
    (NotReady, 503), (QueueFull, 503), (CorruptImage, 400), (UnetkitError, 400),
]


@dataclass
class AppState:
    config: ServeConfig
    metrics: ServeMetrics
    token: str
    sampler: Sampler | None
    service: Service | None = None
    status: str = "loading"
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    follower: Any = None  # a RegistryFollower when serving from a model registry


def resolve_token(config: ServeConfig) -> str:
    """Bearer token: config.token, else the file config.token_file names, else UNETKIT_SERVE_TOKEN."""
    if config.token:
        return config.token
    if config.token_file:
        try:
            return Path(config.token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"token_file {config.token_file}: cannot read ({e.strerror})") from None
    return os.environ.get("UNETKIT_SERVE_TOKEN", "")


def error_response(exc: BaseException, request_id: str | None = None) -> JSONResponse:
    status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
    code = getattr(exc, "code", None) or ("overloaded" if isinstance(exc, QueueFull) else "invalid_input")
    message = str(exc) if status < 500 or isinstance(exc, QueueFull) else "internal error; see the server log"
    headers = {}
    if status == 503:
        headers["Retry-After"] = str(max(1, round(getattr(exc, "retry_after", 1))))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 500:
        code = "internal"
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def create_app(config: ServeConfig) -> FastAPI:
    if not config.artifact and not config.registry:
        raise ConfigError("serve: no model artifact given (argument ARTIFACT, config 'artifact' or UNETKIT_SERVE_ARTIFACT), "
                          "nor a model registry (--registry)")
    if config.artifact and config.registry:
        raise ConfigError(f"serve: both a model artifact ({config.artifact}) and a registry ({config.registry}) given; choose one")
    configure_logging(config.log_level)
    sampler = Sampler(config.sample_dir, config.sample_rate, config.sample_max_bytes, config.seed) \
        if config.sample_dir and config.sample_rate > 0 else None
    state = AppState(config, ServeMetrics(config.max_batch_size, config), resolve_token(config), sampler)

    async def load() -> None:
        try:
            if config.registry:  # the version in config.stage, then follow its promotions
                from unetkit.serve.follow import RegistryFollower

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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        import anyio.to_thread

        limiter = anyio.to_thread.current_default_thread_limiter()  # request threads block on the batcher
        limiter.total_tokens = max(limiter.total_tokens, config.max_inflight + 8)
        loading = asyncio.create_task(load())
        yield
        state.status = "draining"
        state.metrics.ready.set(0)
        await loading
        if state.follower is not None:
            await asyncio.to_thread(state.follower.stop)
        if state.service is not None:
            await asyncio.to_thread(state.service.close)
        await asyncio.to_thread(state.metrics.close)
        log(logging.INFO, "stopped")

    app = FastAPI(title="unetkit segmentation service", version="1", lifespan=lifespan,
                  description="Segment images with a unetkit model artifact. Errors: `{\"error\": {\"code\", \"message\"}}`.")
    app.state.unetkit = state

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Any:
        rid = new_request_id(request.headers.get("x-request-id"))
        token = request_id_var.set(rid)
        start = time.perf_counter()
        state.metrics.inflight.inc()
        try:
            response = await call_next(request)
        except Exception as e:  # noqa: BLE001 - any bug becomes a 500 JSON body, never a dead process
            log(logging.ERROR, "unhandled error", exc_info=True, exc_type=type(e).__name__, error=str(e)[:500])
            response = error_response(e)
        finally:
            state.metrics.inflight.dec()
        seconds = time.perf_counter() - start
        route = getattr(request.scope.get("route"), "path", "unmatched")
        state.metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        state.metrics.latency.labels(route).observe(seconds)
        response.headers["X-Request-ID"] = rid
        if route not in ("/healthz", "/readyz", "/metrics"):
            log(logging.INFO, "request", method=request.method, path=request.url.path, status=response.status_code,
                duration_ms=round(seconds * 1000, 2), model_version=response.headers.get("x-model-version"))
        request_id_var.reset(token)
        return response

    @app.exception_handler(UnetkitError)
    @app.exception_handler(QueueFull)
    async def known_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, QueueFull):
            state.metrics.rejected.labels("overloaded").inc()
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": {"code": "invalid_parameter", "message": f"{where}: {first.get('msg')}"}}, 422)

    def ready_service() -> Service:
        if state.service is None or state.status != "ready":
            raise NotReady(f"model {state.status}" + (f": {state.error}" if state.error else ""))
        return state.service

    def authorized(request: Request) -> None:
        if not state.token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), state.token.encode()):
            state.metrics.rejected.labels("unauthorized").inc()
            raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")

    # ------------------------------------------------------------ health, metrics, page

    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    async def healthz() -> Any:  # async: probes never wait for a pool thread
        """Alive (the process answers); 500 only when the model failed to load."""
        if state.status == "failed":
            return JSONResponse({"status": "failed", "error": state.error}, 500)
        return {"status": "ok"}

    @app.get("/readyz", response_model=schemas.Health, tags=["health"],
             responses={503: {"model": schemas.Health, "description": "loading, draining or failed"}})
    async def readyz() -> Any:
        """Ready: the model is loaded and warmed up and the server is not shutting down."""
        if state.status != "ready" or state.service is None:
            return JSONResponse({"status": state.status, "error": state.error}, 503, headers={"Retry-After": "1"})
        return {"status": "ready", "model_version": state.service.primary.version}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:  # a few hundred lines of text: cheap enough for the event loop
        """Prometheus text exposition."""
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    # ------------------------------------------------------------ v1 API

    @app.get("/v1/model", response_model=schemas.ModelResponse, tags=["v1"], dependencies=[Depends(authorized)],
             responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 503)})
    def model_info() -> Any:
        """The served model: name, version (weights sha256 prefix), classes and colours, expected input."""
        service = ready_service()
        info = service.models()
        return {**info["primary"], "candidate": info["candidate"], "rollout": info["rollout"],
                "canary_percent": info["canary_percent"]}

    @app.post("/v1/segment", tags=["v1"], dependencies=[Depends(authorized)], openapi_extra={"requestBody": SEGMENT_BODY},
              responses={200: {"content": {"image/png": {}, "image/tiff": {}, "application/json": {
                  "schema": {"$ref": "#/components/schemas/SegmentResponse"}}},
                  "description": "the mask (PNG), probabilities (TIFF) or a JSON summary"}, **ERROR_RESPONSES})
    async def segment(
        request: Request,
        format: Literal["png", "json"] | None = Query(None, description="png (default) or json; or send Accept: application/json"),
        output: Literal["mask", "color", "overlay", "probabilities"] = Query(
            "mask", description="with format=png: class-index mask, colour mask, overlay PNG or float32 probability TIFF (K pages)"),
        include: str = Query("", description=f"with format=json, comma-separated extras: {', '.join(INCLUDES)}"),
        tta: bool = Query(False, description="average the 8 flips/rotations (8x slower)"),
    ) -> Response:
        """Segment one image (multipart field `file`, or the raw body). Large images are tiled."""
        service = ready_service()
        fmt = format or ("json" if "application/json" in request.headers.get("accept", "") else "png")
        extras = {p.strip() for p in include.split(",") if p.strip()}
        if extras - set(INCLUDES):
            raise RequestValidationError([{"loc": ("query", "include"), "msg": f"unknown {sorted(extras - set(INCLUDES))}; "
                                           f"expected some of {list(INCLUDES)}"}])
        with service.admission():
            data, name = await read_upload(request, config.max_body_bytes)
            rid = request_id_var.get()
            body, media, headers = await run_in_threadpool(
                _segment_blocking, state, service, data, name, fmt, output, extras, tta, rid)
        return Response(body, media_type=media, headers=headers)

    return app


async def read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    """The image bytes and a name for messages, from a multipart field or the raw body, capped at `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {int(declared):,} bytes exceeds the limit of {limit:,}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body exceeds the limit of {limit:,} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise CorruptImage("client disconnected before sending the whole body") from None
    body = b"".join(chunks)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        async def once() -> Any:
            yield body

        try:
            form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=16).parse()
        except MultiPartException as e:
            raise CorruptImage(f"malformed multipart body: {e.message}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise CorruptImage("multipart body has no file field named 'file'")
        data = await upload.read()
        await form.close()
        return data, upload.filename or "upload"
    raw_kinds = ("application/octet-stream", "application/x-www-form-urlencoded")  # the latter: curl --data-binary
    if kind and not (kind.startswith("image/") or kind in raw_kinds):
        raise UnsupportedImage(f"content type {kind!r}: send an image (image/*, application/octet-stream or multipart)")
    return body, request.headers.get("x-filename", "body")


def _segment_blocking(state: AppState, service: Service, data: bytes, name: str, fmt: str, output: str,
                      include: set[str], tta: bool, request_id: str) -> tuple[bytes, str, dict[str, str]]:
    """Decode, segment, encode: the whole request's CPU work, in a pool thread."""
    height, width = inspect_upload(data, name, state.config.max_pixels)
    with service.pixels(height * width):  # bounded memory: wait for room before decoding
        return _segment_admitted(state, service, data, name, fmt, output, include, tta, request_id)


def _segment_admitted(state: AppState, service: Service, data: bytes, name: str, fmt: str, output: str,
                      include: set[str], tta: bool, request_id: str) -> tuple[bytes, str, dict[str, str]]:
    start = time.perf_counter()
    image = decode_upload(data, name, state.config.max_pixels)
    decoded = time.perf_counter()
    seg = service.segment(image, SegmentOptions(tta=tta, keep_probabilities=fmt == "png" and output == "probabilities"))
    inferred = time.perf_counter()
    timing = {"decode_ms": round((decoded - start) * 1000, 2), "inference_ms": round((inferred - decoded) * 1000, 2)}
    headers = {"X-Model-Version": seg.model.version, "X-Model-Role": seg.model.role,
               "X-Inference-Ms": str(timing["inference_ms"])}
    if fmt == "json":
        import json

        payload = segment_json(seg, image, include, request_id, {**timing, "total_ms": 0.0}, tta)
        payload["timing"]["total_ms"] = round((time.perf_counter() - start) * 1000, 2)
        body, media = json.dumps(payload).encode(), "application/json"
    else:
        body, media = binary_output(seg, image, output)
    if state.sampler is not None:
        try:
            meta = {"request_id": request_id, "name": name, "model_version": seg.model.version, **seg.summary}
            if state.sampler.maybe_save(request_id, data, seg.labels, meta) is not None:
                state.metrics.samples.inc()
        except OSError as e:
            log(logging.WARNING, "sampling failed", error=str(e))
    return body, media, headers
