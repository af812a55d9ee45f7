"""The baseline: bins, bounded size, JSON round trip, schema and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unetkit.errors import ConfigError
from unetkit.monitor.baseline import (
    SAMPLE_CAP,
    SCHEMA_VERSION,
    Baseline,
    baseline_validations,
    build_baseline,
    output_sample,
    outputs_mismatch,
    quantile_edges,
    scalar_bins,
    scalar_reference,
)


def test_quantile_edges_deciles_ties_and_constants():
    values = np.arange(1000, dtype=float)
    edges = quantile_edges(values)
    assert len(edges) == 11 and edges[0] == 0 and edges[-1] > 999 and edges[5] == pytest.approx(499.5)
    ref = scalar_reference("x", "input", values)
    assert ref.expected[0] == 0 and ref.expected[-1] == 0 and ref.expected[1:-1] == pytest.approx([0.1] * 10, abs=1e-3)
    constant = quantile_edges(np.full(50, 584.0))
    assert constant[0] == 584 and 584 < constant[1] < 584.001  # below / exactly / above each own bin
    counts = quantile_edges(np.array([0] * 80 + [1] * 15 + [3] * 5, float))  # ties merge
    assert counts[:2].tolist() == [0, 1] and 3 < counts[2] < 3.001 and len(counts) == 3


def test_scalar_bins_shrink_for_small_baselines():
    assert [scalar_bins(n) for n in (5, 32, 80, 160, 10_000)] == [2, 2, 5, 10, 10]


def test_build_baseline_is_bounded_and_round_trips(reference_images):
    probs = np.stack([np.full((96, 112), 0.7), np.full((96, 112), 0.3)]).astype(np.float32)
    labels = np.zeros((96, 112), np.uint8)
    labels[10:20, 10:30] = 1
    many = reference_images * 2  # 80 images, 1,280 cells per scalar feature
    baseline = build_baseline(many, [(probs, labels)] * 3, class_names=("bg", "fg"), outputs_of={"temperature": 1.0})
    names = [r.name for r in baseline.features]
    assert names[:9] == ["brightness", "contrast", "sharpness", "height", "width", "aspect",
                         "intensity.c0", "intensity.c1", "intensity.c2"]
    assert names[9:] == ["fraction.bg", "fraction.fg", "components.fg", "confidence", "entropy"]
    refs = baseline.references
    assert refs["brightness"].count == 80 * 16 and len(refs["brightness"].sample) == SAMPLE_CAP
    assert refs["height"].count == 80 and refs["confidence"].count == 3 and baseline.output_images == 3
    assert all(sum(r.expected) == pytest.approx(1) for r in baseline.features)
    text = json.dumps(baseline.to_dict())
    assert len(text) < 200_000  # histograms and capped samples, not pixels
    again = Baseline.from_dict(json.loads(text))
    assert again == baseline and again.to_dict()["schema"] == SCHEMA_VERSION
    image = reference_images[0]
    assert set(again.measure(image)) == set(names[:9])
    assert set(again.measure(image, probs, labels)) == set(names)


def test_inputs_only_and_errors(reference_images):
    baseline = build_baseline(reference_images[:4], class_names=("bg", "fg"))
    assert not baseline.has_outputs and len(baseline.features) == 9
    assert set(baseline.measure(reference_images[0], np.zeros((2, 96, 112)), np.zeros((96, 112), np.uint8))) == \
        {r.name for r in baseline.features}  # no output reference: outputs are not measured
    with pytest.raises(ValueError, match=r"expects \(3, H, W\)"):
        baseline.measure(reference_images[0][:1])
    with pytest.raises(ConfigError, match="different channel counts"):
        build_baseline([reference_images[0], reference_images[1][:1]], class_names=("bg",))
    with pytest.raises(ConfigError, match="model.unetkit: drift_baseline: the model has no drift baseline; add one with"):
        Baseline.from_dict({}, "model.unetkit: drift_baseline")
    stored = baseline.to_dict() | {"schema": 99}
    with pytest.raises(ConfigError, match=r"drift_baseline.schema: 99 is not the supported"):
        Baseline.from_dict(stored)
    broken = baseline.to_dict()
    broken["features"][0]["edges"] = "nope"
    with pytest.raises(ConfigError, match=r"drift_baseline.features\[0\].edges: expected a list"):
        Baseline.from_dict(broken)


def test_outputs_mismatch_names_what_changed(reference_images):
    class Meta:
        weights_sha256, temperature, class_scale, class_bias, postprocess, tta = "abc", 1.0, (), (), {}, False
        resolutions: tuple[float, ...] = ()
        resolutions_temperature = tta_temperature = 1.0

    probs, labels = np.full((2, 96, 112), 0.5, np.float32), np.zeros((96, 112), np.uint8)
    from unetkit.monitor.baseline import outputs_signature

    baseline = build_baseline(reference_images[:2], [(probs, labels)], class_names=("bg", "fg"),
                              outputs_of=outputs_signature(Meta))
    assert outputs_mismatch(baseline, Meta) is None
    Meta.temperature = 1.7
    assert "temperature changed" in outputs_mismatch(baseline, Meta)
    Meta.temperature, Meta.tta = 1.0, True  # a model that now predicts with TTA: its outputs differ
    assert "tta changed" in outputs_mismatch(baseline, Meta)
    Meta.tta, Meta.resolutions = False, (0.5, 0.75, 1.0)  # now multi-scale: likewise
    assert "resolutions changed" in outputs_mismatch(baseline, Meta)
    Meta.resolutions, Meta.tta_temperature = (), 0.8  # the views' mean recalibrated otherwise: likewise
    assert "tta_temperature changed" in outputs_mismatch(baseline, Meta)
    assert "no output statistics" in outputs_mismatch(build_baseline(reference_images[:2], class_names=("bg", "fg")), Meta)


def test_output_sample_tops_up_a_small_validation_split():
    assert output_sample(["v1", "v2"], [f"t{i}" for i in range(40)])[1] == 10
    picked, extra = output_sample(["v1", "v2"], ["t0", "t1", "t2"])
    assert picked == ["v1", "v2", "t0", "t1", "t2"] and extra == 3
    picked, extra = output_sample([f"v{i}" for i in range(50)], ["t0"])
    assert len(picked) == 32 and extra == 0 and picked[0] == "v0" and picked[-1] == "v49"
    assert output_sample([], [f"t{i}" for i in range(100)])[0][:2] == ["t0", "t9"]
    assert baseline_validations(15, 5) == 12 / 5 and baseline_validations(100, 40) == 32 / 40
