"""The tracker interface: parsing `track`, the guard that keeps a failing tracker from stopping training."""

from __future__ import annotations

import pytest

from unetkit.errors import ConfigError
from unetkit.training.tracking import GuardedTracker, Tracker, open_tracker, parse_track


def test_parse_track_splits_name_and_uri() -> None:
    assert parse_track("mlflow") == ("mlflow", "")
    assert parse_track("mlflow:sqlite:///runs/m.db") == ("mlflow", "sqlite:///runs/m.db")
    with pytest.raises(ConfigError, match="track 'wandb'.*mlflow"):
        parse_track("wandb")


def test_no_track_is_the_silent_base_tracker() -> None:
    tracker = open_tracker("")
    assert type(tracker) is Tracker
    tracker.event({"event": "val", "step": 1})  # does nothing, raises nothing
    tracker.close("FINISHED")


class Exploding(Tracker):
    name = "exploding"

    def __init__(self) -> None:
        self.calls = 0

    def event(self, event):  # noqa: ANN001
        self.calls += 1
        raise ConnectionError("server went away")


def test_a_failing_tracker_warns_once_and_goes_quiet(capsys) -> None:
    inner = Exploding()
    guarded = GuardedTracker(inner)
    for step in range(3):
        guarded.event({"event": "train", "step": step})
    guarded.close("FINISHED")
    err = capsys.readouterr().err
    assert inner.calls == 1 and guarded.failed
    assert err.count("warning: exploding tracking stopped (ConnectionError: server went away)") == 1
