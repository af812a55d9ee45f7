"""Training checkpoints: everything an exact resume needs, in a file `torch.load(weights_only=True)` reads.

A checkpoint holds only tensors and plain Python values (dicts, lists, numbers, strings): model and
optimizer state dicts, the step, the decided total number of steps, the RNG states (torch, numpy's
global generator, the patch sampler's and the augmenter's generators), best metric, history and elapsed time. No
arbitrary object is ever unpickled. Writes are durable and atomic (`data.atomic.atomic_write`: a unique
temporary name in the same folder, fsync, rename, fsync of the folder), so a crash or a full disk
during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.config import to_dict
from unetkit.data.atomic import atomic_write
from unetkit.errors import ArtifactError, ConfigError

LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"
FORMAT = 1


def capture_rng(sampler: Any, augmenter: Any = None) -> dict[str, Any]:
    """RNG states as tensors and plain values (no numpy objects, so weights_only loading works)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "sampler": sampler.state_dict(),
        "augmenter": augmenter.state_dict() if augmenter is not None else {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], sampler: Any, augmenter: Any = None) -> None:
    """Torch, numpy-global, patch-sampler and augmenter (`load_state_dict`) RNG states back."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    sampler.load_state_dict(state["sampler"])
    if augmenter is not None and state["augmenter"]:
        augmenter.load_state_dict(state["augmenter"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` durably, all or nothing (`atomic_write`): a crash or a full disk leaves the previous
    checkpoint as it was. Serialized in memory first, so a full disk is a clear `StorageError`."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    return atomic_write(path, buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`; a missing or unreadable file is an `ArtifactError`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: checkpoint not found; nothing to resume (train without resume first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle with objects, ...
        raise ArtifactError(f"{path}: not a readable unetkit checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a unetkit checkpoint of format {FORMAT}")
    return state


def check_resumable(saved: dict[str, Any], config: Any, path: Path) -> None:
    """Refuse to resume a checkpoint written for a different model, data or loss."""
    now = to_dict(config)
    before = saved.get("config", {})
    defaults = to_dict(type(config)())  # a key added since the checkpoint was written had its default then
    for section in ("model", "loss", "optim", "augment", "finetune"):
        for key, value in now[section].items():
            old = before.get(section, {}).get(key, defaults[section][key])
            if old != value:
                raise ConfigError(
                    f"resume: {path} was written with {section}.{key}={old!r}, "
                    f"the config now says {value!r}; use the original config or a new out_dir"
                )
    for key in ("precision", "memory_format"):  # another mode would not continue the run exactly
        if before.get(key) != now[key]:
            raise ConfigError(
                f"resume: {path} was written with {key}={before.get(key)!r}, the config now says {now[key]!r}; "
                f"use the original config (or {key} auto) or a new out_dir"
            )
    for key in ("patch_size", "batch_size", "data"):
        if before.get("data", {}).get(key) != now["data"][key]:
            raise ConfigError(
                f"resume: {path} was written with data.{key}={before.get('data', {}).get(key)!r}, "
                f"the config now says {now['data'][key]!r}; use the original config or a new out_dir"
            )
