"""Probes, metrics and the demo page: /healthz, /readyz, /metrics, /. No auth; never waits for the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetkit.serve import schemas
from unetkit.serve.metrics import CONTENT_TYPE
from unetkit.serve.state import AppState, app_state

try:
    from fastapi import APIRouter, Depends
    from fastapi.responses import HTMLResponse, JSONResponse, Response
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None

PAGE = Path(__file__).with_name("static") / "index.html"

router = APIRouter()


@router.get("/healthz", response_model=schemas.Health, tags=["health"])
async def healthz(state: AppState = Depends(app_state)) -> Any:  # async: probes never wait for a pool thread
    """Alive (the process answers); 500 only when the model failed to load."""
    if state.status == "failed":
        return JSONResponse({"status": "failed", "error": state.error}, 500)
    return {"status": "ok"}


@router.get("/readyz", response_model=schemas.Health, tags=["health"],
            responses={503: {"model": schemas.Health, "description": "loading, draining or failed"}})
async def readyz(state: AppState = Depends(app_state)) -> Any:
    """Ready: the model is loaded and warmed up and the server is not shutting down."""
    if state.status != "ready" or state.service is None:
        return JSONResponse({"status": state.status, "error": state.error}, 503, headers={"Retry-After": "1"})
    return {"status": "ready", "model_version": state.service.primary.version}


@router.get("/metrics", tags=["health"], response_class=Response)  # async: a few hundred lines, cheap
async def metrics(state: AppState = Depends(app_state)) -> Response:
    """Prometheus text exposition."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/", include_in_schema=False)
def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))
