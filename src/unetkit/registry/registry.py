"""The model registry: versions of trained models, their stages, and an audit trail of every change.

`Registry.open(location, store, read_only=False)` connects to the database (see db.py) and finds the
blob store it records (location.py, blobs.py). Opening writes nothing once the registry exists (and
`read_only=True` never writes: serving needs only read access). Then:

- `add(artifact)` verifies the artifact, stores it by content, and registers it as the next version
  of its model name (numbers assigned under the model's write lock, never reused); the same
  artifact added again under the same name is recognised and returns the existing version.
- `promote(ref, to)` moves a version to staging or production if the promotion gate passes (see
  gate.py) or it is forced with a reason; the version it replaces is archived.
- `rollback(name)` restores the production version before the current one and archives the current.
- `resolve(stage)`, `get(ref)`, `list()`, `history()`, `diff(a, b)`; `load(ref, trust)` reads the blob
  once and verifies its sha256, the artifact's own hashes and (with a `TrustPolicy`) its signature on
  those same bytes, and returns the `Artifact`.
- With a `TrustPolicy`, `add` and `promote` refuse an artifact not signed by a trusted key (when the
  policy requires signatures) and record the signer's key id (the version's `meta["signer"]`, and the
  event's details).

Crash safety of `add`: the artifact is copied to a locked temp file first; in one database
transaction the version row is inserted, the blob is renamed to its content address, and the
transaction commits. A process killed before the commit leaves no row; what it leaves on disk (a temp
file, or a blob no row references) is removed by the next writer's `add` (`recover`, which first makes
sure the store belongs to this registry: a blob is removed only when it is provably this registry's
orphan). Orphan removal takes the blob's row lock first (an `INSERT` of its sha256), so it never races
a writer about to commit.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from unetkit.artifact import Artifact, artifact_from_bytes, read_meta
from unetkit.config import SINGLE_STAGES
from unetkit.errors import ArtifactError, GateRefused, RegistryError
from unetkit.registry import db as schema
from unetkit.registry.blobs import BlobStore
from unetkit.registry.compare import diff_versions
from unetkit.registry.db import Database, as_utc, insert_ignore, now
from unetkit.registry.gate import DEFAULT_TOLERANCE, GateResult, check, loosening
from unetkit.registry.location import claim_store, default_location, open_store
from unetkit.registry.records import (
    Event,
    VersionRecord,
    artifact_git_commit,
    check_name,
    check_stage,
    describe_artifact,
    parse_ref,
)
from unetkit.registry.roles import NEEDED, identity, policy
from unetkit.signing import TrustPolicy

ENV_PAUSE = "UNETKIT_REGISTRY_PAUSE"  # fault injection for the crash tests, see `_pause`


class PromotionRefused(RegistryError, GateRefused):
    """The gate found the candidate worse than production; `gate` holds every comparison."""

    def __init__(self, ref: str, to: str, gate: GateResult) -> None:
        self.gate = gate
        super().__init__(f"promotion of {ref} to {to} refused: {gate.summary()}; to promote it anyway: "
                         f"unetkit registry promote {ref} --to {to} --force --reason TEXT")


@dataclass(frozen=True)
class Promotion:
    record: VersionRecord  # the promoted version, in its new stage
    gate: GateResult
    forced: bool  # the gate refused and `force` overrode it
    superseded: VersionRecord | None  # the version that left that stage (archived)


@dataclass(frozen=True)
class Registration:
    record: VersionRecord
    created: bool  # False: this artifact was already registered under this name
    promotion: Promotion | None = None


@dataclass(frozen=True)
class Rollback:
    restored: VersionRecord  # back in production
    archived: VersionRecord  # the production version it replaced


@dataclass(frozen=True)
class Recovery:
    temp_files: tuple[Path, ...]  # partial copies of writers that died
    orphan_blobs: tuple[str, ...]  # blobs published by a writer that died before its commit


class Registry:
    def __init__(self, db: Database, store: BlobStore) -> None:
        self.db, self.store = db, store

    @classmethod
    def open(cls, location: str | Path | None = None, store: str | Path | None = None,
             read_only: bool = False) -> Registry:
        """Connect and find the blob store (on first use: create the tables, claim and record the store).
        `read_only`: never write anything (a missing registry is an error; add/promote/rollback refused)."""
        db = Database(default_location(str(location) if location else None), read_only=read_only)
        try:
            return cls(db, open_store(db, store))
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ writing

    def add(self, artifact: str | Path, name: str | None = None, stage: str = "candidate", note: str = "",
            by: str | None = None, git_commit: str | None = None, force: bool = False, reason: str = "",
            tolerance: float = DEFAULT_TOLERANCE, tolerances: Mapping[str, float] | None = None,
            trust: TrustPolicy | None = None) -> Registration:
        """Register an artifact as the next version of `name` (default: the artifact's own name).

        A `stage` other than candidate promotes it in the same transaction (gated like `promote`).
        `trust` checks the artifact's signature (see signing.py) and records its signer."""

        check_stage(stage, ("candidate", *SINGLE_STAGES))
        read_meta(artifact)  # a missing or foreign file fails here, before anything is copied
        self.recover()  # checks the store is ours, then cleans up after crashed writers
        with self.store.stage(artifact) as blob:
            # verify the copy we keep (its bytes must be the ones hashed while copying), named as the user's file
            loaded = artifact_from_bytes(blob.path.read_bytes(), Path(artifact), sha256=blob.sha256, trust=trust)
            meta, signer = loaded.meta, loaded.signer
            name = check_name(name or meta.name)
            _pause("staged")
            published = False
            try:
                with self.db.write(role=NEEDED["promote" if stage != "candidate" else "add"]) as conn:
                    actor = identity(conn)
                    claimed = _claimed(actor, by)
                    self._lock_model(conn, name, create=True)
                    existing = self._find(conn, name, sha256=blob.sha256)
                    if existing is not None:
                        if not self.store.intact(blob.sha256):
                            self.store.publish(blob)  # put back a blob that went missing or was damaged
                        return Registration(existing, created=False)
                    insert_ignore(conn, schema.blobs, {"sha256": blob.sha256, "size_bytes": blob.size, "created_at": now()})
                    version = conn.execute(select(schema.models.c.last_version).where(schema.models.c.name == name)).scalar_one() + 1
                    conn.execute(update(schema.models).where(schema.models.c.name == name).values(last_version=version))
                    conn.execute(schema.versions.insert().values(
                        name=name, version=version, sha256=blob.sha256, stage="candidate", created_at=now(),
                        created_by=actor, note=note, git_commit=git_commit or artifact_git_commit(meta),
                        source=str(Path(artifact).resolve()),
                        meta={**describe_artifact(meta), **({"signer": signer} if signer else {})}))
                    self._event(conn, name, version, "register", None, "candidate", actor, note,
                                details={**claimed, **({"signer": signer} if signer else {})} or None)
                    record = self._find(conn, name, version=version)
                    assert record is not None
                    promotion = None
                    if stage != "candidate":
                        promotion = self._promote(conn, record, stage, force, reason, actor, tolerance, tolerances,
                                                  extra={**claimed, **({"signer": signer} if signer else {})})
                        record = promotion.record
                    self.store.publish(blob)
                    published = True
                    _pause("published")
            except BaseException:
                if published:  # the commit failed after the rename: the blob belongs to no row
                    self._remove_orphans({blob.sha256})
                raise
        _pause("committed")
        return Registration(record, created=True, promotion=promotion)

    def promote(self, ref: str, to: str, force: bool = False, reason: str = "", by: str | None = None,
                tolerance: float = DEFAULT_TOLERANCE, tolerances: Mapping[str, float] | None = None,
                only: Sequence[str] | None = None, trust: TrustPolicy | None = None) -> Promotion:
        """Move a version to staging or production; refused (`PromotionRefused`) when the gate finds
        it worse than production, unless `force` with a `reason`. `trust` checks the version's
        signature first (see signing.py) and records its signer in the promotion's details."""
        check_stage(to, SINGLE_STAGES)
        name, _ = parse_ref(ref)
        self._check_writable()
        checked = self.get(ref) if trust else None
        verified = self.load(checked, trust) if checked else None  # outside the write lock: it reads the whole blob
        with self.db.write(role=NEEDED["promote"]) as conn:
            self._lock_model(conn, name)
            record = self._resolve_ref(conn, ref)
            if checked is not None and (record.version, record.sha256) != (checked.version, checked.sha256):
                raise RegistryError(f"{ref} now names another version ({record.ref}) than the one whose signature "
                                    "was checked; try again")
            actor = identity(conn)
            signer = {"signer": verified.signer} if verified is not None and verified.signer else {}
            return self._promote(conn, record, to, force, reason, actor, tolerance, tolerances, only,
                                 extra={**_claimed(actor, by), **signer})

    def rollback(self, name: str, reason: str = "", by: str | None = None) -> Rollback:
        """Put the previous production version back in production and archive the current one."""
        check_name(name)
        self._check_writable()
        with self.db.write(role=NEEDED["rollback"]) as conn:
            actor = identity(conn)
            claimed = _claimed(actor, by)
            self._lock_model(conn, name)
            current = self._in_stage(conn, name, "production")
            if current is None:
                raise RegistryError(f"{name} has no version in production; nothing to roll back")
            entered = conn.execute(
                select(schema.events.c.version, schema.events.c.action)
                .where(schema.events.c.name == name, schema.events.c.to_stage == "production",
                       schema.events.c.action.in_(("promote", "rollback")))
                .order_by(schema.events.c.id)).all()
            stack: list[int] = []  # production versions in order; a rollback pops the one it replaced
            for version, action in entered:
                if action == "rollback":
                    stack.pop()
                else:
                    stack.append(version)
            if not stack or stack[-1] != current.version:
                raise RegistryError(f"{name}: the audit trail does not end with {current.ref} in production; "
                                    "promote the version you want explicitly")
            stack.pop()
            if not stack:
                raise RegistryError(f"{name}: {current.ref} is the first production version; there is none to roll back to")
            target = self._find(conn, name, version=stack[-1])
            assert target is not None
            self._set_stage(conn, current, "archived", "rollback", actor, reason, details={"restored": target.ref, **claimed})
            self._set_stage(conn, target, "production", "rollback", actor, reason, details={"replaced": current.ref, **claimed})
            restored, archived = self._find(conn, name, version=target.version), self._find(conn, name, version=current.version)
            assert restored is not None and archived is not None
            return Rollback(restored=restored, archived=archived)

    def recover(self) -> Recovery:
        """Remove what crashed writers left: temp files nobody holds, blobs no committed row references.

        Only in a store bound to this registry (claimed here if an older unetkit left it unclaimed;
        refused if another registry owns it), and never a blob the store held before it was claimed."""
        self._check_writable()
        claim_store(self.db, self.store)
        temp = tuple(self.store.stale_temp_files())
        with self.db.read() as conn:
            known = set(conn.execute(select(schema.blobs.c.sha256)).scalars())
        orphans = tuple(self._remove_orphans(set(self.store.stored()) - known - self.store.kept))
        return Recovery(temp, orphans)

    # ------------------------------------------------------------ reading

    def get(self, ref: str) -> VersionRecord:
        """`NAME`, `NAME:7`, `NAME:latest` or `NAME:production` (staging, candidate: the newest there)."""
        with self.db.read() as conn:
            return self._resolve_ref(conn, ref)

    def list(self, name: str | None = None, stage: str | None = None) -> list[VersionRecord]:
        query = _versions().order_by(schema.versions.c.name, schema.versions.c.version)
        if name:
            query = query.where(schema.versions.c.name == check_name(name))
        if stage:
            query = query.where(schema.versions.c.stage == check_stage(stage))
        with self.db.read() as conn:
            return [_record(row) for row in conn.execute(query)]

    def names(self) -> list[str]:
        with self.db.read() as conn:
            return list(conn.execute(select(schema.models.c.name).order_by(schema.models.c.name)).scalars())

    def history(self, name: str, version: int | None = None) -> list[Event]:
        query = select(schema.events).where(schema.events.c.name == check_name(name)).order_by(schema.events.c.id)
        if version is not None:
            query = query.where(schema.events.c.version == version)
        with self.db.read() as conn:
            return [_event(row) for row in conn.execute(query)]

    def resolve(self, stage: str, name: str | None = None) -> VersionRecord:
        """The version in `stage` (of model `name`; without a name, the registry must hold one model there)."""
        check_stage(stage)
        with self.db.read() as conn:
            if name:
                record = self._in_stage(conn, check_name(name), stage)
                if record is None:
                    raise RegistryError(f"{name} has no version in {stage} (registry {self.db.display})")
                return record
            names = list(conn.execute(select(schema.versions.c.name).where(schema.versions.c.stage == stage)
                                      .distinct().order_by(schema.versions.c.name)).scalars())
        if not names:
            raise RegistryError(f"no model has a version in {stage} (registry {self.db.display})")
        if len(names) > 1:
            raise RegistryError(f"several models have a version in {stage}: {', '.join(names)}; choose one by name")
        return self.resolve(stage, names[0])

    def diff(self, a: str, b: str) -> dict[str, Any]:
        return diff_versions(self.get(a), self.get(b))

    def fetch(self, record: VersionRecord) -> Path:
        """The blob's path, after checking its sha256 (a modified or missing blob is refused)."""
        return self.store.verified(record.sha256, f"{record.ref}")

    def load(self, ref: str | VersionRecord, trust: TrustPolicy | None = None) -> Artifact:
        """The verified `Artifact` of a version: the blob is read once, and its sha256, the artifact's
        weights/metadata hashes and (with `trust`) its signature are checked on those bytes."""

        record = ref if isinstance(ref, VersionRecord) else self.get(ref)
        data = self.store.read(record.sha256, record.ref)
        try:
            return artifact_from_bytes(data, self.store.path(record.sha256), trust=trust)
        except ArtifactError as e:
            raise ArtifactError(f"{record.ref}: {e}") from None

    # ------------------------------------------------------------ inside a transaction

    def _check_writable(self) -> None:
        if self.db.read_only:
            raise RegistryError(f"registry {self.db.display} is open read-only; open it without read_only to change it")

    def _lock_model(self, conn: Connection, name: str, create: bool = False) -> None:
        """Take the model's write lock (its row, FOR UPDATE); `create` adds the model on first use."""
        if create:
            insert_ignore(conn, schema.models, {"name": name, "last_version": 0, "created_at": now()})
        found = conn.execute(select(schema.models.c.name).where(schema.models.c.name == name).with_for_update()).first()
        if found is None:
            known = list(conn.execute(select(schema.models.c.name).order_by(schema.models.c.name)).scalars())
            raise RegistryError(f"no model named {name!r} in registry {self.db.display}; "
                                f"models: {', '.join(known) if known else 'none yet (unetkit registry add ARTIFACT)'}")

    def _find(self, conn: Connection, name: str, version: int | None = None, sha256: str | None = None) -> VersionRecord | None:
        query = _versions().where(schema.versions.c.name == name)
        if version is not None:
            query = query.where(schema.versions.c.version == version)
        if sha256 is not None:
            query = query.where(schema.versions.c.sha256 == sha256)
        row = conn.execute(query).first()
        return _record(row) if row is not None else None

    def _in_stage(self, conn: Connection, name: str, stage: str) -> VersionRecord | None:
        row = conn.execute(_versions().where(schema.versions.c.name == name, schema.versions.c.stage == stage)
                           .order_by(schema.versions.c.version.desc()).limit(1)).first()
        return _record(row) if row is not None else None

    def _resolve_ref(self, conn: Connection, ref: str) -> VersionRecord:
        name, selector = parse_ref(ref)
        if selector.isdigit():
            record = self._find(conn, name, version=int(selector))
        elif selector == "latest":
            latest = conn.execute(select(func.max(schema.versions.c.version)).where(schema.versions.c.name == name)).scalar()
            record = self._find(conn, name, version=latest) if latest is not None else None
        else:
            record = self._in_stage(conn, name, selector)
        if record is None:
            versions = list(conn.execute(select(schema.versions.c.version).where(schema.versions.c.name == name)
                                         .order_by(schema.versions.c.version)).scalars())
            if not versions:
                raise RegistryError(f"no model named {name!r} in registry {self.db.display}")
            raise RegistryError(f"{ref}: no such version of {name} (versions {versions[0]}..{versions[-1]}; "
                                "or :latest, :candidate, :staging, :production)")
        return record

    def _promote(self, conn: Connection, record: VersionRecord, to: str, force: bool, reason: str, actor: str,
                 tolerance: float, tolerances: Mapping[str, float] | None, only: Sequence[str] | None = None,
                 extra: dict[str, Any] | None = None) -> Promotion:
        if record.stage == to:
            raise RegistryError(f"{record.ref} is already in {to}")
        if record.stage == "production":
            raise RegistryError(f"{record.ref} is in production; promote another version to replace it, "
                                f"or `unetkit registry rollback {record.name}`")
        if force and not reason.strip():
            raise RegistryError("--force needs --reason TEXT: a forced promotion is recorded with its reason")
        production = self._in_stage(conn, record.name, "production")
        prod_metrics, against = (production.metrics, production.ref) if production else (None, None)
        gate = check(record.metrics, prod_metrics, against, tolerance, tolerances, only)
        loosened = loosening(check(record.metrics, prod_metrics, against), tolerance, tolerances, only,
                             policy(conn)["max_tolerance"])
        if loosened and not reason.strip():
            raise RegistryError(f"promotion of {record.ref} to {to} loosens the gate beyond the registry's policy "
                                f"({'; '.join(loosened)}); that counts as forcing it: give --reason TEXT (it is "
                                "recorded as forced)")
        if not gate.passed and not force:
            raise PromotionRefused(record.ref, to, gate)
        superseded = self._in_stage(conn, record.name, to)
        if superseded is not None:
            self._set_stage(conn, superseded, "archived", "supersede", actor, f"superseded by {record.ref}")
            superseded = self._find(conn, record.name, version=superseded.version)
        forced = not gate.passed or bool(loosened)
        details = {"gate": gate.to_dict(), **({"loosened": loosened} if loosened else {}), **(extra or {})}
        self._set_stage(conn, record, to, "promote", actor, reason, forced, details)
        promoted = self._find(conn, record.name, version=record.version)
        assert promoted is not None
        return Promotion(record=promoted, gate=gate, forced=forced, superseded=superseded)

    def _set_stage(self, conn: Connection, record: VersionRecord, to: str, action: str, actor: str, reason: str,
                   forced: bool = False, details: dict[str, Any] | None = None) -> None:
        conn.execute(update(schema.versions).where(schema.versions.c.name == record.name,
                                                   schema.versions.c.version == record.version).values(stage=to))
        self._event(conn, record.name, record.version, action, record.stage, to, actor, reason, forced, details)

    def _event(self, conn: Connection, name: str, version: int, action: str, from_stage: str | None, to_stage: str,
               actor: str, reason: str, forced: bool = False, details: dict[str, Any] | None = None) -> None:
        conn.execute(schema.events.insert().values(
            name=name, version=version, action=action, from_stage=from_stage, to_stage=to_stage, at=now(),
            actor=actor, reason=reason, forced=forced, details=details or {}))

    def _remove_orphans(self, candidates: set[str]) -> list[str]:
        """Delete blobs no committed row references. Inserting the blob's row first is the lock: a writer
        that has inserted it but not committed makes us wait, and then we find it referenced."""
        removed = []
        for sha256 in sorted(candidates - self.store.kept):
            with self.db.write() as conn:
                if insert_ignore(conn, schema.blobs, {"sha256": sha256, "size_bytes": 0, "created_at": now()}):
                    self.store.remove(sha256)
                    conn.execute(delete(schema.blobs).where(schema.blobs.c.sha256 == sha256))
                    removed.append(sha256)
        return removed


# ---------------------------------------------------------------- helpers


def _claimed(actor: str, by: str | None) -> dict[str, str]:
    """`--by NAME`, kept beside the authenticated actor (never instead of it) when it says someone else."""
    return {"claimed_by": by} if by and by != actor else {}


def _record(row: Any) -> VersionRecord:
    return VersionRecord(
        name=row.name, version=row.version, sha256=row.sha256, size_bytes=int(row.size_bytes), stage=row.stage,
        created_at=_iso(row.created_at), created_by=row.created_by, note=row.note, git_commit=row.git_commit,
        source=row.source, meta=row.meta)


def _versions() -> Any:
    """SELECT over versions with their blob's size."""
    return (select(schema.versions, schema.blobs.c.size_bytes)
            .join(schema.blobs, schema.versions.c.sha256 == schema.blobs.c.sha256))


def _event(row: Any) -> Event:
    return Event(name=row.name, version=row.version, action=row.action, from_stage=row.from_stage,
                 to_stage=row.to_stage, at=_iso(row.at), actor=row.actor, reason=row.reason,
                 forced=bool(row.forced), details=row.details)


def _iso(value: Any) -> str:
    return as_utc(value).isoformat(timespec="seconds")


def _pause(point: str) -> None:
    """Fault injection for the crash tests: with UNETKIT_REGISTRY_PAUSE=POINT[:SECONDS], `add` announces
    `paused at POINT` on stderr and sleeps there (for SECONDS, or until killed). Points: staged (blob in
    the temp folder), published (blob renamed, transaction not committed), committed."""
    wanted, _, seconds = os.environ.get(ENV_PAUSE, "").partition(":")
    if wanted != point:
        return
    print(f"unetkit registry: paused at {point} (pid {os.getpid()})", file=sys.stderr, flush=True)
    time.sleep(float(seconds) if seconds else 3600.0)
