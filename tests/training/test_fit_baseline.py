"""fit() stores the drift baseline in the artifact: training-image inputs, validation outputs."""

from __future__ import annotations

from unetkit.artifact import load_artifact
from unetkit.monitor.baseline import Baseline, outputs_mismatch
from unetkit.monitor.drift import compare
from unetkit.monitor.measure import predict_outputs
from unetkit.training.prepare import load_training_data


def test_fit_stores_a_drift_baseline(tiny_config, capsys) -> None:
    from unetkit.training.fit import fit

    cfg = tiny_config(steps=4, val_every=4)
    art = load_artifact(fit(cfg))
    assert capsys.readouterr().out == ""  # progress=False: the baseline's timing line is not printed either
    baseline = Baseline.from_dict(art.meta.drift_baseline)
    data = load_training_data(cfg.data)
    assert baseline.input_images == len(data.train) == 4 and len(data.val) == 2
    assert baseline.output_images == 2 + 4  # the validation images, topped up with training images
    assert baseline.class_names == art.meta.class_names and baseline.channels == 3
    assert outputs_mismatch(baseline, art.meta) is None  # measured with exactly the saved weights
    assert baseline.outputs_of["weights_sha256"] == art.meta.weights_sha256 and baseline.seconds > 0
    names = {r.name for r in baseline.features}
    assert {"sharpness", "intensity.c2", "fraction.background", "components.class_3", "entropy"} <= names
    held_out = [s.image for s in data.val] + [s.image for s in data.train]
    measured = [baseline.measure(im, p, lab) for im, (p, lab) in zip(held_out, predict_outputs(art, held_out), strict=True)]
    report = compare(baseline, measured)
    assert {f.source for f in report.features} == {"input", "output"}
    assert all(f.psi < 1e-6 for f in report.features if f.source == "output")  # the same images and model
