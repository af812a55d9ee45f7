"""promtool and prometheus for the deploy tests: from PATH, else installed once from the Debian package.

`apt-get install prometheus` is what a CI container (root, Debian) needs; it runs under a file lock
so two pytest workers never race for the dpkg lock, and costs nothing once the binaries are there.
No fallback to a skip: without the tools the rule tests cannot prove anything, so they fail.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGE = "prometheus"
TOOLS = ("promtool", "prometheus")
LOCK = Path(tempfile.gettempdir()) / "unetkit-apt-prometheus.lock"


def found() -> dict[str, str] | None:
    paths = {name: shutil.which(name) for name in TOOLS}
    return paths if all(paths.values()) else None  # type: ignore[return-value]


def ensure_prometheus() -> dict[str, str]:
    """{'promtool': path, 'prometheus': path}; installs the Debian package if either is missing.

    Raises RuntimeError saying what to do when that is impossible."""
    if paths := found():
        return paths
    if shutil.which("apt-get") is None:
        raise RuntimeError("promtool/prometheus are not on PATH and there is no apt-get here: install Prometheus "
                           "(the Debian package 'prometheus', or the release tarball) and put both binaries on PATH")
    if os.geteuid() != 0:
        raise RuntimeError("promtool/prometheus are not on PATH; installing them needs root: "
                           "sudo apt-get install -y --no-install-recommends prometheus")
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other xdist worker may be installing right now
        if paths := found():
            return paths
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", PACKAGE]
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, timeout=600)
            result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0 or not (paths := found()):
            raise RuntimeError(f"{' '.join(install)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
        return paths
