"""Durable all-or-nothing writes: the one place unetkit makes a file survive a crash or a full disk.

`atomic_write(path, data)` writes bytes (or lets a `save(tmp)` callable write) to a uniquely named
temp file in the same folder, fsyncs it, renames it over `path` and fsyncs the folder (`publish`), so after a
power loss `path` is either the old file or the whole new one, and two writers of one path never
share a temp file (the last rename wins, each file whole). `replace_dir(tmp, path)` does the same
for a folder (a zarr store): the new tree is fsynced and moved into place before the old one is
removed. Artifacts, checkpoints, registry blobs, images, reports and streaming outputs all go
through here.

A write that fails (disk full, file size limit, permission) raises `StorageError` naming the file
and the OS's reason; the temp file is removed and the previous file is left as it was. A process
killed mid-write leaves the previous file and a `.NAME.*.tmp` file beside it (remove it at will).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from unetkit.errors import StorageError

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_SPACE = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file size limit was reached",
          errno.EDQUOT: "the disk quota is exceeded"}


def atomic_write(path: str | Path, data: bytes | Callable[[str], object], durable: bool = True) -> Path:
    """Write `data` (bytes, or `save(tmp_path)` writing the file itself) to `path`, all or nothing.
    `durable=False` keeps the all-or-nothing rename but skips the fsyncs (~20 ms on a VM disk): for
    bookkeeping whose loss in a power cut only means work redone, never a wrong result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                write_all(fd, data)
            else:
                data(tmp)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        if not durable:
            os.replace(tmp, path)
            return path
        return publish(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise storage_error(path, e) from e
        raise


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Make the finished file `tmp` durable and rename it over `path` (same folder); fsync the folder."""
    path = Path(path)
    try:
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        raise storage_error(path, e) from e
    return path


def replace_dir(tmp: str | Path, path: str | Path) -> Path:
    """Move the finished folder `tmp` to `path` (same parent); what was at `path` is removed only once
    the new tree is durable and in place. A folder cannot be swapped in one rename, so the old one is
    first set aside as `.NAME.old-*`: a failure puts it back (and removes `tmp`), a crash in that
    instant leaves it there, never deleted."""
    tmp, path = Path(tmp), Path(path)
    old = None
    try:
        for folder, _, files in os.walk(tmp):
            for name in files:
                fsync_file(Path(folder) / name)
            fsync_dir(Path(folder))
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as e:
        if old is not None and not path.exists():
            os.replace(old, path)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(path, e) from e
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    return path


def temp_name(path: str | Path) -> Path:
    """A unique temp name beside `path` for a writer that creates the file (or folder) itself."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename or an unlink in `path` durable (a no-op where folders cannot be fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):  # file systems without directory fsync
            raise
    finally:
        os.close(fd)


def storage_error(path: Path, error: OSError) -> StorageError:
    """One clear line for a failed write; the previous file is untouched."""
    reason = _SPACE.get(error.errno or 0, error.strerror or str(error))
    return StorageError(f"{path}: could not write it ({reason}); the previous {path.name} is unchanged"
                        + ("; free some space and try again" if error.errno in _SPACE else ""))
