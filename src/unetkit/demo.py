"""`unetkit demo`: the whole road on built-in synthetic data in about a minute.

Generates a labelled data set of noisy shapes (several classes, one rare), trains a small U-Net
within a time budget, predicts on held-out images, prints per-class IoU and Dice and writes masks
and overlays for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

from unetkit.config import DataConfig, ModelConfig, OptimConfig, TileConfig, TrainConfig
from unetkit.data.synthetic import make_synthetic_dataset
from unetkit.evaluation.evaluate import evaluate_model
from unetkit.evaluation.table import format_table
from unetkit.inference.files import predict_files
from unetkit.training.fit import fit


def demo_config(data: Path, run: Path, seconds: float, progress: bool = True) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(data=str(data), val_fraction=0.2, patch_size=(96, 96), batch_size=8),
        model=ModelConfig(in_channels=3, out_channels=4, depth=3, base_width=16),
        optim=OptimConfig(lr=3e-3, warmup_steps=20),
        steps=100_000,  # the budget decides
        budget_seconds=seconds,
        val_every=100,
        out_dir=str(run),
        progress=progress,
    )


def run_demo(out: Path, seconds: float = 60.0, progress: bool = True) -> dict:
    out = Path(out)
    data, holdout = out / "data", out / "holdout"
    print(f"1/4 generating synthetic data sets in {data}/ and {holdout}/")
    make_synthetic_dataset(data, n_images=48, size=128, seed=0)
    make_synthetic_dataset(holdout, n_images=8, size=160, seed=1)

    print(f"2/4 training a small U-Net for about {seconds:.0f} s")
    model = fit(demo_config(data, out / "run", seconds, progress))

    print("3/4 predicting the held-out images (tiled, Gaussian blending)")
    pred_dir = out / "predictions"
    predict_files(model, [holdout / "images"], pred_dir, TileConfig(), colour=True, overlays=True,
                  progress=progress)

    print("4/4 scoring the held-out images")
    result = evaluate_model(model, holdout, TileConfig(), progress=progress)
    print(format_table(result))
    print(f"\nmodel artifact:  {model}\nmasks/overlays:  {pred_dir}/  (*_mask.png, *_overlay.png)"
          f"\ntraining log:    {out / 'run' / 'metrics.jsonl'}\n"
          f"next: unetkit predict {model} YOUR_IMAGES --out predictions --overlay")
    return result
