"""The registry's database: the schema (SQLAlchemy Core) and an engine for a URL or a file path.

An embedded SQLite file by default (`sqlite:///path/registry.db` or a plain path); PostgreSQL with
`postgresql+psycopg://user@host/db` (`postgresql://` is read as psycopg 3). Tables carry a
`unetkit_` prefix, so a shared PostgreSQL database can hold them next to others.

Transactions: `Database.write()` serializes writers. On SQLite it opens `BEGIN IMMEDIATE` (the
write lock is taken at once, and a busy database is waited for up to `busy_timeout` seconds instead
of failing half-way through); on PostgreSQL a writer locks its model's row (`SELECT ... FOR UPDATE`,
see registry.py). SQLite runs in WAL mode so that readers (a server polling for promotions) never
block writers.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from unetkit.config import REGISTRY_STAGES
from unetkit.errors import RegistryError

SCHEMA_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PG_LOCK_ID = 0x756E65746B6974  # "unetkit": serializes schema creation on PostgreSQL
_INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE for a refused GRANT or row-level policy

metadata = MetaData()

settings = Table(
    "unetkit_settings", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

models = Table(
    "unetkit_models", metadata,
    Column("name", String(128), primary_key=True),
    Column("last_version", Integer, nullable=False, default=0),  # never decreases: version numbers are not reused
    Column("created_at", DateTime(timezone=True), nullable=False),
)

blobs = Table(
    "unetkit_blobs", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

versions = Table(
    "unetkit_versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), ForeignKey("unetkit_models.name"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("sha256", String(64), ForeignKey("unetkit_blobs.sha256"), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(128), nullable=False, default=""),
    Column("note", Text, nullable=False, default=""),
    Column("git_commit", String(64), nullable=False, default=""),
    Column("source", Text, nullable=False, default=""),  # the path it was added from
    Column("meta", JSON, nullable=False),  # metrics, fingerprint, plan, calibration, classes, architecture...
    UniqueConstraint("name", "version"),
    UniqueConstraint("name", "sha256"),  # the same artifact added twice under one name is one version
    CheckConstraint(f"stage IN {REGISTRY_STAGES}", name="unetkit_versions_stage"),
    Index("unetkit_one_version_per_stage", "name", "stage", unique=True,
          sqlite_where=text("stage IN ('staging', 'production')"),
          postgresql_where=text("stage IN ('staging', 'production')")),
)

events = Table(
    "unetkit_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("action", String(16), nullable=False),  # register, promote, supersede, rollback
    Column("from_stage", String(16)),  # None for register
    Column("to_stage", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
    Column("forced", Boolean, nullable=False, default=False),  # the promotion gate refused and was overridden
    Column("details", JSON, nullable=False),  # e.g. the gate's metric comparisons
    ForeignKeyConstraint(["name", "version"], ["unetkit_versions.name", "unetkit_versions.version"]),
    Index("unetkit_events_by_model", "name", "id"),
)


def now() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def database_url(location: str | Path) -> str:
    """A SQLAlchemy URL for a URL or a plain file path (an SQLite file, folders created on open)."""
    text_ = str(location).strip()
    if not text_:
        raise RegistryError("registry location is empty: give a path (registry.db) or a URL (sqlite:///..., postgresql+psycopg://...)")
    if "://" not in text_:
        return f"sqlite:///{Path(text_).expanduser().resolve()}"
    scheme = text_.split("://", 1)[0]
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg://" + text_.split("://", 1)[1]
    if scheme.startswith(("sqlite", "postgresql")):
        return text_
    raise RegistryError(f"registry {text_}: unsupported database '{scheme}'; use a file path, sqlite:///PATH or postgresql+psycopg://...")


class Database:
    """An engine with the registry schema; `read()` and `write()` give connections in a transaction.

    `read_only`: never write, not even on first use (a missing schema is an error): SQLite opens the file
    with `mode=ro`, PostgreSQL sessions run with `default_transaction_read_only`, so a stray write fails
    in the database itself."""

    def __init__(self, location: str | Path, busy_timeout: float = 30.0, read_only: bool = False) -> None:
        self.url = database_url(location)
        self.read_only = read_only
        try:
            if self.url.startswith("sqlite"):
                self.engine = _sqlite_engine(self.url, busy_timeout, read_only)
            else:
                options = {"options": "-c default_transaction_read_only=on"} if read_only else {}
                self.engine = create_engine(self.url, pool_pre_ping=True, connect_args=options)
        except ArgumentError as e:
            raise RegistryError(f"registry {location}: not a valid database URL ({e})") from None
        except ImportError as e:
            raise RegistryError(f"registry {location}: the database driver is missing ({e.name}); "
                                "pip install 'unetkit[postgres]'") from None
        self.dialect = self.engine.dialect.name
        self.display = self.engine.url.render_as_string(hide_password=True)
        try:
            self._create_schema()
        except BaseException:
            self.engine.dispose()
            raise

    @property
    def sqlite_file(self) -> Path | None:
        """The database file of an SQLite registry (None for a server database or in-memory SQLite)."""
        if self.dialect != "sqlite" or not self.engine.url.database or self.engine.url.database == ":memory:":
            return None
        return Path(self.engine.url.database)

    @contextmanager
    def read(self, failure: str = "database error") -> Iterator[Connection]:
        with self._errors(failure, "unetkit_viewer"), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, failure: str = "database error", role: str = "") -> Iterator[Connection]:
        """One write transaction: committed when the block ends, rolled back on any error. `role`: the
        registry role the change needs (roles.py), named when the database refuses it."""
        with self._errors(failure, role), \
                self.engine.connect().execution_options(sqlite_begin="IMMEDIATE") as conn, conn.begin():
            yield conn

    def setting(self, conn: Connection, key: str) -> str | None:
        return conn.execute(select(settings.c.value).where(settings.c.key == key)).scalar_one_or_none()

    def registry_id(self, create: bool = False) -> str | None:
        """This registry's identity (a random UUID recorded on first use; its blob store is bound to it).
        `create`: record one if an older unetkit made the database without it."""
        with self.read() as conn:
            found = self.setting(conn, "registry_id")
        if found is None and create:
            with self.write() as conn:
                insert_ignore(conn, settings, {"key": "registry_id", "value": uuid.uuid4().hex})
                found = self.setting(conn, "registry_id")
        return found

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _errors(self, failure: str = "database error", role: str = "") -> Iterator[None]:
        try:
            yield
        except OperationalError as e:
            raise RegistryError(f"registry {self.display}: {failure} ({_first_line(e)})") from None
        except DBAPIError as e:
            if getattr(e.orig, "sqlstate", None) != _INSUFFICIENT_PRIVILEGE:
                raise
            needs = (f"; this needs the role {role}: the registry's owner can grant it with `unetkit registry "
                     f"grant USER {role.removeprefix('unetkit_')}`") if role else ""
            raise RegistryError(f"registry {self.display}: permission denied ({_first_line(e)}){needs}") from None

    def _create_schema(self) -> None:
        """Check the schema in a read transaction (opening never waits for a writer); create it once."""
        with self.read("cannot open the database") as conn:
            complete = set(metadata.tables) <= set(inspect(conn).get_table_names())
            stored = self.setting(conn, "schema_version") if complete else None
        if stored is None and self.read_only:
            raise RegistryError(f"registry {self.display} does not exist yet (no unetkit tables); "
                                "a read-only open never creates it: add a version first")
        if stored is None:
            with self.write("cannot open the database") as conn:
                if self.dialect == "postgresql":  # concurrent first opens: one creates, the others wait
                    conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
                metadata.create_all(conn)
                stored = self.setting(conn, "schema_version")
                if stored is None:
                    stored = str(SCHEMA_VERSION)
                    conn.execute(settings.insert().values(key="schema_version", value=stored))
                    conn.execute(settings.insert().values(key="registry_id", value=uuid.uuid4().hex))
        if int(stored) > SCHEMA_VERSION:
            raise RegistryError(f"registry {self.display}: schema version {stored} is newer than this "
                                f"unetkit understands ({SCHEMA_VERSION}); upgrade unetkit")

def insert_ignore(conn: Connection, table: Any, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; True when the row was inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    key = next(iter(table.primary_key.columns))
    statement = dialect.insert(table).values(**values).on_conflict_do_nothing().returning(key)
    return conn.execute(statement).first() is not None


def _sqlite_engine(url: str, busy_timeout: float, read_only: bool = False) -> Engine:
    engine = create_engine(url, connect_args={"timeout": busy_timeout})
    database = engine.url.database
    if read_only and database and database != ":memory:":
        engine.dispose()

        def connect() -> sqlite3.Connection:  # mode=ro: SQLite itself refuses any write
            return sqlite3.connect(f"{Path(database).as_uri()}?mode=ro", uri=True, timeout=busy_timeout,
                                   check_same_thread=False)

        engine = create_engine(url, creator=connect)
    elif database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite must not emit its own BEGIN: we do, below
        cursor = dbapi_connection.cursor()
        if not read_only:  # a read-only connection reads the journal mode the writers set
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")

    return engine


def _first_line(error: SQLAlchemyError) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]
