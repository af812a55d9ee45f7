"""Fingerprints and machine profiles for the planner tests (no real data, no timing)."""

from __future__ import annotations

from typing import Any

import pytest

from unetkit.planning.throughput import simulated_throughput

# sustained training speed (GFLOP/s) and fixed seconds per step of three kinds of machine
PROFILES = {
    "cpu2": simulated_throughput(40.0, 0.01),
    "cpu32": simulated_throughput(600.0, 0.005),
    "gpu": simulated_throughput(15000.0, 0.003),
}


def make_fingerprint(size=(584, 565), n=20, channels=3, classes=None, objects_per_image=3.0) -> dict[str, Any]:
    """A fingerprint dict like `unetkit.data.fingerprint.fingerprint` returns.

    `classes`: (name, pixel_fraction, erosion_survival, mean_border_distance, p90 object size)."""
    classes = classes or [("background", 0.6, 0.95, 20.0, 50000.0), ("blob", 0.4, 0.9, 8.0, 900.0)]
    return {
        "n_samples": n, "channels": channels,
        "size": {"min": list(size), "median": [float(v) for v in size], "max": list(size)},
        "labelled_fraction": 1.0,
        "classes": [{"name": name, "index": k, "pixel_fraction": f, "present_in": n, "objects_per_image": objects_per_image,
                     "object_size_p10_p50_p90": [p90 / 10, p90 / 2, p90], "erosion_survival": s,
                     "mean_border_distance": d} for k, (name, f, s, d, p90) in enumerate(classes)],
    }


VESSELS = [("background", 0.87, 0.91, 7.7, 5000.0), ("vessel", 0.13, 0.45, 1.6, 13.0)]
BLOBS = [("background", 0.7, 0.95, 20.0, 50000.0), ("cell", 0.3, 0.93, 9.0, 1500.0)]
RARE = [("background", 0.70, 0.95, 15.0, 9000.0), ("disc", 0.17, 0.9, 4.0, 300.0),
        ("box", 0.125, 0.9, 5.0, 500.0), ("dot", 0.005, 0.8, 2.5, 40.0)]


@pytest.fixture
def profiles():
    return PROFILES
