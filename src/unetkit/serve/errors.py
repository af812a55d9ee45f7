"""The HTTP layer's errors: its own error classes, the status each error maps to, the JSON error body
`{"error": {"code", "message"}}`, and the exception handlers that send it."""

from __future__ import annotations

from typing import Any

from unetkit.errors import InputError, UnetkitError
from unetkit.serve import schemas
from unetkit.serve.batching import ClientDisconnected, DeadlineExceeded, QueueFull
from unetkit.serve.encoding import CorruptImage, ImageTooLarge, UnsupportedImage
from unetkit.serve.render import OutputTooLarge

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


class Forbidden(UnetkitError):
    """A valid token without the scope the route needs (HTTP 403); also a cross-site browser request."""

    code = "forbidden"


class BodyTimeout(InputError):
    """The body did not arrive within `body_timeout_seconds` (HTTP 408)."""

    code = "body_timeout"


STATUS: list[tuple[type[BaseException], int]] = [
    (UnsupportedImage, 415), (ImageTooLarge, 413), (BodyTooLarge, 413), (OutputTooLarge, 413), (Unauthorized, 401),
    (Forbidden, 403), (BodyTimeout, 408), (ClientDisconnected, 499), (NotReady, 503), (QueueFull, 503),
    (DeadlineExceeded, 503),
    (CorruptImage, 400), (UnetkitError, 400),
]
CLOSE_CONNECTION = (BodyTooLarge, BodyTimeout)  # the rest of the body is not read: the connection is closed
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {  # the OpenAPI description of the error answers
    code: {"model": schemas.ErrorResponse, "description": text} for code, text in {
        400: "corrupt image or bad request", 401: "missing or wrong bearer token", 403: "the token lacks the scope",
        408: "the body was not sent in time", 413: "body, image or answer too large",
        415: "unsupported image format", 422: "invalid parameter",
        503: "overloaded, past the request deadline or not ready (see Retry-After)",
    }.items()
}


def error_response(exc: BaseException) -> JSONResponse:
    status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
    code = getattr(exc, "code", None) or ("overloaded" if isinstance(exc, QueueFull) else "invalid_input")
    if isinstance(exc, DeadlineExceeded):
        code = exc.code
    message = str(exc) if status < 500 or isinstance(exc, QueueFull) else "internal error; see the server log"
    headers = {}
    if status == 503:
        headers["Retry-After"] = str(max(1, round(getattr(exc, "retry_after", 1))))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, CLOSE_CONNECTION):
        headers["Connection"] = "close"
    if status == 500:
        code = "internal"
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


async def known_error(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, QueueFull):
        reason = ("disconnected" if isinstance(exc, ClientDisconnected) else
                  "deadline" if isinstance(exc, DeadlineExceeded) else "overloaded")
        request.app.state.unetkit.metrics.rejected.labels(reason).inc()
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
