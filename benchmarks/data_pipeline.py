"""Data pipeline throughput: 256x256 patches, batch 8, from in-memory DRIVE-sized images, augmented.

    .venv/bin/python benchmarks/data_pipeline.py                      # synthetic DRIVE-sized images
    .venv/bin/python benchmarks/data_pipeline.py --data /work/shared/data/drive/training
    .venv/bin/python benchmarks/data_pipeline.py --threads 2 --no-augment

Prints patches/s (median of --repeats runs of --batches batches) for sampling alone and for
sampling + augmentation (normalization included), on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from unetkit.config import AugmentConfig
from unetkit.data import LoadedSample, PatchSampler, channel_stats, detect_spec, load_samples, pair_samples
from unetkit.data.transforms import Augmenter


def synthetic_drive(n: int = 20, seed: int = 0) -> list[LoadedSample]:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        image = rng.uniform(0, 255, (3, 584, 565)).astype(np.float32)
        labels = (rng.random((584, 565)) < 0.12).astype(np.uint8)
        labels[:40] = 255  # outside the field of view
        samples.append(LoadedSample(str(i), image, labels))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a data folder (default: synthetic DRIVE-sized images)")
    parser.add_argument("--patch", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--elastic", type=float, default=0.0, help="elastic alpha (0: off, the default)")
    parser.add_argument("--no-augment", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.data:
        spec = detect_spec(args.data)
        loaded = load_samples(pair_samples(spec), spec)
    else:
        loaded = synthetic_drive()
    mean, std = channel_stats([s.image for s in loaded])
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    sampler = PatchSampler(loaded, (args.patch, args.patch), args.batch, 0.33, 0, num_classes=2)
    augment = None if args.no_augment else Augmenter(AugmentConfig(elastic_alpha=args.elastic), seed=0)

    def run(with_augment: bool) -> float:
        start = time.perf_counter()
        for _ in range(args.batches):
            images, labels = sampler.next_batch()
            if with_augment:
                augment((images - mean_t) / std_t, labels)
        return args.batches * args.batch / (time.perf_counter() - start)

    run(augment is not None)  # warm-up
    sampling = statistics.median(run(False) for _ in range(args.repeats))
    print(
        f"images: {len(loaded)} x {tuple(loaded[0].image.shape)}; patch {args.patch}^2, batch {args.batch}, "
        f"{args.threads} thread(s)"
    )
    print(f"sampling only:          {sampling:8.1f} patches/s (median of {args.repeats})")
    if augment is not None:
        full = statistics.median(run(True) for _ in range(args.repeats))
        print(f"sampling + augmentation: {full:8.1f} patches/s (median of {args.repeats})")


if __name__ == "__main__":
    main()
