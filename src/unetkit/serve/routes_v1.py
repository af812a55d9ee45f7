"""The v1 API: /v1/model and /v1/segment, behind the bearer token.

/v1/segment reads the upload on the event loop (streamed, capped at `max_body_bytes`) and does all of
its CPU work (decode, segment through the batcher, encode) in a pool thread.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

from unetkit.serve import schemas
from unetkit.serve.auth import authorized
from unetkit.serve.encoding import CorruptImage, UnsupportedImage, decode_upload, inspect_upload
from unetkit.serve.errors import ERROR_RESPONSES, BodyTooLarge
from unetkit.serve.logs import log, request_id_var
from unetkit.serve.render import INCLUDES, binary_output, segment_json
from unetkit.serve.service import SegmentOptions, Service
from unetkit.serve.state import AppState, app_state, ready_service

try:
    from fastapi import APIRouter, Depends, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.concurrency import run_in_threadpool
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect
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

router = APIRouter(dependencies=[Depends(authorized)])


@router.get("/v1/model", response_model=schemas.ModelResponse, tags=["v1"],
            responses={k: v for k, v in ERROR_RESPONSES.items() if k in (401, 503)})
def model_info(state: AppState = Depends(app_state)) -> Any:
    """The served model: name, version (weights sha256 prefix), classes and colours, expected input."""
    service = ready_service(state)
    info = service.models()
    return {**info["primary"], "candidate": info["candidate"], "rollout": info["rollout"],
            "canary_percent": info["canary_percent"]}


@router.post("/v1/segment", tags=["v1"], openapi_extra={"requestBody": SEGMENT_BODY},
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
    state: AppState = Depends(app_state),
) -> Response:
    """Segment one image (multipart field `file`, or the raw body). Large images are tiled."""
    service = ready_service(state)
    fmt = format or ("json" if "application/json" in request.headers.get("accept", "") else "png")
    extras = {p.strip() for p in include.split(",") if p.strip()}
    if extras - set(INCLUDES):
        raise RequestValidationError([{"loc": ("query", "include"), "msg": f"unknown {sorted(extras - set(INCLUDES))}; "
                                       f"expected some of {list(INCLUDES)}"}])
    with service.admission():
        data, name = await read_upload(request, state.config.max_body_bytes)
        rid = request_id_var.get()
        body, media, headers = await run_in_threadpool(
            _segment_blocking, state, service, data, name, fmt, output, extras, tta, rid)
    return Response(body, media_type=media, headers=headers)


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
