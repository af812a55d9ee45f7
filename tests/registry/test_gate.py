"""The promotion gate as pure logic: metric directions, flattening, tolerances, refusals."""

from __future__ import annotations

import math

import pytest

from unetkit.errors import RegistryError
from unetkit.registry.gate import check, direction, flatten_metrics, parse_tolerances


@pytest.mark.parametrize("name, expected", [
    ("mean_iou", "higher"), ("dice/vessel", "higher"), ("auc", "higher"), ("ap/cell", "higher"),
    ("pixel_accuracy", "higher"), ("cldice", "higher"), ("calibration/ece_after", "lower"), ("hd95/cell", "lower"),
    ("assd", "lower"), ("adapted_rand_error", "lower"), ("nll", "lower"),
    ("step", None), ("calibration/temperature", None), ("calibration/pixels", None),
])
def test_direction_from_the_name(name, expected):
    assert direction(name) == expected


def test_flatten_keeps_numbers_only():
    flat = flatten_metrics({"mean_iou": 0.5, "selection_metric": "mean_iou", "ok": True, "per_class": [1, 2],
                            "calibration": {"ece_after": 0.01, "nested": {"x": 2}}, "missing": None})
    assert flat == {"mean_iou": 0.5, "calibration/ece_after": 0.01, "calibration/nested/x": 2.0}


def test_no_production_passes():
    result = check({"mean_iou": 0.1}, None)
    assert result.passed and result.against is None and "no production version" in result.summary()


def test_direction_aware_comparison_with_tolerance():
    production = {"mean_iou": 0.80, "hd95": 5.0, "calibration": {"ece_after": 0.02, "ece_before": 0.05}, "step": 10}
    better = check({"mean_iou": 0.81, "hd95": 4.0, "calibration": {"ece_after": 0.01, "ece_before": 0.9}, "step": 1},
                   production, "m:1")
    assert better.passed and better.not_gated == ("calibration/ece_before", "step")
    assert {c.name: c.worse_by for c in better.checks} == {"mean_iou": 0.0, "hd95": 0.0, "calibration/ece_after": 0.0}
    worse = check({"mean_iou": 0.79, "hd95": 5.004, "calibration": {"ece_after": 0.03}}, production, "m:1")
    assert not worse.passed
    assert [(c.name, round(c.worse_by, 6)) for c in worse.failures] == [("mean_iou", 0.01), ("calibration/ece_after", 0.01)]
    assert "mean_iou is 0.01 worse (0.79 vs production 0.8, higher is better, tolerance 0.005)" in worse.summary()
    assert check({"mean_iou": 0.79, "hd95": 5.0, "calibration": {"ece_after": 0.02}}, production, tolerance=0.01).passed


def test_a_metric_production_has_must_be_reported():
    result = check({"mean_iou": 0.9}, {"mean_iou": 0.8, "hd95": 3.0}, "m:1")
    assert not result.passed and math.isinf(result.failures[0].worse_by)
    assert "hd95 is missing from the candidate" in result.summary()
    assert result.to_dict()["checks"][1]["worse_by"] is None  # JSON-safe


def test_per_metric_tolerances_and_subsets():
    production = {"mean_iou": 0.8, "hd95": 3.0}
    candidate = {"mean_iou": 0.8, "hd95": 4.5}
    assert not check(candidate, production).passed
    assert check(candidate, production, tolerances={"hd95": 2.0}).passed
    assert check(candidate, production, only=["mean_iou"]).passed
    with pytest.raises(RegistryError, match="metric 'hd9' is not among production's metrics"):
        check(candidate, production, tolerances={"hd9": 1.0})


def test_nan_in_production_is_not_gated():
    result = check({"iou/rare": float("nan")}, {"iou/rare": float("nan"), "mean_iou": 0.5}, "m:1")
    assert not result.passed  # mean_iou missing from the candidate
    assert result.not_gated == ("iou/rare",)


def test_parse_tolerances():
    assert parse_tolerances([]) == (0.005, {})
    assert parse_tolerances(["0.01", "hd95/vessel=2", "mean_iou=0"]) == (0.01, {"hd95/vessel": 2.0, "mean_iou": 0.0})
    with pytest.raises(RegistryError, match="--tolerance 'big': expected a number"):
        parse_tolerances(["big"])
    with pytest.raises(RegistryError, match="must be >= 0"):
        parse_tolerances(["-1"])
