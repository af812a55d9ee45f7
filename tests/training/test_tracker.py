"""The tracker interface: the guard that keeps a failing tracker from stopping training."""

from __future__ import annotations

from unetkit.training.tracker import GuardedTracker, Tracker


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
