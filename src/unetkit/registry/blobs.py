"""The content-addressed artifact store: `<root>/<sha256[:2]>/<sha256>.unetkit`.

A blob is written in two steps: `stage(source)` copies the artifact to `<root>/tmp/` while hashing
it (fsynced, under an exclusive `flock` held for as long as the writer lives), and `publish(blob)`
renames it to its content address (atomic; the folder is fsynced). The registry publishes inside
its database transaction, just before the commit, so a crash leaves at most a temp file or an
unreferenced blob; both are found and removed the next time the registry is opened
(`stale_temp_files`, and the orphan check in registry.py).

A temp file whose writer died is recognised by its lock: the kernel releases a `flock` when its
process ends, even under SIGKILL. (The store must live on a filesystem with working `flock`: a
local disk, or NFSv4 and most cluster filesystems.)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from unetkit.data.io import file_sha256
from unetkit.errors import ArtifactError, RegistryError

SUFFIX = ".unetkit"
CHUNK = 1 << 20


@dataclass
class StagedBlob:
    """A verified copy in the store's temp folder, locked by this process until published or discarded."""

    path: Path
    sha256: str
    size: int
    fd: int


class BlobStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.tmp = self.root / "tmp"
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"blob store {self.root}: cannot create it ({e.strerror})") from None

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{SUFFIX}"

    @contextmanager
    def stage(self, source: str | Path) -> Iterator[StagedBlob]:
        """Copy `source` into the temp folder, hashing it; the temp file is removed unless published."""
        blob = self._locked_temp_file()
        try:
            digest = hashlib.sha256()
            with open(source, "rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    blob.size += len(chunk)
                    _write_all(blob.fd, chunk)
            os.fsync(blob.fd)
            blob.sha256 = digest.hexdigest()
            yield blob
        finally:
            blob.path.unlink(missing_ok=True)  # after `publish` the temp name no longer exists
            os.close(blob.fd)

    def publish(self, blob: StagedBlob) -> Path:
        """Atomically move a staged blob to its content address (replacing a damaged copy, if any)."""
        target = self.path(blob.sha256)
        target.parent.mkdir(exist_ok=True)
        os.replace(blob.path, target)
        _fsync_dir(target.parent)
        return target

    def verified(self, sha256: str, what: str) -> Path:
        """The blob's path after checking its sha256; a missing or modified blob is refused."""

        path = self.path(sha256)
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            raise _missing(path, what) from None
        if actual != sha256:
            raise _modified(path, what, actual, sha256)
        return path

    def read(self, sha256: str, what: str) -> bytes:
        """The blob's bytes, read once and checked against its sha256: load from these, never from the
        path again (a file swapped in after the check would go unnoticed)."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise _missing(path, what) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise _modified(path, what, actual, sha256)
        return data

    def intact(self, sha256: str) -> bool:
        """Whether the blob is there with the right content."""
        try:
            self.verified(sha256, "")
        except (RegistryError, ArtifactError):
            return False
        return True

    def stored(self) -> dict[str, Path]:
        """Every published blob, by sha256."""
        found = {}
        for folder in self.root.glob("[0-9a-f][0-9a-f]"):
            for path in folder.glob(f"*{SUFFIX}"):
                found[path.name[: -len(SUFFIX)]] = path
        return found

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)
        _fsync_dir(self.path(sha256).parent)

    def stale_temp_files(self) -> list[Path]:
        """Remove temp files whose writer is gone (their lock is free); returns what was removed."""
        removed = []
        for path in self.tmp.glob("*.partial"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # published or removed meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            else:
                path.unlink(missing_ok=True)
                removed.append(path)
            finally:
                os.close(fd)
        return removed

    def _locked_temp_file(self) -> StagedBlob:
        for _ in range(10):
            path = self.tmp / f"{uuid.uuid4().hex}.partial"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return StagedBlob(path, "", 0, fd)
            except FileNotFoundError:
                pass
            os.close(fd)  # a cleanup removed it between create and lock: take another name
        raise RegistryError(f"blob store {self.root}: cannot create a locked temp file in {self.tmp}")


def _missing(path: Path, what: str) -> RegistryError:
    return RegistryError(f"{what}: blob {path} is missing from the store; restore it from a backup, "
                         "or add the same artifact again to put it back")


def _modified(path: Path, what: str, actual: str, sha256: str) -> ArtifactError:
    return ArtifactError(f"{what}: blob {path} has sha256 {actual[:12]}…, not the registered {sha256[:12]}…; "
                         "it was modified or corrupted — refusing to load it (add the original artifact again "
                         "to restore it)")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
