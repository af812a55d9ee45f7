"""Deterministic subsets: the train/validation split (the same keys for the same data, config and
seed) and `spread`, an evenly spread subset of bounded size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

from unetkit.config import DataConfig
from unetkit.errors import DataError

S = TypeVar("S")  # anything with a `.key`: Sample or LoadedSample


def split(samples: Sequence[S], config: DataConfig) -> tuple[list[S], list[S]]:
    """`config.val_keys` when given, else a seeded random `val_fraction` (at least one sample)."""
    ordered = sorted(samples, key=lambda s: s.key)
    keys = [s.key for s in ordered]
    if len(set(keys)) != len(keys):
        raise DataError("sample keys repeat; every sample needs its own key")
    if config.val_keys:
        unknown = sorted(set(config.val_keys) - set(keys))
        if unknown:
            raise DataError(
                f"data.val_keys: unknown keys {unknown[:10]}; the data set has keys {keys[:10]}..."
            )
        val_set = set(config.val_keys)
    elif config.val_fraction <= 0:
        val_set = set()
    else:
        if not 0 < config.val_fraction < 1:
            raise DataError(f"data.val_fraction: expected a fraction in [0, 1), got {config.val_fraction}")
        if len(keys) < 2:
            raise DataError(f"data: {len(keys)} sample(s) cannot be split into training and validation")
        n_val = min(len(keys) - 1, max(1, round(len(keys) * config.val_fraction)))
        order = np.random.default_rng(config.seed).permutation(len(keys))
        val_set = {keys[i] for i in order[:n_val]}
    train = [s for s in ordered if s.key not in val_set]
    if not train:
        raise DataError("data.val_keys: every sample is in validation; leave some for training")
    return train, [s for s in ordered if s.key in val_set]


def spread(items: Sequence[Any], limit: int) -> list[Any]:
    """At most `limit` items, evenly spread over the sequence (deterministic)."""
    if len(items) <= limit:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit).round()]
