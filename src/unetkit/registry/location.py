"""Where a registry is (its database) and where it keeps the artifacts (its blob store).

The database: `--registry`, else $UNETKIT_REGISTRY, else ./unetkit-registry/registry.db. The store is
recorded in the database on first use: `blobs/` beside an SQLite file (relative, so the two move
together), or the `--store` / $UNETKIT_REGISTRY_STORE folder, which a database-server registry needs.
"""

from __future__ import annotations

import os
from pathlib import Path

from unetkit.config import REGISTRY_ENV, REGISTRY_STORE_ENV
from unetkit.errors import RegistryError
from unetkit.registry import db as schema
from unetkit.registry.db import Database, insert_ignore

DEFAULT_LOCATION = "unetkit-registry/registry.db"


def default_location(location: str | None = None) -> str:
    """The registry to use: the given location, else $UNETKIT_REGISTRY, else ./unetkit-registry/registry.db."""
    return location or os.environ.get(REGISTRY_ENV) or DEFAULT_LOCATION


def store_root(db: Database, explicit: str | Path | None) -> Path:
    """The blob store the registry records; recorded on first open (SQLite default: `blobs/` beside the file)."""
    explicit = explicit or os.environ.get(REGISTRY_STORE_ENV) or None
    with db.read() as conn:
        recorded = db.setting(conn, "store")
    if recorded is None:
        if explicit:
            value = str(Path(explicit).expanduser().resolve())
        elif db.sqlite_file is not None:
            value = "blobs"  # relative to the database file: the pair can be moved together
        else:
            raise RegistryError(f"registry {db.display}: a database-server registry needs --store DIR (or "
                                f"{REGISTRY_STORE_ENV}): the folder every user of the registry can reach that holds the artifacts")
        with db.write() as conn:
            insert_ignore(conn, schema.settings, {"key": "store", "value": value})
            recorded = db.setting(conn, "store")
        assert recorded is not None
    root = Path(recorded)
    if not root.is_absolute():
        if db.sqlite_file is None:
            raise RegistryError(f"registry {db.display}: recorded blob store {recorded!r} is relative but there is no database file")
        root = db.sqlite_file.parent / root
    if explicit and Path(explicit).expanduser().resolve() != root.resolve():
        raise RegistryError(f"registry {db.display} keeps its artifacts in {root}, not {explicit}; "
                            "leave out --store (and UNETKIT_REGISTRY_STORE)")
    return root
