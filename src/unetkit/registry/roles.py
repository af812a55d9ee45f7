"""Who may do what in a registry, and who did it.

Three roles, each including the one before (PostgreSQL role names, as a DBA would grant them):

| role                | may                                                              |
| ------------------- | ---------------------------------------------------------------- |
| `unetkit_viewer`    | list, show, history, diff, fetch/load (what serving needs)        |
| `unetkit_publisher` | + add versions as candidates                                     |
| `unetkit_approver`  | + promote (to staging/production), rollback, force past the gate |

The database's owner (who created the tables) is the admin: it creates the roles and grants them
(`create_roles`, `grant_role`; `unetkit registry grant USER ROLE`). On PostgreSQL these are real
database roles with GRANTs on the tables, so the server refuses a viewer's UPDATE even when it
writes its own SQL; a row-level policy lets a publisher insert only `register` events into the
audit trail. SQLite has no users: there the boundary is the file system (read access to the file
= viewer, write access = everything), and the recorded identity is the OS account.

The gate's policy (`policy`, `set_policy`; `unetkit registry policy --max-tolerance ...`): how far
`--tolerance` may loosen the gate before the promotion counts as forced (gate.py `loosening`;
defaults gate.MAX_TOLERANCE: 0.05 for scores, 5 pixels for HD95/ASSD; `NAME=VALUE` per metric or
word of one). Changing it is an admin's act (on PostgreSQL only the tables' owner may write
`unetkit_settings`).

The actor recorded for every change is the authenticated identity (`identity`): PostgreSQL's
`session_user`, or the OS account of the process (its uid, not `$LOGNAME`). A `--by NAME` is kept
beside it as `claimed_by`, never instead of it.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select, text, update

from unetkit.errors import RegistryError
from unetkit.registry import db as schema
from unetkit.registry.db import Database, insert_ignore
from unetkit.registry.gate import MAX_TOLERANCE

ROLES = {"viewer": "unetkit_viewer", "publisher": "unetkit_publisher", "approver": "unetkit_approver"}
NEEDED = {"add": "unetkit_publisher", "promote": "unetkit_approver", "rollback": "unetkit_approver"}
_TABLES = [t.name for t in schema.metadata.sorted_tables]

_SETUP = [
    *(f"""DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
          CREATE ROLE {role} NOLOGIN; END IF; END $$""" for role in ROLES.values()),
    "GRANT unetkit_viewer TO unetkit_publisher",
    "GRANT unetkit_publisher TO unetkit_approver",
    *(f"REVOKE ALL ON {table} FROM PUBLIC" for table in _TABLES),
    *(f"GRANT SELECT ON {table} TO unetkit_viewer" for table in _TABLES),
    "GRANT INSERT ON unetkit_models, unetkit_blobs, unetkit_versions, unetkit_events TO unetkit_publisher",
    "GRANT UPDATE (last_version) ON unetkit_models TO unetkit_publisher",  # also what FOR UPDATE needs
    "GRANT DELETE ON unetkit_blobs TO unetkit_publisher",  # a writer's cleanup of its own orphans
    "GRANT USAGE ON SEQUENCE unetkit_versions_id_seq, unetkit_events_id_seq TO unetkit_publisher",
    "GRANT UPDATE (stage) ON unetkit_versions TO unetkit_approver",
    "ALTER TABLE unetkit_events ENABLE ROW LEVEL SECURITY",
    "DROP POLICY IF EXISTS unetkit_events_read ON unetkit_events",
    "CREATE POLICY unetkit_events_read ON unetkit_events FOR SELECT USING (true)",
    "DROP POLICY IF EXISTS unetkit_events_register ON unetkit_events",
    "CREATE POLICY unetkit_events_register ON unetkit_events FOR INSERT TO unetkit_publisher "
    "WITH CHECK (action = 'register')",
    "DROP POLICY IF EXISTS unetkit_events_stage ON unetkit_events",
    "CREATE POLICY unetkit_events_stage ON unetkit_events FOR INSERT TO unetkit_approver WITH CHECK (true)",
]


def create_roles(db: Database) -> None:
    """Create the three roles and their GRANTs (idempotent; run by the tables' owner)."""
    _postgres_only(db)
    with db.write("cannot create the roles (run this as the owner of the registry's tables)") as conn:
        for statement in _SETUP:
            conn.execute(text(statement))


def grant_role(db: Database, user: str, role: str) -> str:
    """Make `user` (an existing database login) a member of `role` (viewer, publisher, approver)."""
    _postgres_only(db)
    if role not in ROLES:
        raise RegistryError(f"role {role!r}: expected one of {list(ROLES)}")
    create_roles(db)
    with db.write(f"cannot grant {ROLES[role]} to {user}") as conn:
        quoted = conn.dialect.identifier_preparer.quote(user)
        conn.execute(text(f"GRANT {ROLES[role]} TO {quoted}"))
    return ROLES[role]


def policy(conn: Connection) -> dict[str, Any]:
    """The registry's gate policy: `max_tolerance` by metric (`*`: every other)."""
    raw = conn.execute(select(schema.settings.c.value).where(schema.settings.c.key == "policy")).scalar_one_or_none()
    stored = json.loads(raw) if raw else {}
    return {"max_tolerance": {**MAX_TOLERANCE, **stored.get("max_tolerance", {})}}


def set_policy(db: Database, max_tolerance: Mapping[str, float]) -> dict[str, Any]:
    """Replace the maximum tolerances (`*` for every metric without its own)."""
    value = json.dumps({"max_tolerance": {k: float(v) for k, v in max_tolerance.items()}})
    with db.write("cannot change the policy (only the owner of the registry's tables can)") as conn:
        if not insert_ignore(conn, schema.settings, {"key": "policy", "value": value}):
            conn.execute(update(schema.settings).where(schema.settings.c.key == "policy").values(value=value))
        return policy(conn)


def identity(conn: Connection) -> str:
    """The authenticated identity: PostgreSQL's session user, else the process's OS account."""
    if conn.dialect.name == "postgresql":
        return str(conn.execute(text("SELECT session_user")).scalar_one())
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _postgres_only(db: Database) -> None:
    if db.dialect != "postgresql":
        raise RegistryError(f"registry {db.display}: roles need a PostgreSQL registry; an SQLite registry's "
                            "access is its file's permissions (read = viewer, write = everything)")
