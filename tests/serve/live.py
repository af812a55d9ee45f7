"""A real `unetkit serve` process on a free loopback port, for the browser, fuzz and shutdown tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, artifact: Path, log: Path, ready_timeout: float = 60, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.update({f"UNETKIT_SERVE_{k.upper()}": str(v) for k, v in settings.items()})
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unetkit", "serve", str(artifact), "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),  # noqa: SIM115 - closed with the process
        )
        try:
            self.wait_ready(ready_timeout)
        except BaseException:  # a server that never got ready is not left running
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-2000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not ready in {timeout:.0f} s: {self.log.read_text()[-2000:]}"
            time.sleep(0.1)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
