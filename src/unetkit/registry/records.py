"""What the registry hands out: a registered version, a stage-change event, a `NAME[:VERSION]` reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from unetkit.errors import RegistryError
from unetkit.registry.db import NAME_PATTERN, STAGES

SELECTORS = ("latest", "candidate", "staging", "production")


@dataclass(frozen=True)
class VersionRecord:
    name: str
    version: int
    sha256: str
    size_bytes: int
    stage: str
    created_at: str  # ISO 8601, UTC
    created_by: str
    note: str
    git_commit: str
    source: str
    meta: dict[str, Any]  # what the artifact says: metrics, fingerprint, plan, calibration, classes, ...

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta.get("metrics", {})

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, **asdict(self)}


@dataclass(frozen=True)
class Event:
    name: str
    version: int
    action: str  # register, promote, supersede, rollback
    from_stage: str | None
    to_stage: str
    at: str
    actor: str
    reason: str
    forced: bool
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"model name {name!r}: use letters, digits, '.', '_' or '-' (at most 128, no ':')")
    return name


def parse_ref(ref: str) -> tuple[str, str]:
    """`NAME` (= NAME:latest), `NAME:7`, or `NAME:production` / `:staging` / `:candidate` / `:latest`."""
    name, _, selector = ref.partition(":")
    selector = selector or "latest"
    check_name(name)
    if not (selector.isdigit() or selector in SELECTORS):
        raise RegistryError(f"version reference {ref!r}: after ':' expected a version number or one of {list(SELECTORS)}")
    return name, selector


def check_stage(stage: str, allowed: tuple[str, ...] = STAGES) -> str:
    if stage not in allowed:
        raise RegistryError(f"stage {stage!r}: expected one of {list(allowed)}")
    return stage
