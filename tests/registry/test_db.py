"""Database locations and schema bookkeeping."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from unetkit.errors import RegistryError
from unetkit.registry.db import Database, database_url, settings


def test_locations_become_sqlalchemy_urls(tmp_path):
    assert database_url(tmp_path / "r.db") == f"sqlite:///{tmp_path / 'r.db'}"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(RegistryError, match="unsupported database 'mysql'"):
        database_url("mysql://u@h/db")
    with pytest.raises(RegistryError, match="registry location is empty"):
        database_url(" ")


def test_sqlite_file_and_folders_are_created(tmp_path):
    db = Database(tmp_path / "a" / "b" / "registry.db")
    try:
        assert db.sqlite_file == tmp_path / "a" / "b" / "registry.db" and db.sqlite_file.is_file()
        with db.read() as conn:
            assert db.setting(conn, "schema_version") == "1"
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        db.close()


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "registry.db"
    db = Database(path)
    with db.write() as conn:
        conn.execute(update(settings).where(settings.c.key == "schema_version").values(value="99"))
    db.close()
    with pytest.raises(RegistryError, match="schema version 99 is newer than this unetkit understands"):
        Database(path)


def test_an_unreachable_server_is_one_clear_error(postgres):
    url = f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/no_such_database"
    with pytest.raises(RegistryError, match="cannot open the database .*no_such_database"):
        Database(url)


def test_a_folder_is_not_a_database(tmp_path):
    with pytest.raises(RegistryError, match="cannot open the database"):
        Database(tmp_path)
