"""`observe`: the HTTP middleware that gives every request an id (X-Request-ID), counts and times it,
logs it (with the caller's token name, `identity`, when auth is on), and turns an uncaught error into a
500 JSON body."""

from __future__ import annotations

import logging
import time
from typing import Any

from unetkit.serve.errors import error_response
from unetkit.serve.logs import log, new_request_id, request_id_var

try:
    from fastapi import Request
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None

QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")  # probes and scrapes: counted, not logged


async def observe(request: Request, call_next: Any) -> Any:
    metrics = request.app.state.unetkit.metrics
    rid = new_request_id(request.headers.get("x-request-id"))
    token = request_id_var.set(rid)
    start = time.perf_counter()
    metrics.inflight.inc()
    try:
        response = await call_next(request)
    except Exception as e:  # noqa: BLE001 - any bug becomes a 500 JSON body, never a dead process
        log(logging.ERROR, "unhandled error", exc_info=True, exc_type=type(e).__name__, error=str(e)[:500])
        response = error_response(e)
    finally:
        metrics.inflight.dec()
    seconds = time.perf_counter() - start
    route = getattr(request.scope.get("route"), "path", "unmatched")
    metrics.requests.labels(route, request.method, str(response.status_code)).inc()
    metrics.latency.labels(route).observe(seconds)
    response.headers["X-Request-ID"] = rid
    if route not in QUIET_ROUTES:
        log(logging.INFO, "request", method=request.method, path=request.url.path, status=response.status_code,
            duration_ms=round(seconds * 1000, 2), model_version=response.headers.get("x-model-version"),
            identity=request.scope.get("state", {}).get("identity"))
    request_id_var.reset(token)
    return response
