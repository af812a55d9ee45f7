"""The HTTP layer's errors: its own error classes, the status each error maps to, the JSON error body
`{"error": {"code", "message"}}`, and the exception handlers that send it."""

from __future__ import annotations

from typing import Any

from unetkit.errors import InputError, UnetkitError
from unetkit.serve import schemas
from unetkit.serve.batching import QueueFull
from unetkit.serve.encoding import CorruptImage, ImageTooLarge, UnsupportedImage

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None


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
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {  # the OpenAPI description of the error answers
    code: {"model": schemas.ErrorResponse, "description": text} for code, text in {
        400: "corrupt image or bad request", 401: "missing or wrong bearer token", 413: "body or image too large",
        415: "unsupported image format", 422: "invalid parameter", 503: "overloaded or not ready (see Retry-After)",
    }.items()
}


def error_response(exc: BaseException) -> JSONResponse:
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


async def known_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, QueueFull):
        request.app.state.unetkit.metrics.rejected.labels("overloaded").inc()
    return error_response(exc)


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, exc.status_code,
                        headers=getattr(exc, "headers", None))


async def invalid_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return JSONResponse({"error": {"code": "invalid_parameter", "message": f"{where}: {first.get('msg')}"}}, 422)


def add_error_handlers(app: FastAPI) -> None:
    """Every error becomes the JSON error body with its status (uncaught ones: see `middleware.observe`)."""
    app.add_exception_handler(UnetkitError, known_error)
    app.add_exception_handler(QueueFull, known_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_parameter)
