"""Bearer-token authentication of the /v1 routes."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from unetkit.config import ServeConfig
from unetkit.errors import ConfigError
from unetkit.serve.errors import Unauthorized

try:
    from fastapi import Request
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None


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


def authorized(request: Request) -> None:
    """Dependency: passes when no token is set or the request carries it; else Unauthorized (401)."""
    state = request.app.state.unetkit
    if not state.token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), state.token.encode()):
        state.metrics.rejected.labels("unauthorized").inc()
        raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")
