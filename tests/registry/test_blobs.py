"""The content-addressed store: staging, atomic publishing, verification, and temp files of dead writers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time

import pytest

from unetkit.errors import ArtifactError, RegistryError
from unetkit.registry.blobs import BlobStore


def test_stage_then_publish_at_the_content_address(tmp_path):
    source = tmp_path / "a.unetkit"
    source.write_bytes(b"weights" * 1000)
    store = BlobStore(tmp_path / "store")
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    with store.stage(source) as blob:
        assert blob.sha256 == sha and blob.size == 7000 and blob.path.parent == store.tmp
        assert store.stored() == {}  # nothing visible before publishing
        path = store.publish(blob)
    assert path == store.root / sha[:2] / f"{sha}.unetkit" and path.read_bytes() == source.read_bytes()
    assert store.stored() == {sha: path} and list(store.tmp.iterdir()) == []
    assert store.verified(sha, "m:1") == path
    path.write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="m:1: blob .* not the registered .* refusing to load it"):
        store.verified(sha, "m:1")
    store.remove(sha)
    with pytest.raises(RegistryError, match="is missing from the store"):
        store.verified(sha, "m:1")


def test_an_unpublished_stage_leaves_nothing(tmp_path):
    source = tmp_path / "a.unetkit"
    source.write_bytes(b"x")
    store = BlobStore(tmp_path / "store")
    with pytest.raises(RuntimeError), store.stage(source):
        raise RuntimeError("registration failed")
    assert list(store.tmp.iterdir()) == [] and store.stored() == {}


def test_temp_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    store = BlobStore(tmp_path / "store")
    holder = (
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    live, dead = store.tmp / "live.partial", store.tmp / "dead.partial"
    store.tmp.mkdir(parents=True)  # a writer's first stage creates it
    procs = [subprocess.Popen([sys.executable, "-c", holder, str(p)], stdout=subprocess.PIPE, text=True) for p in (live, dead)]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "locked"
        procs[1].kill()
        procs[1].wait(10)
        deadline = time.monotonic() + 10
        while True:  # the kernel frees the lock with the process
            removed = store.stale_temp_files()
            if removed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert removed == [dead] and live.exists() and not dead.exists()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
    assert store.stale_temp_files() == [live]


def test_issue16_case13_a_full_disk_while_staging_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import unetkit.registry.blobs as blobs
    from unetkit.errors import StorageError

    source = tmp_path / "a.bin"
    source.write_bytes(b"x" * 1000)
    store = BlobStore(tmp_path / "store")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(blobs, "write_all", full)
    with pytest.raises(StorageError, match=r"\.partial: could not write it \(the disk is full\)"), store.stage(source):
        pass
    assert list(store.tmp.iterdir()) == [] and store.stored() == {}
