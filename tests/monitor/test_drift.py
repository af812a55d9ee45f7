"""PSI and KS against hand-computed values and scipy; drift flagged for colour-shifted, blurred
and rescaled copies of a data set, not for a fresh sample of the same distribution."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rich.console import Console
from scipy import stats

from tests.monitor.conftest import blurred, colour_shifted, rescaled, textured_images
from unetkit.config import DRIFT_THRESHOLD
from unetkit.monitor.baseline import build_baseline
from unetkit.monitor.drift import EPSILON, compare, compare_feature, psi


def test_psi_by_hand():
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    by_hand = (0.3 - 0.5) * math.log(0.3 / 0.5) + (0.7 - 0.5) * math.log(0.7 / 0.5)
    assert psi([0.5, 0.5], [0.3, 0.7]) == pytest.approx(by_hand) == pytest.approx(0.1695, abs=1e-4)
    assert psi([0.3, 0.7], [0.5, 0.5]) == pytest.approx(by_hand)  # symmetric
    moved = (EPSILON - 1) * math.log(EPSILON) + (1 - EPSILON) * math.log(1 / EPSILON)  # every value to an empty bin
    assert psi([1, 0], [0, 1]) == pytest.approx(moved) == pytest.approx(18.42, abs=0.01)
    with pytest.raises(ValueError, match="2 expected fractions but 3"):
        psi([0.5, 0.5], [0.2, 0.3, 0.5])


def test_scalar_feature_psi_and_ks_match_scipy(rng):
    from unetkit.monitor.baseline import scalar_reference

    base = rng.normal(0, 1, 800)
    new = rng.normal(0.5, 1, 300)
    ref = scalar_reference("x", "input", base)
    row = compare_feature(ref, [new[:100], new[100:]], DRIFT_THRESHOLD)
    counts = np.bincount(np.searchsorted(ref.edges, new, side="right"), minlength=len(ref.edges) + 1) / new.size
    assert row.psi == pytest.approx(psi(ref.expected, counts))
    expected_ks = stats.ks_2samp(new, base, method="asymp")
    assert row.ks_statistic == pytest.approx(expected_ks.statistic) and row.p_value == pytest.approx(expected_ks.pvalue)
    assert row.count == 300 and row.drifted == (row.psi > DRIFT_THRESHOLD)


@pytest.fixture(scope="module")
def baseline(reference_images):
    return build_baseline(reference_images, class_names=("background", "vessel"))


def drift_of(baseline, images):
    return compare(baseline, [baseline.measure(im) for im in images])


def test_fresh_sample_of_the_same_distribution_is_not_drift(baseline, fresh_images):
    for images in (fresh_images, textured_images(30, seed=7), textured_images(20, seed=8)):
        report = drift_of(baseline, images)
        assert not report.drifted, report.verdict()
        assert report.score < DRIFT_THRESHOLD / 2  # with a margin, not by luck


@pytest.mark.parametrize(("change", "expect"), [
    (colour_shifted, "intensity.c0"),
    (blurred, "sharpness"),
    (rescaled, "height"),
    (lambda im: rescaled(im, 1.5)[:, :96, :112], "sharpness"),  # zoomed in, cropped back to the same size
])
def test_shifted_copies_are_drift(baseline, fresh_images, change, expect):
    report = drift_of(baseline, [change(im) for im in fresh_images])
    assert report.drifted and report.score > 2 * DRIFT_THRESHOLD, report.verdict()
    rows = {f.name: f for f in report.features}
    assert rows[expect].drifted and rows[expect].psi > DRIFT_THRESHOLD
    assert report.worst is not None and report.score == report.worst.psi == max(f.psi for f in report.features)
    assert report.verdict().startswith("DRIFT: score")


def test_report_table_json_and_threshold(baseline, fresh_images):
    report = drift_of(baseline, [blurred(im) for im in fresh_images])
    console = Console(width=120, record=True)
    console.print(report.table())
    text = console.export_text()
    assert "sharpness" in text and "PSI" in text and "p-value" in text and "yes" in text
    assert text.index("sharpness") < text.index("brightness")  # most shifted first
    data = json.loads(json.dumps(report.to_dict()))
    assert data["drifted"] is True and data["images"] == 30 and len(data["features"]) == 9
    row = next(f for f in data["features"] if f["name"] == "intensity.c0")
    assert row["ks_statistic"] is None and row["kind"] == "histogram"
    lenient = compare(baseline, [baseline.measure(blurred(im)) for im in fresh_images], threshold=1000)
    assert not lenient.drifted and lenient.verdict().startswith("no drift")
    with pytest.raises(ValueError, match="positive"):
        compare(baseline, [], threshold=0)


def test_outputs_can_be_left_out(reference_images):
    probs = np.stack([np.full((96, 112), 0.9), np.full((96, 112), 0.1)]).astype(np.float32)
    labels = np.zeros((96, 112), np.uint8)
    baseline = build_baseline(reference_images[:10], [(probs, labels)] * 4, class_names=("bg", "fg"))
    flipped = probs[::-1].copy()
    measured = [baseline.measure(im, flipped, np.ones_like(labels)) for im in reference_images[:10]]
    with_outputs = compare(baseline, measured)
    assert with_outputs.drifted and with_outputs.worst.source == "output" and with_outputs.output_images == 10
    inputs_only = compare(baseline, measured, outputs=False, notes=["no outputs"])
    assert not inputs_only.drifted and {f.source for f in inputs_only.features} == {"input"}
    assert inputs_only.output_images == 0 and inputs_only.notes == ("no outputs",)
