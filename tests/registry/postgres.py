"""A throw-away PostgreSQL server on loopback for the registry tests.

`PostgresServer.start()` finds the PostgreSQL binaries (installing the Debian package `postgresql`
when none are there), initdb's a cluster in a temp folder, and starts it on 127.0.0.1 with a free
port and its socket in that folder. PostgreSQL refuses to run as root, so as root the cluster
belongs to the `postgres` user (the package creates it) and every server command runs through
`runuser`. `new_database()` gives each test an empty database.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "postgresql"


def find_bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin with initdb and pg_ctl."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                   if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def install() -> Path:
    """apt-get install the server (Debian/Ubuntu, as root); raises with apt's own words when it fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", PACKAGE]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr.strip()[-1000:]}")
    found = find_bin_dir()
    if found is None:
        raise RuntimeError(f"apt-get installed {PACKAGE} but no /usr/lib/postgresql/*/bin/initdb appeared")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path, root: Path, port: int, user: str | None) -> None:
        self.bin_dir, self.root, self.port, self.user = bin_dir, root, port, user
        self.data = root / "data"
        self.log = root / "server.log"
        self._count = 0

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = find_bin_dir() or install()
        root = Path(tempfile.mkdtemp(prefix="unetkit-pg-"))
        user = "postgres" if os.geteuid() == 0 else None
        if user is not None:
            shutil.chown(root, user, user)
        server = cls(bin_dir, root, free_port(), user)
        server._run("initdb", "-D", str(server.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} -c fsync=off -c max_connections=50"
        server._run("pg_ctl", "-D", str(server.data), "-o", options, "-l", str(server.log), "-w", "-t", "60", "start")
        return server

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        self._count += 1
        name = f"registry_{os.getpid()}_{self._count}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}\n{log}")
