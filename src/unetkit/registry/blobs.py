"""The content-addressed artifact store: `<root>/<sha256[:2]>/<sha256>.unetkit`.

A blob is written in two steps: `stage(source)` copies the artifact to `<root>/tmp/` while hashing
it (under an exclusive `flock` held for as long as the writer lives), and `publish(blob)` renames it
to its content address (data/atomic.py `publish`: the file fsynced, renamed, its folder fsynced). The registry publishes inside
its database transaction, just before the commit, so a crash leaves at most a temp file or an
unreferenced blob; both are found and removed the next time the registry is opened
(`stale_temp_files`, and the orphan check in registry.py).

A temp file whose writer died is recognised by its lock: the kernel releases a `flock` when its
process ends, even under SIGKILL. (The store must live on a filesystem with working `flock`: a
local disk, or NFSv4 and most cluster filesystems.)

Ownership: a store belongs to exactly one registry database. `claim(registry_id)` writes the marker
`unetkit-store.json` naming that registry (created exclusively: of two databases claiming one folder,
one wins and the other is refused). Cleanup removes blobs its database does not reference, which is
only safe in a store no other database uses; so a writer never works in a store another registry
claimed, and blobs a store held before it was claimed (made by an older unetkit) are listed in the
marker as `kept` and never removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from unetkit.data.atomic import fsync_dir, fsync_file, publish, storage_error, temp_name, write_all
from unetkit.data.io import file_sha256
from unetkit.errors import ArtifactError, RegistryError

SUFFIX = ".unetkit"
CHUNK = 1 << 20
MARKER = "unetkit-store.json"


@dataclass
class StagedBlob:
    """A verified copy in the store's temp folder, locked by this process until published or discarded."""

    path: Path
    sha256: str
    size: int
    fd: int


class BlobStore:
    """The folder of blobs; creating the object touches nothing on disk (readers may lack write access)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.tmp = self.root / "tmp"
        self.kept: frozenset[str] = frozenset()  # blobs that were here before the claim: never removed

    def owner(self) -> dict | None:
        """The marker: which registry this store belongs to (None: not claimed yet)."""
        try:
            marker = json.loads((self.root / MARKER).read_text())
            str(marker["registry_id"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"blob store {self.root}: its ownership marker {MARKER} is unreadable ({e}); "
                                "restore it from a backup") from None
        return marker

    def claim(self, registry_id: str, database: str, referenced: Callable[[], set[str]], first_use: bool) -> None:
        """Bind this store to the registry `registry_id`, or check that it is bound to it.

        Refused when another registry claimed it, or on the registry's `first_use` when the folder
        already holds blobs (another registry's, made before markers existed). An unclaimed store
        of an existing registry (an older unetkit) is claimed; the blobs it holds that the registry does
        not reference are recorded as `kept`, because nothing proves they are this registry's orphans."""
        marker = self.owner()
        if marker is None:
            present = set(self.stored())
            if first_use and present:
                raise RegistryError(
                    f"blob store {self.root} already holds {len(present)} artifacts of another registry (it has no "
                    f"ownership marker); registry {database} will not share it, since cleaning up one registry's "
                    "crashed writes would delete the other's artifacts. Give it its own folder: --store DIR")
            marker = self._write_marker({"format": 1, "registry_id": registry_id, "database": database,
                                         "claimed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                         "kept": sorted(present - referenced())})
        if marker["registry_id"] != registry_id:
            raise RegistryError(
                f"blob store {self.root} belongs to registry {marker.get('database', '?')} (id "
                f"{str(marker['registry_id'])[:8]}), not to {database}; a store is never shared, since cleaning up "
                "one registry's crashed writes would delete the other's artifacts. Give this registry its own "
                "folder: --store DIR")
        self.kept = frozenset(marker.get("kept", ()))

    def _write_marker(self, marker: dict) -> dict:
        """Create the marker exclusively (a hard link fails if it exists); returns the marker that won."""
        path = self.root / MARKER
        tmp = temp_name(path)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(marker, indent=2) + "\n")
            fsync_file(tmp)  # the content is durable before it gets its name
            os.link(tmp, path)
            fsync_dir(self.root)
        except FileExistsError:
            pass  # another writer claimed it first: its marker decides
        except OSError as e:
            raise RegistryError(f"blob store {self.root}: cannot claim it ({storage_error(path, e)})") from None
        finally:
            tmp.unlink(missing_ok=True)
        winner = self.owner()
        assert winner is not None
        return winner

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
                    try:
                        write_all(blob.fd, chunk)
                    except OSError as e:  # a full disk: one clear error, nothing published
                        raise storage_error(blob.path, e) from None
            blob.sha256 = digest.hexdigest()
            yield blob  # `publish` fsyncs it before it gets its name
        finally:
            blob.path.unlink(missing_ok=True)  # after `publish` the temp name no longer exists
            os.close(blob.fd)

    def publish(self, blob: StagedBlob) -> Path:
        """Atomically move a staged blob to its content address (replacing a damaged copy, if any)."""
        target = self.path(blob.sha256)
        target.parent.mkdir(exist_ok=True)
        return publish(blob.path, target)  # fsync, rename, fsync of the folder

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
        """Delete a blob this store's registry proved to be its own orphan (never a `kept` one)."""
        if sha256 in self.kept:
            raise RegistryError(f"blob {sha256[:12]}… was in store {self.root} before it was claimed; not removing it")
        self.path(sha256).unlink(missing_ok=True)
        fsync_dir(self.path(sha256).parent)

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
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"blob store {self.root}: cannot create it ({e.strerror})") from None
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

