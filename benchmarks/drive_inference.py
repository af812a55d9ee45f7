"""unetkit's default inference vs MONAI's defaults on the DRIVE validation images (same weights).

unetkit: `make_predictor(artifact)` (backend "auto": eager torch vs ONNX Runtime timed once and
cached) and `tile_config_for(artifact, TileConfig())` - whatever the engine chooses by default.
MONAI: `sliding_window_inference` with roi = the artifact's patch size, overlap 0.25, constant
blending, sw_batch_size 1 (its defaults), eager PyTorch on the artifact's pipeline (normalization,
network, calibration) followed by softmax. Both score arg-max labels against the manual
annotations inside the field of view. Median seconds of --repeats runs over all images; appends
to docs/benchmarks.md.

    .venv/bin/python benchmarks/drive_inference.py --model /tmp/runs/drive-foundation/model.unetkit \
        --data ../shared/data/drive --keys 36,37,38,39,40 [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from report import append_markdown, median_seconds

from unetkit.config import TileConfig
from unetkit.evaluation.labelled import load_labelled
from unetkit.inference.backends import machine_id, make_predictor
from unetkit.inference.files import tile_config_for
from unetkit.inference.predict import predict_tiled
from unetkit.metrics.summary import evaluate_predictions


def monai_probabilities(module, image: np.ndarray, roi: tuple[int, int]) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        out = sliding_window_inference(torch.from_numpy(image)[None], roi, 1, lambda x: torch.softmax(module(x), dim=1),
                                       overlap=0.25, mode="constant")
    return out[0].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--keys", default="36,37,38,39,40")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    load_before = os.getloadavg()[0]
    artifact, samples = load_labelled(args.model, args.data, args.keys.split(","), progress=False)
    meta = artifact.meta
    mpix = sum(s.image.shape[1] * s.image.shape[2] for s in samples) / 1e6

    def score(probs: list[np.ndarray]) -> dict:
        items = [(s.key, p.argmax(0).astype(np.uint8), s.labels) for s, p in zip(samples, probs, strict=True)]
        return evaluate_predictions(items, meta.class_names, meta.ignore_index)

    roi = tuple(meta.patch_size)[:2]
    module = artifact.pipeline_module().eval()
    t_monai, p_monai = median_seconds(lambda: [monai_probabilities(module, s.image, roi) for s in samples], args.repeats)

    start = time.perf_counter()
    predictor = make_predictor(artifact)  # backend "auto" (cached per machine after the first time)
    t_setup = time.perf_counter() - start
    tile = tile_config_for(artifact, TileConfig())
    t_unet, p_unet = median_seconds(lambda: [predict_tiled(predictor, s.image, tile) for s in samples], args.repeats)
    s_monai, s_unet = score(p_monai), score(p_unet)
    d_monai, d_unet = s_monai["mean_dice_foreground"], s_unet["mean_dice_foreground"]
    load_after = os.getloadavg()[0]
    lines = [
        f"\n## DRIVE inference: unetkit defaults vs MONAI defaults ({time.strftime('%Y-%m-%d %H:%M')})\n",
        f"`.venv/bin/python {' '.join(['benchmarks/drive_inference.py', *sys.argv[1:]])}`\n",
        f"Machine: {machine_id()}, {platform.platform()}, {torch.get_num_threads()} torch threads. Load average (1 min) "
        f"{load_before:.2f} before / {load_after:.2f} after"
        f"{' - machine shared with other jobs, figures are noisy' if max(load_before, load_after) > 0.5 else ''}.\n",
        f"Model {args.model} ({meta.model.arch}, base {meta.model.base_width}, depth {meta.model.depth}, patch {roi}); "
        f"{len(samples)} images {args.keys} ({mpix:.2f} MP); median of {args.repeats} runs.\n",
        "| path | settings | seconds | MP/s | vessel Dice | mIoU |", "|---|---|---|---|---|---|",
        f"| MONAI sliding_window_inference | roi {roi}, overlap 0.25, constant, sw_batch_size 1, eager torch | "
        f"{t_monai:.2f} | {mpix / t_monai:.2f} | {d_monai:.4f} | {s_monai['mean_iou']:.4f} |",
        f"| unetkit predict_tiled (defaults) | {type(predictor).__name__}, tile {tile.tile_size}, overlap {tile.overlap}, "
        f"{tile.blend}, batch {tile.batch_size} | {t_unet:.2f} | {mpix / t_unet:.2f} | {d_unet:.4f} | {s_unet['mean_iou']:.4f} |",
        f"\nunetkit **{t_monai / t_unet:.2f}x** MONAI (target 4x) at a vessel Dice difference of {d_unet - d_monai:+.4f} "
        f"(target >= -0.002); backend choice took {t_setup:.1f} s once (then cached).\n",
    ]
    text = "\n".join(lines)
    print(text)
    append_markdown(args.out, text)


if __name__ == "__main__":
    main()
