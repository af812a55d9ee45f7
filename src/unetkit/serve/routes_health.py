"""Probes, metrics and the demo page: /healthz, /readyz, /metrics, /. Never waits for the model.

The probes answer anyone, but say only the state (ok, loading, ready, draining, failed) to callers
without a token holding the `model` scope; with one they add the model version and the load error.
/metrics needs the `metrics` scope unless `public_metrics` is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetkit.serve import schemas
from unetkit.serve.auth import ANONYMOUS, Identity, caller, require
from unetkit.serve.errors import Unauthorized
from unetkit.serve.metrics import CONTENT_TYPE
from unetkit.serve.state import AppState, app_state

try:
    from fastapi import APIRouter, Depends, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None

PAGE = Path(__file__).with_name("static") / "index.html"

router = APIRouter()


async def probe_caller(request: Request) -> Identity:
    """The caller of a probe: a wrong token makes it anonymous, never a 401 (probes always answer)."""
    try:
        return await caller(request)
    except Unauthorized:
        return ANONYMOUS


def details_for(identity: Identity) -> bool:
    """Whether the caller may see the model version and the load error."""
    return identity.authenticated and identity.allows("model")


@router.get("/healthz", response_model=schemas.Health, response_model_exclude_none=True, tags=["health"])
async def healthz(state: AppState = Depends(app_state), identity: Identity = Depends(probe_caller)) -> Any:
    """Alive (the process answers); 500 only when the model failed to load."""  # async: never waits for a pool thread
    if state.status == "failed":
        return JSONResponse({"status": "failed", **({"error": state.error} if details_for(identity) else {})}, 500)
    return {"status": "ok"}


@router.get("/readyz", response_model=schemas.Health, response_model_exclude_none=True, tags=["health"],
            responses={503: {"model": schemas.Health, "description": "loading, draining or failed"}})
async def readyz(state: AppState = Depends(app_state), identity: Identity = Depends(probe_caller)) -> Any:
    """Ready: the model is loaded and warmed up and the server is not shutting down."""
    details = details_for(identity)
    if state.status != "ready" or state.service is None:
        body = {"status": state.status, **({"error": state.error} if details and state.error else {})}
        return JSONResponse(body, 503, headers={"Retry-After": "1"})
    return {"status": "ready", **({"model_version": state.service.primary.version} if details else {})}


async def metrics_access(request: Request) -> None:
    if not request.app.state.unetkit.config.public_metrics:
        await require("metrics")(request)


@router.get("/metrics", tags=["health"], response_class=Response, dependencies=[Depends(metrics_access)])
async def metrics(state: AppState = Depends(app_state)) -> Response:  # async: a few hundred lines, cheap
    """Prometheus text exposition."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/", include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))
