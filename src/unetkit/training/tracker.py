"""The tracker interface `fit` calls (see `unetkit.training.tracking` for which trackers exist):
`Tracker` (tracks nothing) and `GuardedTracker` (a tracker whose failures never stop training)."""

from __future__ import annotations

import sys
from typing import Any

from unetkit.config import TrainConfig

STATUSES = ("FINISHED", "FAILED", "KILLED")  # how a run ends (MLflow's names)


class Tracker:
    """Tracks nothing: the interface `fit` calls, and the tracker of a run without `track`."""

    name = "none"

    def start(self, config: TrainConfig, fingerprint: dict[str, Any]) -> None:
        """The resolved config (params, plan) and the data fingerprint, before the first step."""

    def event(self, event: dict[str, Any]) -> None:
        """One run-log event (a `RunLog` callback)."""

    def close(self, status: str) -> None:
        """The run ended: `status` one of STATUSES."""


class GuardedTracker(Tracker):
    """A tracker whose failures after `open_tracker` never stop training: the first one is printed
    (one line on stderr) and the tracker goes quiet."""

    def __init__(self, inner: Tracker) -> None:
        self.inner, self.name, self.failed = inner, inner.name, False

    def _call(self, method: str, *args: Any) -> None:
        if self.failed:
            return
        try:
            getattr(self.inner, method)(*args)
        except Exception as e:  # noqa: BLE001 - the run is worth more than its record
            self.failed = True
            print(f"warning: {self.name} tracking stopped ({type(e).__name__}: {str(e)[:300]}); "
                  "training goes on, recorded in the run folder only", file=sys.stderr)

    def start(self, config: TrainConfig, fingerprint: dict[str, Any]) -> None:
        self._call("start", config, fingerprint)

    def event(self, event: dict[str, Any]) -> None:
        self._call("event", event)

    def close(self, status: str) -> None:
        self._call("close", status)
