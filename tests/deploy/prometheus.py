"""A real Prometheus server on a free loopback port, scraping given targets every second with the
repository's rule files, for the alerting integration tests.

The rules' `for:` durations are minutes long, as alerts should be in production; `rules_for_test()`
writes copies with every `for:` replaced by a short one (and nothing else changed) so a test can
watch an alert go pending and then firing within seconds.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.serve.live import free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules"


def rules_for_test(dest: Path, for_duration: str = "2s") -> list[Path]:
    """Copies of deploy/prometheus/rules/*.yml in `dest` with every `for:` set to `for_duration`."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in sorted(RULES.glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = for_duration
        paths.append(dest / path.name)
        paths[-1].write_text(yaml.safe_dump(doc, sort_keys=False))
    return paths



class LivePrometheus:
    """`prometheus` on 127.0.0.1 with a temporary config and data directory."""

    def __init__(self, binary: str, workdir: Path, targets: list[str], rule_files: list[Path],
                 job: str = "unetkit", interval: str = "1s") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),  # noqa: SIM115 - closed with the process
        )
        try:
            self.wait_until(self.ready, 180, "Prometheus ready")
        except BaseException:  # never left running behind a failed start
            self.stop()
            raise

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-3000:]}"
        try:
            return self.http.get("/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        response = self.http.get(f"/api/v1/{path}", params=params)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def alerts(self, name: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if name is None or a["labels"]["alertname"] == name]

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts(name) if a["state"] == "firing"]

    def wait_until(self, condition: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            if result := condition():
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.25)

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
