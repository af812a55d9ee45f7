"""Who is calling: bearer tokens with scopes, read from a token file that is re-read when it changes.

The token file holds one token per line, hashed, so a leaked file does not leak the tokens:

    # sha256 of the token              name        scopes (default: segment,model)
    sha256:9f86d081884c7d65...0a08     alice       segment,model
    sha256:60303ae22b998861...4a27     prometheus  metrics

Make a line with `printf %s "$TOKEN" | sha256sum` (or `unetkit.serve.auth.token_line`). Scopes:
`segment` (POST /v1/segment), `model` (GET /v1/model, and the details of /readyz and /healthz),
`metrics` (GET /metrics), `admin` (all of them). A file holding a single line that is not a hash
is one plain token with every scope (the format before hashing; still read, with a warning).

A file with no token is an error, never "auth off". Auth is off only when no token is configured
at all (`token`, `token_file`, UNETKIT_SERVE_TOKEN all unset): then every caller has every scope
but is anonymous (`Identity.authenticated` is False). A changed file (mtime, size) is re-read at
most once a second; a changed file that does not parse keeps the previous tokens and logs an error.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from unetkit.config import ServeConfig
from unetkit.errors import ConfigError
from unetkit.serve.errors import Forbidden, Unauthorized
from unetkit.serve.logs import log

try:
    from fastapi import Request
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None

SCOPES = ("segment", "model", "metrics", "admin")
DEFAULT_SCOPES = frozenset({"segment", "model"})
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
RELOAD_EVERY = 1.0  # seconds between checks of the token file's mtime


@dataclass(frozen=True)
class Identity:
    name: str
    scopes: frozenset[str]
    authenticated: bool = True

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


OPEN = Identity("anonymous", frozenset(SCOPES), authenticated=False)  # no token configured: auth is off
ANONYMOUS = Identity("anonymous", frozenset(), authenticated=False)  # auth is on and no token was sent


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_line(token: str, name: str, scopes: tuple[str, ...] = ("segment", "model")) -> str:
    """A token file line for `token`."""
    return f"sha256:{token_digest(token)} {name} {','.join(scopes)}"


def parse_token_file(text: str, where: str) -> tuple[dict[str, Identity], bool]:
    """(sha256 hex digest -> identity, whether the file held one plain token); ConfigError naming the
    line for anything else."""
    lines = [(i, line.split("#", 1)[0].strip()) for i, line in enumerate(text.splitlines(), 1)]
    lines = [(i, line) for i, line in lines if line]
    if not lines:
        raise ConfigError(f"token_file {where}: holds no token; refusing to run without auth "
                          "(remove token_file to serve without a token on a trusted network)")
    if len(lines) == 1 and not lines[0][1].startswith("sha256:") and len(lines[0][1].split()) == 1:
        return {token_digest(lines[0][1]): Identity("token", frozenset(SCOPES))}, True
    tokens: dict[str, Identity] = {}
    for i, line in lines:
        parts = line.split()
        match = _HASHED.match(parts[0])
        if not match or len(parts) > 3:
            raise ConfigError(f"token_file {where}:{i}: expected 'sha256:<64 hex digits> NAME [SCOPES]'")
        name = parts[1] if len(parts) > 1 else f"token{i}"
        if not _NAME.match(name):
            raise ConfigError(f"token_file {where}:{i}: name {name!r}: use letters, digits and ._@-")
        scopes = frozenset(s for s in parts[2].split(",") if s) if len(parts) > 2 else DEFAULT_SCOPES
        if not scopes or scopes - set(SCOPES):
            raise ConfigError(f"token_file {where}:{i}: scopes {sorted(scopes - set(SCOPES)) or '(none)'}: "
                              f"expected some of {', '.join(SCOPES)}")
        tokens[match.group(1).lower()] = Identity(name, scopes)
    return tokens, False


class TokenStore:
    """The configured tokens: `config.token`, else `config.token_file` (re-read on change), else
    UNETKIT_SERVE_TOKEN. `identify(header)` is the caller's identity, or None for a wrong token."""

    def __init__(self, config: ServeConfig) -> None:
        self.path = Path(config.token_file) if config.token_file and not config.token else None
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        plain = config.token or ("" if config.token_file else os.environ.get("UNETKIT_SERVE_TOKEN", ""))
        self.tokens = {token_digest(plain): Identity("token", frozenset(SCOPES))} if plain else {}
        if self.path is not None:
            self.tokens = self._read()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens) or self.path is not None

    def _read(self) -> dict[str, Identity]:
        assert self.path is not None
        try:
            stat = self.path.stat()
            text = self.path.read_text()
        except OSError as e:
            raise ConfigError(f"token_file {self.path}: cannot read ({e.strerror})") from None
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        tokens, plain = parse_token_file(text, str(self.path))
        if plain:
            log(logging.WARNING, "token file holds a plain token; store its sha256 instead (see docs/serving.md)",
                token_file=str(self.path))
        return tokens

    def reload_if_changed(self) -> None:
        if self.path is None or time.monotonic() - self._checked < RELOAD_EVERY:
            return
        with self._lock:
            self._checked = time.monotonic()
            try:
                stat = self.path.stat()
                if (stat.st_mtime_ns, stat.st_size) == self._stamp:
                    return
                self.tokens = self._read()
                log(logging.INFO, "token file reloaded", token_file=str(self.path), tokens=len(self.tokens))
            except (OSError, ConfigError) as e:  # keep serving with the tokens we had, never with none
                log(logging.ERROR, "token file unreadable; keeping the previous tokens", error=str(e))

    def identify(self, header: str) -> Identity | None:
        """The identity for an Authorization header value: OPEN when auth is off, ANONYMOUS when no
        bearer token is sent, None when the token is wrong."""
        if not self.enabled:
            return OPEN
        self.reload_if_changed()
        scheme, _, given = header.partition(" ")
        if not header:
            return ANONYMOUS
        if scheme.lower() != "bearer" or not given.strip():
            return None
        digest = token_digest(given.strip())
        found = None
        for known, identity in self.tokens.items():  # compare with every entry: no timing hint of which
            if hmac.compare_digest(known, digest):
                found = identity
        return found


async def caller(request: Request) -> Identity:  # async: cheap, no thread-pool hop
    """The request's identity (ANONYMOUS without a token); 401 for a wrong token. Kept for the logs."""
    state = request.app.state.unetkit
    identity = state.tokens.identify(request.headers.get("authorization", ""))
    if identity is None:
        state.metrics.rejected.labels("unauthorized").inc()
        raise Unauthorized("wrong bearer token: send 'Authorization: Bearer <token>'")
    request.scope.setdefault("state", {})["identity"] = identity.name
    return identity


def require(scope: str):  # noqa: ANN201 - a FastAPI dependency
    """Dependency: the caller holds `scope` (401 without a token, 403 with a token lacking it)."""

    async def dependency(request: Request) -> Identity:
        identity = await caller(request)
        if identity.allows(scope):
            return identity
        state = request.app.state.unetkit
        if not identity.authenticated:
            state.metrics.rejected.labels("unauthorized").inc()
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        state.metrics.rejected.labels("forbidden").inc()
        raise Forbidden(f"token '{identity.name}' lacks the '{scope}' scope")

    return dependency


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
