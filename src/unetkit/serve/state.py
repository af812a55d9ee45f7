"""What the routes share: `AppState` (kept on `app.state.unetkit`) and the dependencies that reach it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from unetkit.config import ServeConfig
from unetkit.serve.auth import TokenStore
from unetkit.serve.errors import NotReady
from unetkit.serve.metrics import ServeMetrics
from unetkit.serve.sampling import Sampler
from unetkit.serve.service import Service
from unetkit.serve.tracing import Tracing
from unetkit.serve.upload import BodyBudget

try:
    from fastapi import Request
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None


@dataclass
class AppState:
    config: ServeConfig
    metrics: ServeMetrics
    tokens: TokenStore
    sampler: Sampler | None
    bodies: BodyBudget
    service: Service | None = None
    status: str = "loading"
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    follower: Any = None  # a RegistryFollower when serving from a model registry
    tracing: Tracing | None = None  # OpenTelemetry traces (None: off, the default)


async def app_state(request: Request) -> AppState:  # async: no thread-pool hop for a lookup
    """Dependency: the app's shared state."""
    return request.app.state.unetkit


def ready_service(state: AppState) -> Service:
    """The service, or NotReady (503) while the model loads or after it failed (the reason is in the log
    and in /readyz for a token with the model scope, not here). While draining, requests are still
    answered: /readyz is 503 so that load balancers stop sending, but what they send meanwhile is served."""
    if state.service is None or state.status not in ("ready", "draining"):
        raise NotReady(f"model {state.status}")
    return state.service
