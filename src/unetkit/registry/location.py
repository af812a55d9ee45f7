"""Where a registry is (its database) and where it keeps the artifacts (its blob store).

The database: `--registry`, else $UNETKIT_REGISTRY, else ./unetkit-registry/registry.db. The store is
recorded in the database on first use: `blobs/` beside an SQLite file (relative, so the two move
together), or the `--store` / $UNETKIT_REGISTRY_STORE folder, which a database-server registry needs.
A store belongs to one registry (its ownership marker, see blobs.py): a writer claims it first.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from unetkit.config import REGISTRY_ENV, REGISTRY_STORE_ENV
from unetkit.errors import RegistryError
from unetkit.registry import db as schema
from unetkit.registry.blobs import BlobStore
from unetkit.registry.db import Database, insert_ignore

DEFAULT_LOCATION = "unetkit-registry/registry.db"


def default_location(location: str | None = None) -> str:
    """The registry to use: the given location, else $UNETKIT_REGISTRY, else ./unetkit-registry/registry.db."""
    return location or os.environ.get(REGISTRY_ENV) or DEFAULT_LOCATION


def open_store(db: Database, explicit: str | Path | None) -> BlobStore:
    """The blob store the registry records. On first use (none recorded yet) the store is claimed for
    this registry (blobs.py: refused when another registry's store is there) and then recorded
    (SQLite default: `blobs/` beside the file). A read-only database only finds it."""
    explicit = explicit or os.environ.get(REGISTRY_STORE_ENV) or None
    with db.read() as conn:
        recorded = db.setting(conn, "store")
    value = recorded
    if value is None:
        if db.read_only:
            raise RegistryError(f"registry {db.display} has no blob store recorded yet; a read-only open never "
                                "records one: add a version first")
        if explicit:
            value = str(Path(explicit).expanduser().resolve())
        elif db.sqlite_file is not None:
            value = "blobs"  # relative to the database file: the pair can be moved together
        else:
            raise RegistryError(f"registry {db.display}: a database-server registry needs --store DIR (or "
                                f"{REGISTRY_STORE_ENV}): the folder every user of the registry can reach that holds the artifacts")
    store = BlobStore(_resolve(db, value))
    if recorded is None:
        claim_store(db, store, first_use=True)
        with db.write() as conn:
            insert_ignore(conn, schema.settings, {"key": "store", "value": value})
            recorded = db.setting(conn, "store")
        assert recorded is not None
        store = BlobStore(_resolve(db, recorded))  # a racing first user may have recorded another one
    if explicit and Path(explicit).expanduser().resolve() != store.root:
        raise RegistryError(f"registry {db.display} keeps its artifacts in {store.root}, not {explicit}; "
                            "leave out --store (and UNETKIT_REGISTRY_STORE)")
    return store


def claim_store(db: Database, store: BlobStore, first_use: bool = False) -> None:
    """Bind `store` to this registry before it writes there (a writer's duty; blobs.BlobStore.claim)."""
    registry_id = db.registry_id(create=True)
    assert registry_id is not None

    def referenced() -> set[str]:
        with db.read() as conn:
            return set(conn.execute(select(schema.blobs.c.sha256)).scalars())

    store.claim(registry_id, db.display, referenced, first_use)


def _resolve(db: Database, value: str) -> Path:
    root = Path(value)
    if not root.is_absolute():
        if db.sqlite_file is None:
            raise RegistryError(f"registry {db.display}: recorded blob store {value!r} is relative but there is no database file")
        root = db.sqlite_file.parent / root
    return root.expanduser().resolve()
