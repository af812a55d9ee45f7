"""Integrity under faults, with real processes: concurrent registrations, writers killed with SIGKILL
at the critical points of `add`, on SQLite and PostgreSQL. `UNETKIT_REGISTRY_PAUSE=POINT[:SECONDS]`
makes a child stop at a point of `add` and say so on stderr, so the test acts at that moment."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import func, select

from unetkit.registry import db as schema
from unetkit.registry.registry import Registry

TIMEOUT = 180  # seconds; children import torch, and the machine may be busy


class Child:
    """`unetkit registry add` in its own process; stderr read in a thread, so waiting can time out."""

    def __init__(self, location, artifact: Path, pause: str = "", name: str = "tiny") -> None:
        command = [sys.executable, "-m", "unetkit", "registry", "add", str(artifact), "--name", name,
                   "--registry", location.url, *(["--store", location.store] if location.store else [])]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "UNETKIT_REGISTRY_PAUSE": pause}
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def wait_for_pause(self, point: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                assert self.proc.poll() is None, f"child exited ({self.proc.returncode}): {''.join(self.stderr)}"
                continue
            if f"paused at {point}" in line:
                return
        raise AssertionError(f"child did not pause at {point} in {TIMEOUT} s: {''.join(self.stderr)}")

    def finish(self) -> str:
        out, _ = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}: {''.join(self.stderr)}"
        return out

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(TIMEOUT)


def test_two_processes_registering_at_once_both_succeed(location, artifacts):
    holder = Child(location, artifacts["base"], pause="published:2")  # inside its transaction for 2 s
    holder.wait_for_pause("published")
    racer = Child(location, artifacts["better"])  # must wait for the write lock (SQLite) / the model's row (PostgreSQL)
    assert holder.finish().startswith("registered tiny:1 ")
    assert racer.finish().startswith("registered tiny:2 ")
    with Registry.open(location.url) as reg:
        records = reg.list("tiny")
        assert [r.version for r in records] == [1, 2] and len({r.sha256 for r in records}) == 2
        for record in records:  # both blobs intact: the racer's start-up cleanup did not take the holder's
            assert reg.load(record).meta.name == "tiny"


def test_killed_writers_leave_no_half_entry_and_no_orphan_blob(location, artifacts):
    root = Registry.open(location.url, location.store)
    store = root.store
    root.close()
    staged = Child(location, artifacts["better"], pause="staged")  # copied to the temp folder, no transaction yet
    staged.wait_for_pause("staged")
    published = Child(location, artifacts["base"], pause="published")  # renamed into place, not committed
    published.wait_for_pause("published")
    staged.kill()
    published.kill()
    assert len(list(store.tmp.glob("*.partial"))) == 1  # the debris the crash left
    assert len(store.stored()) == 1
    with Registry.open(location.url, read_only=True) as reader:  # a reader leaves everything as it is
        assert reader.list() == [] and len(reader.store.stored()) == 1
    with Registry.open(location.url) as reg:  # a writer cleans up after dead writers (add does it first)
        recovery = reg.recover()
        assert len(recovery.temp_files) == 1 and len(recovery.orphan_blobs) == 1
        assert reg.list() == [] and reg.names() == []
        with reg.db.read() as conn:
            for table in (schema.versions, schema.events, schema.blobs):
                assert conn.execute(select(func.count()).select_from(table)).scalar() == 0
        assert reg.store.stored() == {} and list(reg.store.tmp.iterdir()) == []
        assert reg.add(artifacts["base"]).record.ref == "tiny:1"  # the crashed attempt consumed no number
