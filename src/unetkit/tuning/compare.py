"""One way of predicting against another across labelled images, judged image by image without
holding the maps: the gate's verdict, the scores, the ECE of both and the candidate's recalibration
(`unetkit.tuning.tta`: plain vs the views' mean; `unetkit.tuning.scales`: one resolution vs several).

The maps of a validation split do not fit in memory for long (CamVid's 101 frames: 0.8 GB per way
of predicting), and a gate that judges a spread of 32 of them is too weak to see a real gain (a
held-out CamVid sequence: multi-scale +0.0071 Dice, bound -0.0017 on 32 frames, refused; +0.0150,
bound +0.0109 on all 101, adopted; docs/benchmarks.md). So `Comparison` keeps only what each image
adds: its score parts (`postprocess.score_parts`), its ECE bin sums, and a sample of its valid pixels
for the candidate's temperature (`calibration.recalibrate_samples`); every image is judged, and a
caller holds the maps of only the images it needs afterwards (the postprocessing search's spread).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unetkit.config import TtaMode
from unetkit.metrics.calibration import calibration_bins, expected_calibration_error
from unetkit.tuning.calibration import (
    DEFAULT_CALIBRATION_PIXELS,
    ECE_BINS,
    PixelSampler,
    ece_parts,
    parts_ece,
    recalibrate_samples,
)
from unetkit.tuning.gate import GateResult, decide
from unetkit.tuning.postprocess import parts_statistic, require_metric, score_parts


class Comparison:
    """A default way of predicting (`names[0]`) against a candidate that is a mean of calibrated
    predictions (`names[1]`: TTA's views, the scales), fed one labelled image at a time (`add`).

    `decide` then judges the candidate's pooled gain for `metric` across the images (`gate.decide`;
    mode "on" adopts it whatever the verdict) and fits the temperature its mean is recalibrated with
    (`calibration.recalibrate_samples`, on at most `max_pixels` valid pixels spread over the
    `images` images; a temperature moves no arg-max, so the verdict does not depend on it)."""

    def __init__(self, names: tuple[str, str], num_classes: int, *, metric: str, ignore_index: int, images: int,
                 seed: int = 0, max_pixels: int = DEFAULT_CALIBRATION_PIXELS) -> None:
        require_metric(metric)
        self.names, self.num_classes, self.metric, self.ignore_index = names, num_classes, metric, ignore_index
        self.seed = seed
        self.scores = tuple(dict.fromkeys((metric, "dice")))
        self.parts: dict[tuple[str, str], list[np.ndarray]] = {(s, n): [] for s in self.scores for n in names}
        self.bins = {n: np.zeros((3, ECE_BINS)) for n in names}
        self.pixels = PixelSampler(images, max_pixels, seed, ignore_index)

    def __len__(self) -> int:
        return len(self.pixels)

    def add(self, default: np.ndarray, candidate: np.ndarray, truth: np.ndarray) -> None:
        """One image's `(K, H, W)` probabilities of both ways and its labels."""
        valid = truth != self.ignore_index
        for name, p in zip(self.names, (default, candidate), strict=True):
            labels = p.argmax(0)
            for score in self.scores:
                self.parts[score, name].append(
                    score_parts([labels], [truth], self.num_classes, score, self.ignore_index)[0])
            self.bins[name] += calibration_bins(p.max(0), labels == truth, valid=valid, n_bins=ECE_BINS)
        self.pixels.add(candidate, truth, log=True)

    def decide(self, *, mode: TtaMode, what: str, gain_name: str,
               recalibrating: str) -> tuple[GateResult, dict[str, Any], dict[str, Any]]:
        """(verdict, scores, recalibration) over the images added.

        The scores are `metric` and pooled Dice of each way ("dice_plain") and their ECE ("ece_plain"),
        the candidate's after its recalibration: on the sampled pixels the temperature was fitted on
        (every valid pixel where they number at most `max_pixels`), the exact pooled ECE where T stays 1.
        The recalibration: "temperature" (1 unless its gate adopts the fit), "fitted_temperature",
        "gate", and the mean's ECE before it ("ece_mean")."""
        default, candidate = self.names
        parts = {key: np.asarray(rows) for key, rows in self.parts.items()}
        verdict = decide(parts[self.metric, default], parts[self.metric, candidate],
                         parts_statistic(self.num_classes, self.metric), what=what, seed=self.seed,
                         gain_name=gain_name)
        if mode == "on" and not verdict.adopted:
            verdict = GateResult(True, verdict.gain, verdict.lower, verdict.n, f"on as asked ({what}: on); the gate "
                                 f"would not adopt it: {verdict.reason}")
        scores: dict[str, Any] = {f"{score}_{name}": parts_statistic(self.num_classes, score)(p.sum(0))
                                  for (score, name), p in parts.items()}
        scores |= {f"ece_{name}": expected_calibration_error(*self.bins[name]) for name in self.names}
        zs, ys = self.pixels.samples()
        recalibration = recalibrate_samples(zs, ys, what=recalibrating, seed=self.seed)
        recalibration["ece_mean"] = scores[f"ece_{candidate}"]
        temperature = recalibration["temperature"]
        if temperature != 1.0 and ys:
            scores[f"ece_{candidate}"] = parts_ece(ece_parts(np.concatenate(zs), np.concatenate(ys),
                                                             {"temperature": temperature}))
        return verdict, scores, recalibration
