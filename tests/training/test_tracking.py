"""Which tracker `track` names: parsing, and no tracker when it is empty."""

from __future__ import annotations

import pytest

from unetkit.errors import ConfigError
from unetkit.training.tracker import Tracker
from unetkit.training.tracking import open_tracker, parse_track


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
