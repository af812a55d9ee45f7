"""Serving what a model registry holds in a stage, and following promotions without dropping requests.

`RegistryFollower.open(config)` opens `config.registry`; `load_service(observer)` builds the
`Service` from the version now in `config.stage` (the blob is read once; its sha256, the artifact's
hashes and, with `trusted_keys`, its signature are verified on those bytes: `Registry.load`). Started,
it checks the registry every `registry_poll_seconds` in a thread of its own; when the stage holds
another version it loads and warms that model in that thread while the old one keeps answering,
swaps it in (`Service.replace_primary`), and closes the old one after its last in-flight request.
A version that fails to load (tampered blob, other classes) is logged and skipped until the stage
changes again; the model being served stays.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from unetkit.config import ServeConfig
from unetkit.errors import ConfigError
from unetkit.registry.records import VersionRecord
from unetkit.registry.registry import Registry
from unetkit.serve.logs import log
from unetkit.serve.service import LoadedModel, Observer, Service
from unetkit.signing import TrustPolicy


def origin(record: VersionRecord, config: ServeConfig, registry: Registry) -> dict[str, Any]:
    """What a served model says about where it came from (/v1/model `registry`)."""
    return {"registry": registry.db.display, "name": record.name, "version": record.version,
            "stage": config.stage, "sha256": record.sha256}


class RegistryFollower:
    def __init__(self, config: ServeConfig, registry: Registry) -> None:
        if config.registry_poll_seconds <= 0:
            raise ConfigError(f"registry_poll_seconds {config.registry_poll_seconds}: must be > 0")
        if config.sha256:
            raise ConfigError("serve: sha256 pins an artifact file; a registry version is already pinned by its registered "
                              "sha256 (drop --sha256, or serve the file itself)")
        self.config, self.registry = config, registry
        self.trust = TrustPolicy.load(config.trusted_keys, config.require_signature)
        self.serving: VersionRecord | None = None
        self.service: Service | None = None
        self.observer: Observer = Observer()
        self._skipped: set[tuple[str, int]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one check at a time (the thread, or a caller of check())

    @classmethod
    def open(cls, config: ServeConfig) -> RegistryFollower:
        registry = Registry.open(config.registry, read_only=True)  # serving reads; it never writes the registry
        try:
            return cls(config, registry)
        except BaseException:
            registry.close()
            raise

    def current(self) -> VersionRecord:
        """The version the registry now has in the configured stage."""
        return self.registry.resolve(self.config.stage, self.config.model_name or None)

    def load_service(self, observer: Observer) -> Service:
        """The service over the version now in the stage (loaded, verified and warm)."""
        record = self.current()
        artifact = self.registry.load(record, self.trust)
        self.service = Service.from_artifact(artifact, self.config, observer, origin(record, self.config, self.registry))
        self.observer, self.serving = observer, record
        return self.service

    def start(self) -> None:
        """Follow the stage in a background thread (after `load_service`)."""
        assert self.service is not None, "load_service first"
        self._thread = threading.Thread(target=self._run, name="unetkit-registry-follower", daemon=True)
        self._thread.start()

    def check(self) -> bool:
        """Look at the registry once; swap in the stage's version if it changed. True when swapped."""
        with self._lock:
            assert self.service is not None and self.serving is not None
            record = self.current()
            if (record.name, record.version) == (self.serving.name, self.serving.version):
                return False
            if (record.name, record.version) in self._skipped:
                return False
            try:
                artifact = self.registry.load(record, self.trust)
                new = LoadedModel(artifact, self.config, "primary", self.observer, origin(record, self.config, self.registry))
            except Exception as e:  # noqa: BLE001 - a bad version never takes the server down
                self._skip(record, e)
                return False
            try:
                old = self.service.replace_primary(new)
            except ConfigError as e:
                new.close()
                self._skip(record, e)
                return False
            log(logging.INFO, "model replaced", model_name=record.name, model_version=str(record.version),
                previous_version=str(self.serving.version), stage=self.config.stage)
            self.serving = record
        if not old.close_when_idle(timeout=max(60.0, self.config.drain_seconds)):
            log(logging.WARNING, "replaced model closed with requests still holding it", model_version=old.version)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(60.0, self.config.drain_seconds) + 5)
        self.registry.close()

    def _run(self) -> None:
        last_error = ""
        while not self._stop.wait(self.config.registry_poll_seconds):
            try:
                self.check()
                last_error = ""
            except Exception as e:  # noqa: BLE001 - e.g. the database is briefly unreachable: try again later
                error = f"{type(e).__name__}: {e}"
                if error != last_error:  # once per distinct problem, not every poll
                    log(logging.WARNING, "registry check failed; serving the current model", error=error)
                last_error = error

    def _skip(self, record: VersionRecord, error: Exception) -> None:
        self._skipped.add((record.name, record.version))
        log(logging.ERROR, "new registry version not served", model_name=record.name, model_version=str(record.version),
            error=f"{type(error).__name__}: {error}")

