"""Where a registry keeps its artifacts, and whose they are (issue 16, case 1): a blob store belongs to
one registry database (its ownership marker), a second database is refused instead of deleting the
first one's artifacts, and a reader (serving) neither recovers nor writes anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unetkit.cli import app
from unetkit.errors import RegistryError
from unetkit.registry import db as schema
from unetkit.registry.blobs import MARKER
from unetkit.registry.db import Database
from unetkit.registry.registry import Registry


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and mtime: what a read-only open must not change. SQLite's
    shared-memory index (-shm) and an empty -wal are left out: a reader creates them where it may (not
    where it has read access only), and they hold no data."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith("-shm") and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


def test_issue16_case1_a_second_database_in_the_same_folder_deletes_nothing(tmp_path, artifacts):
    """Before: `registry list` on b.db (blobs/ shared with a.db) removed a.db's blob as an orphan, and a.db's
    tiny:1 failed to load. Now b.db is refused the shared folder, and gets its own with --store."""
    with Registry.open(tmp_path / "a.db") as a:
        a.add(artifacts["base"])
    listed = CliRunner().invoke(app, ["registry", "list", "--registry", str(tmp_path / "b.db")])
    assert listed.exit_code != 0 and isinstance(listed.exception, RegistryError)
    assert "belongs to registry sqlite:///" in str(listed.exception) and "a.db" in str(listed.exception)
    assert "--store DIR" in str(listed.exception)
    with Registry.open(tmp_path / "a.db") as a:
        assert a.load("tiny:1").meta.name == "tiny"
    with Registry.open(tmp_path / "b.db", tmp_path / "b-blobs") as b:  # its own folder: fine
        assert b.add(artifacts["base"]).record.ref == "tiny:1"
    with Registry.open(tmp_path / "a.db") as a:
        a.add(artifacts["better"])  # a's writer recovers in its own store only
        assert [a.load(r).meta.name for r in a.list()] == ["tiny", "tiny"]


def test_issue16_case1_a_new_database_given_an_existing_store_is_refused(location, artifacts, tmp_path, postgres):
    """Before: a new database given --store pointing at another registry's store deleted its blobs on open."""
    store = location.store or str(tmp_path / "reg" / "blobs")
    with Registry.open(location.url, location.store) as first:
        first.add(artifacts["base"])
    marker = json.loads((Path(store) / MARKER).read_text())
    assert marker["registry_id"] == first.db.registry_id() and marker["kept"] == []
    for other in (str(tmp_path / "other.db"), postgres.new_database()):
        with pytest.raises(RegistryError, match="belongs to registry .*a store is never shared"):
            Registry.open(other, store)
    with Registry.open(location.url) as reg:
        assert reg.load("tiny:1").meta.name == "tiny"


def test_issue16_case1_an_unclaimed_store_keeps_what_it_cannot_prove_is_an_orphan(tmp_path, artifacts):
    """Stores made before ownership markers: the first writer claims it, and the blobs it does not
    reference (perhaps another registry's) are kept, never removed; the second database is refused."""
    with Registry.open(tmp_path / "a.db") as a:
        a.add(artifacts["base"])
        shared = a.store.root
    (shared / MARKER).unlink()  # as an older unetkit left it
    b = Database(tmp_path / "b.db")  # b.db recorded the same store, as an older unetkit let it
    with b.write() as conn:
        conn.execute(schema.settings.insert().values(key="store", value="blobs"))
    b.close()
    with Registry.open(tmp_path / "b.db") as b:
        b.add(artifacts["other"])  # claims the store; a's blob is kept, not taken for b's orphan
        assert len(b.store.kept) == 1 and b.recover().orphan_blobs == ()
    with Registry.open(tmp_path / "a.db") as a:
        assert a.load("tiny:1").meta.name == "tiny"  # still there
        with pytest.raises(RegistryError, match="belongs to registry"):
            a.add(artifacts["better"])  # a writer of a store another registry claimed is refused
    fresh = tmp_path / "c" / "c.db"
    fresh.parent.mkdir()
    (fresh.parent / "blobs" / "00").mkdir(parents=True)
    (fresh.parent / "blobs" / "00" / f"{'0' * 64}.unetkit").write_bytes(b"someone's")
    with pytest.raises(RegistryError, match="already holds 1 artifacts of another registry"):
        Registry.open(fresh)  # a new registry never adopts a folder that already has blobs


def test_issue16_case1_recovery_runs_only_for_writers_and_a_reader_writes_nothing(tmp_path, artifacts):
    """Before: every open (a server's too) ran recovery, so serving needed write access. Now a
    read-only open (SQLite mode=ro) changes no byte; add, promote and rollback are refused."""
    path = tmp_path / "reg" / "registry.db"
    with Registry.open(path) as reg:
        reg.add(artifacts["base"], stage="production")
        debris = reg.store.tmp / "dead.partial"
        debris.write_bytes(b"x")  # what a crashed writer leaves
    before = snapshot(path.parent)
    with Registry.open(path, read_only=True) as reader:
        assert reader.resolve("production").ref == "tiny:1"
        assert reader.load("tiny:production").meta.name == "tiny"
        for write in (lambda: reader.add(artifacts["better"]), lambda: reader.promote("tiny:1", "staging"),
                      lambda: reader.rollback("tiny"), reader.recover):
            with pytest.raises(RegistryError, match="is open read-only"):
                write()
        with pytest.raises(RegistryError, match="readonly|read-only"), reader.db.write() as conn:
            conn.execute(schema.settings.insert().values(key="x", value="y"))  # the database refuses too
    assert snapshot(path.parent) == before and debris.exists()
    with pytest.raises(RegistryError, match="cannot open the database"):
        Registry.open(tmp_path / "missing.db", read_only=True)
    assert not (tmp_path / "missing.db").exists()
    with Registry.open(path) as writer:
        assert writer.add(artifacts["better"]).record.ref == "tiny:2" and not debris.exists()


def test_a_read_only_postgresql_session_refuses_writes(postgres, tmp_path, artifacts):
    url = postgres.new_database()
    with Registry.open(url, tmp_path / "store") as reg:
        reg.add(artifacts["base"])
    with Registry.open(url, read_only=True) as reader:
        assert [r.ref for r in reader.list()] == ["tiny:1"]
        with pytest.raises(Exception, match="read-only transaction"), reader.db.write() as conn:
            conn.execute(schema.settings.insert().values(key="x", value="y"))
    assert os.listdir(tmp_path / "store")  # untouched
