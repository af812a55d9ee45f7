"""Deterministic subsets: the train/validation split (the same keys for the same data, config and
seed) and `spread`, an evenly spread subset of bounded size.

A data set's own splits (`DatasetSpec.splits`: folders, list files, a manifest column, dataset.json,
VOC ImageSets) come first: its test samples never train or validate, its val samples validate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from unetkit.config import DataConfig
from unetkit.errors import DataError

S = TypeVar("S")  # anything with a `.key`: Sample or LoadedSample


def split(
    samples: Sequence[S], config: DataConfig, given: Mapping[str, Sequence[str]] | None = None
) -> tuple[list[S], list[S]]:
    """(train, val): `config.val_keys` when given, else the data set's own `val` split (`given`),
    else a seeded random `val_fraction` (at least one sample). `given["test"]` is left out of both."""
    given = given or {}
    test = set(given.get("test", ()))
    ordered = sorted(samples, key=lambda s: s.key)
    all_keys = [s.key for s in ordered]
    if len(set(all_keys)) != len(all_keys):
        raise DataError("sample keys repeat; every sample needs its own key")
    ordered = [s for s in ordered if s.key not in test]
    keys = [s.key for s in ordered]
    if config.val_keys:
        unknown = sorted(set(config.val_keys) - set(keys))
        if unknown:
            what = "keys of the test split" if set(unknown) <= test else "unknown keys"
            raise DataError(
                f"data.val_keys: {what} {unknown[:10]}; the data set has keys {keys[:10]}..."
            )
        val_set = set(config.val_keys)
    elif given.get("val") and set(given["val"]) & set(keys):
        val_set = set(given["val"])
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
