"""What the registry keeps and hands out: a registered version (and what it records of its artifact),
a stage-change event, a `NAME[:VERSION]` reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from unetkit.config import REGISTRY_STAGES, to_dict
from unetkit.errors import RegistryError
from unetkit.metrics.scores import json_value
from unetkit.registry.db import NAME_PATTERN

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

    @property
    def signer(self) -> str:
        """Key id of the trusted key whose signature was verified when it was added ('' if none was)."""
        return self.meta.get("signer", "")

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


def check_stage(stage: str, allowed: tuple[str, ...] = REGISTRY_STAGES) -> str:
    if stage not in allowed:
        raise RegistryError(f"stage {stage!r}: expected one of {list(allowed)}")
    return stage


def describe_artifact(meta: Any) -> dict[str, Any]:
    """What the registry keeps of an artifact's metadata (JSON-safe: NaN becomes null)."""

    return json_value({
        "artifact_name": meta.name,
        "classes": list(meta.class_names),
        "architecture": to_dict(meta.model),
        "patch_size": list(meta.patch_size),
        "normalization": {"mean": list(meta.mean), "std": list(meta.std)},
        "metrics": meta.metrics,
        "calibration": {"temperature": meta.temperature, "class_scale": list(meta.class_scale),
                        "class_bias": list(meta.class_bias)},
        "postprocess": meta.postprocess,
        "fingerprint": meta.fingerprint,
        "plan": meta.plan,
        "lineage": meta.lineage,
        "versions": meta.versions,
        "artifact_created": meta.created,
        "weights_sha256": meta.weights_sha256,
        "meta_sha256": meta.meta_sha256,
    })


def artifact_git_commit(meta: Any) -> str:
    """A git commit the artifact records in its lineage or versions (`git_commit` or `commit`), else ''."""
    for section in (meta.lineage, meta.versions):
        for key in ("git_commit", "commit", "git"):
            value = section.get(key)
            if isinstance(value, str) and value:
                return value
    return ""
