"""The rolling window: no report before min_images, then one every `every` images, newest N kept."""

from __future__ import annotations

import pytest

from tests.monitor.conftest import blurred
from unetkit.errors import ConfigError
from unetkit.monitor.baseline import build_baseline
from unetkit.monitor.window import DriftWindow


def test_window_reports_after_min_images_then_every_n(reference_images, fresh_images):
    baseline = build_baseline(reference_images, class_names=("bg", "fg"))
    window = DriftWindow(baseline, size=12, min_images=5, every=3)
    normal = [baseline.measure(im) for im in fresh_images[:12]]
    reports = [window.add(f) for f in normal]
    assert reports[:4] == [None] * 4 and window.report is not None
    assert [i for i, r in enumerate(reports) if r is not None] == [4, 7, 10]
    assert not window.report.drifted and window.report.images == 11 and len(window) == 12
    for image in fresh_images[:12]:  # the window fills with blurred images: the normal ones leave it
        window.add(baseline.measure(blurred(image)))
    assert len(window) == 12 and window.report.drifted and window.report.worst.name == "sharpness"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 0}, "drift_window 0"),
    ({"size": 10, "min_images": 11}, "drift_min_images 11: expected 1 to drift_window"),
    ({"every": 0}, "drift_every 0"),
    ({"threshold": 0.0}, "drift_threshold 0.0"),
])
def test_window_settings_are_checked(reference_images, kwargs, message):
    baseline = build_baseline(reference_images[:2], class_names=("bg",))
    with pytest.raises(ConfigError, match=message):
        DriftWindow(baseline, **kwargs)
