"""Experiment tracking: where a training run reports beyond its own folder (`TrainConfig.track`).

A `Tracker` (`unetkit.training.tracker`) is called by `fit` at the points a run already reports, and nowhere else:
`start(config, fingerprint)` once the config is resolved and the data fingerprinted, `event(e)` for
every event of the run log (it is one of the log's callbacks: "start", "train", "val", "budget",
"stop", "end"; the "end" event names the artifact), and `close(status)` when `fit` returns or fails.
The base class tracks nothing; `open_tracker(spec)` returns the one `spec` names:

- `""`: none;
- `"mlflow"`, `"mlflow:URI"`: an MLflow run (`unetkit.training.mlflow_tracking`; URI default
  $MLFLOW_TRACKING_URI, else `sqlite:///mlflow.db` in the working folder).

`open_tracker` connects and checks that the store can be written before any training starts: a
tracker asked for explicitly that cannot report refuses the run (`ConfigError`) rather than training
for hours unrecorded. A failure *during* the run (the server went away) is said once on stderr and
the tracker turns itself off: the training run is worth more than its record.
"""

from __future__ import annotations

from unetkit.config import TRACKERS
from unetkit.errors import ConfigError
from unetkit.training.tracker import GuardedTracker, Tracker


def parse_track(spec: str, option: str = "track") -> tuple[str, str]:
    """`"mlflow:sqlite:///x.db"` -> ("mlflow", "sqlite:///x.db"); the URI may be empty (the tracker's default).
    `option`: how the caller names the value in an error (`--to` for `registry export`)."""
    name, _, uri = spec.partition(":")
    if name not in TRACKERS:
        raise ConfigError(f"{option} {spec!r}: expected NAME or NAME:URI with NAME one of {', '.join(TRACKERS)} "
                          "(e.g. mlflow or mlflow:sqlite:///mlflow.db)")
    return name, uri


def open_tracker(spec: str, out_dir: str = "") -> Tracker:
    """The tracker `spec` names (see the module docstring), connected and checked writable; `ConfigError`
    (naming the URI and why) when it cannot report. `out_dir`: the run folder, where the tracker may
    keep what a resumed run needs to continue the same tracked run."""
    if not spec:
        return Tracker()
    name, uri = parse_track(spec)
    if name == "mlflow":
        from unetkit.training.mlflow_tracking import MlflowTracker  # lazy: optional extra (mlflow)

        return GuardedTracker(MlflowTracker.open(uri, out_dir))
    raise AssertionError(name)  # parse_track refused the rest
