"""Shared test set-up: one torch thread per xdist worker (the suite runs 2 workers on 2 cores)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def bf16_anywhere(monkeypatch):
    """Let `precision: bf16` run on a CPU without native bf16 (AVX2 only), where torch emulates it:
    the tests using this check what bf16 does to training (resume, learning, features), which is the
    same code on every CPU; the refusal a user gets on such a CPU is tested on its own
    (test_precision, test_cli)."""
    from unetkit.training import precision

    monkeypatch.setattr(precision, "native_bf16", lambda: True)
