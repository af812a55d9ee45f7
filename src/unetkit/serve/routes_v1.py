"""The v1 API: /v1/model (scope `model`) and /v1/segment (scope `segment`).

/v1/segment reads the upload on the event loop (`upload.py`: content type, size, time and memory
limits), and only then takes an admission slot (`max_inflight`), so a slow client holds no slot while
it sends. All CPU work (decode, segment through the batcher, encode) runs in a pool thread. Each
request has a deadline, `request_timeout_seconds` from its start: the body, the wait for the pixel
budget and every batch of tiles check it (503 `deadline_exceeded`); every batch also checks that the
client is still connected (a closed connection skips the remaining tiles: 499 `client_disconnected`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from unetkit.serve import schemas
from unetkit.serve.auth import require
from unetkit.serve.encoding import MAX_CHANNELS, decode_upload, inspect_upload
from unetkit.serve.errors import ERROR_RESPONSES
from unetkit.serve.render import INCLUDES, binary_output, segment_json
from unetkit.serve.service import SegmentOptions, Service
from unetkit.serve.state import AppState, app_state, ready_service
from unetkit.serve.tracing import RequestContext
from unetkit.serve.upload import read_upload

try:
    from fastapi import APIRouter, Depends, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None

SEGMENT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}},
                                           "required": ["file"]}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}

router = APIRouter()


@router.get("/v1/model", response_model=schemas.ModelResponse, tags=["v1"], dependencies=[Depends(require("model"))],
            responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 403, 503)})
def model_info(state: AppState = Depends(app_state)) -> Any:
    """The served model: name, version (weights sha256 prefix), classes and colours, expected input."""
    service = ready_service(state)
    info = service.models()
    return {**info["primary"], "candidate": info["candidate"], "rollout": info["rollout"],
            "canary_percent": info["canary_percent"]}


@router.post("/v1/segment", tags=["v1"], openapi_extra={"requestBody": SEGMENT_BODY},
             dependencies=[Depends(require("segment"))],
             responses={200: {"content": {"image/png": {}, "image/tiff": {}, "application/json": {
                 "schema": {"$ref": "#/components/schemas/SegmentResponse"}}},
                 "description": "the mask (PNG), probabilities (TIFF) or a JSON summary"}, **ERROR_RESPONSES})
async def segment(
    request: Request,
    format: Literal["png", "json"] | None = Query(None, description="png (default) or json; or send Accept: application/json"),
    output: Literal["mask", "color", "overlay", "probabilities"] = Query(
        "mask", description="with format=png: class-index mask, colour mask, overlay PNG or float32 probability TIFF (K pages)"),
    include: str = Query("", description=f"with format=json, comma-separated extras: {', '.join(INCLUDES)}"),
    tta: bool | None = Query(None, description="average the flips/rotations (up to 8x slower); default: the model's "
                             "own choice (training turns TTA on where it helped the validation images)"),
    state: AppState = Depends(app_state),
) -> Response:
    """Segment one image (multipart field `file`, or the raw body). Large images are tiled."""
    deadline = time.monotonic() + state.config.request_timeout_seconds
    service = ready_service(state)
    fmt = format or ("json" if "application/json" in request.headers.get("accept", "") else "png")
    extras = {p.strip() for p in include.split(",") if p.strip()}
    if extras - set(INCLUDES):
        raise RequestValidationError([{"loc": ("query", "include"), "msg": f"unknown {sorted(extras - set(INCLUDES))}; "
                                       f"expected some of {list(INCLUDES)}"}])
    context: RequestContext = request.state.context
    with context.span("receive"):
        upload = await read_upload(request, state.config, state.bodies, deadline)
    cancelled = threading.Event()
    watcher = asyncio.create_task(watch_disconnect(request, cancelled))
    try:
        with service.admission():
            body, media, headers = await run_in_threadpool(
                _segment_blocking, state, service, upload.data, upload.name, fmt, output, extras, tta, context,
                Limits(deadline, cancelled))
    finally:
        watcher.cancel()
        upload.release()
    return Response(body, media_type=media, headers=headers)


@dataclass(frozen=True)
class Limits:
    """When a request's work stops early: its deadline (time.monotonic()) or its client going away."""

    deadline: float
    cancelled: threading.Event


async def watch_disconnect(request: Request, cancelled: threading.Event) -> None:
    """Set `cancelled` once the client closes the connection: a client that gave up costs no more
    tiles. The body is read by then, so the next ASGI message can only be the disconnect; it is
    awaited directly (`Request.is_disconnected` polls with a cancelled scope, which never sees it
    through the HTTP middleware's receive wrapper)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancelled.set()


def _segment_blocking(state: AppState, service: Service, data: bytes, name: str, fmt: str, output: str,
                      include: set[str], tta: bool | None, context: RequestContext,
                      limits: Limits) -> tuple[bytes, str, dict[str, str]]:
    """Decode, segment, encode: the whole request's CPU work, in a pool thread. The header is read first:
    size and channels are checked and the image waits for room in the pixel budget before it is decoded
    (an image of more than 4 channels counts once per 4)."""
    max_channels = service.max_channels()
    height, width, channels = inspect_upload(data, name, state.config.max_pixels, max_channels)
    with service.pixels(height * width * -(-channels // MAX_CHANNELS), limits.deadline):
        return _segment_admitted(state, service, data, name, fmt, output, include, tta, context, limits,
                                 max_channels)


def _segment_admitted(state: AppState, service: Service, data: bytes, name: str, fmt: str, output: str,
                      include: set[str], tta: bool | None, context: RequestContext, limits: Limits,
                      max_channels: int) -> tuple[bytes, str, dict[str, str]]:
    start = time.perf_counter()
    request_id = context.request_id
    with context.span("decode", **{"unetkit.body_bytes": len(data)}):
        image = decode_upload(data, name, state.config.max_pixels, max_channels)
    decoded = time.perf_counter()
    seg = service.segment(image, SegmentOptions(tta=tta, keep_probabilities=fmt == "png" and output == "probabilities",
                                                deadline=limits.deadline, cancelled=limits.cancelled, context=context))
    inferred = time.perf_counter()
    timing = {"decode_ms": round((decoded - start) * 1000, 2), "inference_ms": round((inferred - decoded) * 1000, 2)}
    headers = {"X-Model-Version": seg.model.version, "X-Model-Role": seg.model.role,
               "X-Inference-Ms": str(timing["inference_ms"])}
    with context.span("encode", **{"unetkit.format": fmt, "unetkit.output": output}):
        if fmt == "json":
            payload = segment_json(seg, image, include, request_id, {**timing, "total_ms": 0.0}, seg.tta,
                                   state.config.max_output_values)
            payload["timing"]["total_ms"] = round((time.perf_counter() - start) * 1000, 2)
            body, media = json.dumps(payload, allow_nan=False).encode(), "application/json"
        else:
            body, media = binary_output(seg, image, output)
    if state.sampler is not None:
        meta = {"request_id": request_id, "trace_id": context.trace_id, "name": name,
                "model_name": seg.model.name, "model_version": seg.model.version, "model_role": seg.model.role,
                **seg.summary}
        state.sampler.maybe_save(request_id, image, seg.labels, meta)  # queued: written by the sampler's thread
    return body, media, headers
