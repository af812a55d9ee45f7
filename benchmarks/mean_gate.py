"""Which statistic should judge a mean's temperature: the out-of-fold gate on NLL, ECE and Brier score.

    python benchmarks/mean_gate.py --case NAME=MODEL@DATA@views|scales ...

For each case the artifact predicts its tuning frames (`metrics.tta.keys`, else every validation key) as a
mean: TTA's views (`views`) or multi-scale inference's three resolutions over the model's own views
(`scales`), each unrecalibrated. The pixels `unetkit.tuning.calibration.recalibrate_mean` samples are then
judged three ways, each out of fold (T refitted leaving each fold of images out) with the paired bootstrap's 5th
percentile over images: the likelihood (what the logits' calibration is gated by, `gate_calibration`), the ECE
(what the product gates a mean's temperature by, `gate_mean_temperature`) and the Brier score. Appended to
docs/benchmarks.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.special import softmax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from drive import machine  # noqa: E402
from report import append_markdown  # noqa: E402

from unetkit.artifact import read_meta  # noqa: E402
from unetkit.evaluation.labelled import iter_probabilities, load_labelled  # noqa: E402
from unetkit.inference.files import tile_config_for  # noqa: E402
from unetkit.tuning.calibration import (  # noqa: E402
    DEFAULT_CALIBRATION_PIXELS,
    PixelSampler,
    fitted_fields,
    gate_calibration,
    gate_mean_temperature,
    out_of_fold_parts,
)
from unetkit.tuning.gate import GateResult, decide  # noqa: E402
from unetkit.tuning.scales import candidate_resolutions  # noqa: E402


def mean_pixels(model: str, data: str, mean: str) -> tuple[list[np.ndarray], list[np.ndarray], int, float]:
    """(log-mean samples per image, their labels, images, fitted T) as `recalibrate_mean` samples them
    (`PixelSampler`)."""
    meta = read_meta(model)
    keys = meta.metrics.get("tta", {}).get("keys") or list(meta.train_config["data"]["val_keys"])
    artifact, samples = load_labelled(model, data, keys, False)
    own = tile_config_for(artifact)
    tile = ({"tta": True, "tta_temperature": 1.0, "resolutions": ()} if mean == "views" else
            {"resolutions": candidate_resolutions(meta.resolution), "resolutions_temperature": 1.0,
             "tta_temperature": 1.0, "tta": own.tta})
    sampler = PixelSampler(len(samples), DEFAULT_CALIBRATION_PIXELS, 0, meta.ignore_index)
    for sample, p in iter_probabilities(artifact, samples, tile, backend="torch", progress=False):
        sampler.add(p, sample.labels, log=True)
    zs, ys = sampler.samples()
    _, fitted = fitted_fields(np.concatenate(zs), np.concatenate(ys))
    return zs, ys, len(samples), fitted


def brier_gate(zs: list[np.ndarray], ys: list[np.ndarray]) -> GateResult:
    """The same out-of-fold gate on the mean Brier score (negated: higher is better)."""
    def brier(z: np.ndarray, y: np.ndarray, fields: dict) -> list[float]:
        q = softmax(z.astype(np.float64) / fields["temperature"], axis=1)
        return [-((q - np.eye(z.shape[1])[y]) ** 2).sum(), len(y)]

    raw, fitted = out_of_fold_parts(zs, ys, brier, 2)
    return decide(raw, fitted, lambda s: s[0] / s[1] if s[1] else 0.0, what="Brier")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", required=True, metavar="NAME=MODEL@DATA@views|scales")
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    rows = []
    for case in args.case:
        name, rest = case.split("=", 1)
        model, data, mean = rest.rsplit("@", 2)
        if mean not in ("views", "scales"):
            ap.error(f"--case {case}: expected views or scales after the last @, got {mean!r}")
        zs, ys, n, t = mean_pixels(model, data, mean)
        verdicts = {"NLL": gate_calibration(zs, ys), "ECE": gate_mean_temperature(zs, ys, what="ECE"),
                    "Brier": brier_gate(zs, ys)}
        rows.append((name, mean, n, t, verdicts))
        print(name, mean, n, t, {k: v.reason for k, v in verdicts.items()}, flush=True)
    lines = [
        f"## A mean's temperature: its out-of-fold gate on NLL, ECE and Brier ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "", f"Command: `python benchmarks/mean_gate.py {' '.join(sys.argv[1:])}`  ", f"Machine: {machine()}.", "",
        "Gain of the temperature refitted out of fold over T = 1 (NLL: mean log-likelihood; ECE: its fall; Brier: "
        "its fall), bound = the paired bootstrap's 5th percentile over images; adopted when the bound is above 0.", "",
        "| case | mean | images | fitted T | NLL gain, bound | ECE fall, bound | Brier fall, bound |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, mean, n, t, verdicts in rows:
        cells = [f"{v.gain:+.4f}, {v.lower:+.4f}{' (adopted)' if v.adopted else ''}" for v in verdicts.values()]
        lines.append(f"| {name} | {mean} | {n} | {t:.3f} | " + " | ".join(cells) + " |")
    append_markdown(args.benchmarks, "\n".join(lines))


if __name__ == "__main__":
    main()
