"""The data side of a training run, from `DataConfig` to loaded training and validation samples.

load the data set description -> pair images with masks -> validate (refuse bad files, or drop
them when `skip_bad`) -> split train/val -> load -> per-channel normalization statistics from the
TRAINING images only (stored in the artifact) -> patch sampler and augmenter. A large validation
split is cut to an evenly spread sample (`data.val_images`) after the fingerprint, which covers it all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unetkit.config import AugmentConfig, DataConfig, ModelConfig
from unetkit.data.dataset import PatchSampler, load_samples
from unetkit.data.fingerprint import channel_stats, fingerprint
from unetkit.data.pairing import pair_samples
from unetkit.data.resample import check_resolution, resample_image, resample_labels, resize_scores
from unetkit.data.spec import load_spec
from unetkit.data.splits import split, spread
from unetkit.data.transforms import Augmenter
from unetkit.data.validate import validate
from unetkit.errors import ConfigError, DataError
from unetkit.models.pretrained import input_normalization


@dataclass(frozen=True)
class TrainingData:
    spec: Any  # unetkit.data.spec.DatasetSpec
    train: Sequence[Any]  # LoadedSample(key, image (C,H,W) float32, labels (H,W))
    val: Sequence[Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: dict[str, Any]
    val_split: int = 0  # validation images in the split, before `data.val_images` sampled `val` (0: len(val))

    @property
    def n_val_split(self) -> int:
        """The validation split's size: the planner's n_train is the fingerprint's images less these,
        not less the sample validated on."""
        return self.val_split or len(self.val)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.spec.classes]

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        colors = [c.color for c in self.spec.classes]
        return [tuple(c) for c in colors] if all(c is not None for c in colors) else []

    @property
    def in_channels(self) -> int:
        return int(self.train[0].image.shape[0])

    @property
    def spec_dict(self) -> dict[str, Any]:
        """How mask values map to classes (stored in the artifact, so evaluation decodes masks alike)."""
        return {
            "classes": [{"name": c.name, "value": _plain(c.value), "color": _plain(c.color)} for c in self.spec.classes],
            "ignore_values": [_plain(v) for v in self.spec.ignore_values],
        }

    def resolve_model(self, model: ModelConfig) -> ModelConfig:
        """The model config with in/out channels taken from the data (the data is the truth)."""
        return dataclasses.replace(model, in_channels=self.in_channels, out_channels=len(self.spec.classes))

    def patch_sampler(self, config: DataConfig, rng: np.random.Generator,
                      targets: Sequence[np.ndarray] | None = None, window: tuple[int, int] | None = None):
        """Patches of the training images (resampled to `config.resolution`), each within `window`
        (the augmenter's `context_window`); with `targets` (a teacher's probabilities per training
        image) their crop follows the image's channels."""
        resolution = config.resolution  # checked by load_training_data
        train = self.train
        if resolution != 1.0:
            train = [dataclasses.replace(s, image=resample_image(s.image, resolution),
                                         labels=resample_labels(s.labels, resolution)) for s in train]
            if targets is not None:
                targets = [resize_scores(t, s.labels.shape).astype(t.dtype) for t, s in zip(targets, train, strict=True)]
        return PatchSampler(train, config.patch_size, config.batch_size, config.rare_oversample, rng,
                            num_classes=len(self.spec.classes), targets=targets, window=window)

    def augmenter(self, config: AugmentConfig, seed: int, soft_targets: bool = False):
        """`soft_targets`: the batches carry target channels after the image's, warped but not recoloured."""
        if not config.enabled:
            return None
        return Augmenter(config, seed=seed, image_channels=self.in_channels if soft_targets else None)


def load_training_data(config: DataConfig, *, progress: bool = False,
                       log: Callable[[str], Any] | None = None) -> TrainingData:
    if not config.data:
        raise ConfigError("data.data: empty; give a data folder, a dataset JSON or a manifest CSV")
    check_resolution(config.resolution, "data.resolution")
    if config.val_images < 0:
        raise ConfigError(f"data.val_images: expected 0 (all) or a positive number of images, got {config.val_images}")
    spec = load_spec(config.data)
    samples = pair_samples(spec)
    report = validate(spec, samples, progress=progress)
    usable = report.usable(skip_bad=config.skip_bad)  # refuses bad data unless skip_bad
    if log and len(usable) < len(samples):
        log(f"skip_bad: training without {len(samples) - len(usable)} bad of {len(samples)} samples")
    samples = usable
    if len(samples) < 2:
        raise DataError(f"{config.data}: {len(samples)} usable image/mask pair(s); training needs at least 2 "
                        "(one for training, one for validation)")
    train_samples, val_samples = split(samples, config, spec.split_map)  # the data set's own splits first
    if log and spec.splits:
        own = spec.split_map
        log(f"splits: {len(train_samples)} train, {len(val_samples)} val"
            + (" (the data set's val split)" if own.get("val") and not config.val_keys else "")
            + (f"; {len(own['test'])} test samples kept out" if own.get("test") else ""))
    train = load_samples(train_samples, spec, progress=progress)
    val = load_samples(val_samples, spec, progress=progress)
    mean, std = channel_stats([s.image for s in train])  # the training images only
    data_print = fingerprint(spec, [*train_samples, *val_samples], [*train, *val])  # of the whole data set
    if config.val_images and len(val) > config.val_images:
        val = spread(val, config.val_images)
        if log:
            log(f"validation: {len(val)} of {len(val_samples)} validation images, evenly spread (data.val_images)")
    return TrainingData(spec=spec, train=train, val=val, mean=tuple(mean), std=tuple(std), fingerprint=data_print,
                        val_split=len(val_samples))


def with_weights_normalization(data: TrainingData, mean: Sequence[float], std: Sequence[float]) -> TrainingData:
    """`data` normalized as pretrained weights expect (their [0, 1]-unit mean/std, e.g. ImageNet's) instead
    of by its own statistics, in the images' raw units (`unetkit.models.pretrained.input_normalization`);
    the artifact stores it, so prediction normalizes alike."""
    peak = max(float(s.image.max()) for s in data.train)
    mean_raw, std_raw = input_normalization(mean, std, data.in_channels, peak)
    return dataclasses.replace(data, mean=mean_raw, std=std_raw)


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v.item() if hasattr(v, "item") else v
