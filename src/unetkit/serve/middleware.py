"""`observe`: the HTTP middleware that gives every request an id (X-Request-ID) and its record
(`tracing.RequestContext`: trace id, the answering model, the server span when tracing is on), counts
and times it, logs it (with the caller's token name, `identity`, when auth is on, and the trace id),
and turns an uncaught error into a 500 JSON body. Every response names its request (X-Request-ID)
and, once a model was chosen for it (errors after that included), the model (X-Model-Version); with
tracing on, `traceparent` names the server span."""

from __future__ import annotations

import logging
import time
from typing import Any

from unetkit.serve.errors import error_response
from unetkit.serve.logs import log, new_request_id, request_id_var
from unetkit.serve.tracing import RequestContext

try:
    from fastapi import Request
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None

QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")  # probes and scrapes: counted, not logged


async def observe(request: Request, call_next: Any) -> Any:
    state = request.app.state.unetkit
    metrics = state.metrics
    rid = new_request_id(request.headers.get("x-request-id"))
    token = request_id_var.set(rid)
    quiet = request.url.path in QUIET_ROUTES  # probes and scrapes are not traced either
    context = RequestContext.start(rid, request.headers, None if quiet else state.tracing,
                                   f"{request.method} {request.url.path}",
                                   {"http.request.method": request.method, "url.path": request.url.path,
                                    "unetkit.request_id": rid})
    request.state.context = context
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
    if context.model_version and "x-model-version" not in response.headers:  # an error after the model was chosen
        response.headers["X-Model-Version"] = context.model_version
    traceparent = context.finish(response.status_code, {"http.route": route, "http.response.status_code":
                                                        response.status_code})
    if traceparent:
        response.headers["traceparent"] = traceparent
    if route not in QUIET_ROUTES:
        log(logging.INFO, "request", method=request.method, path=request.url.path, status=response.status_code,
            duration_ms=round(seconds * 1000, 2), model_version=response.headers.get("x-model-version"),
            identity=request.scope.get("state", {}).get("identity"), trace_id=context.trace_id)
    request_id_var.reset(token)
    return response
