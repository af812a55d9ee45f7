"""Durable writes (issue 16, case 13): fsync of file and folder, unique temp names, a full disk is one
clear error and leaves the previous file as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import unetkit.data.atomic as atomic
from unetkit.data.atomic import atomic_write, replace_dir, temp_name
from unetkit.errors import StorageError


def run_with_file_size_limit(code: str, limit: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `code` in a child whose files may not grow past `limit` bytes (RLIMIT_FSIZE: a write beyond
    it fails with EFBIG, as on a full disk; Python ignores SIGXFSZ)."""
    prelude = f"import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_issue16_case13_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    """Before: a rename without fsync; after a power loss the new name could point at an empty file."""
    synced = []
    real = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    atomic_write(tmp_path / "a.json", b"{}")
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".a.json.")) and synced[1] == str(tmp_path)
    assert (tmp_path / "a.json").read_bytes() == b"{}"
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == oct(0o666 & ~atomic._UMASK)
    # bookkeeping (Ray's run journal) keeps the all-or-nothing rename without the fsyncs
    synced.clear()
    atomic_write(tmp_path / "b.json", b"[]", durable=False)
    assert synced == [] and (tmp_path / "b.json").read_bytes() == b"[]"
    assert not list(tmp_path.glob(".b.json.*")) and oct((tmp_path / "b.json").stat().st_mode & 0o777) == oct(0o666 & ~atomic._UMASK)


def test_issue16_case13_concurrent_writers_of_one_path_never_share_a_temp_file(tmp_path):
    """Before: streaming outputs used `NAME.partial` for every writer, so two runs clobbered each other."""
    assert temp_name(tmp_path / "x.tif") != temp_name(tmp_path / "x.tif")
    payloads = [bytes([i]) * 2_000_000 for i in range(4)]
    threads = [threading.Thread(target=atomic_write, args=(tmp_path / "x.bin", p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (tmp_path / "x.bin").read_bytes() in payloads  # one writer's whole file, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_issue16_case13_a_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path):
    (tmp_path / "out.bin").write_bytes(b"old")
    done = run_with_file_size_limit("""
        from unetkit.data.atomic import atomic_write
        from unetkit.errors import StorageError
        try:
            atomic_write("out.bin", b"n" * 100_000)
        except StorageError as e:
            print(e)
    """, limit=50_000, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("out.bin: could not write it (the file size limit was reached); the previous "
                                   "out.bin is unchanged; free some space and try again")
    assert (tmp_path / "out.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temp file left


def test_a_failing_writer_leaves_no_temp_file(tmp_path):
    def save(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise ValueError("encoder failed")

    with pytest.raises(ValueError, match="encoder failed"):
        atomic_write(tmp_path / "o.png", save)
    assert list(tmp_path.iterdir()) == []


def test_replace_dir_swaps_a_folder_and_removes_the_old_one(tmp_path):
    out, new = tmp_path / "out.zarr", tmp_path / ".out.zarr.new.tmp"
    (out / "c").mkdir(parents=True)
    (out / "c" / "0").write_text("old")
    (new / "c").mkdir(parents=True)
    (new / "c" / "0").write_text("new")
    replace_dir(new, out)
    assert (out / "c" / "0").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.zarr"]
    with pytest.raises(StorageError, match="out.zarr: could not write it"):
        replace_dir(tmp_path / "missing.tmp", out)
    assert (out / "c" / "0").read_text() == "new"  # a failed swap puts the old tree back
