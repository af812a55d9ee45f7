"""Data-parallel training with torch.distributed, launched by torchrun (gloo on CPU, nccl on GPU).

`fit` calls `init_distributed` which reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK. Every rank
draws the same global batch (`batch_size` patches, same sampler seed) and trains on its own
contiguous share `rank_share` of `batch_size / world_size` patches, so a run on N processes sees
exactly the patches a single process would; DDP averages the gradients. Only rank 0 validates and
writes logs, checkpoints and the artifact; rank 0's stop decisions (budget, early stopping,
interruption) are broadcast so all ranks stop at the same step.

BatchNorm: converted to SyncBatchNorm on GPUs. torch's SyncBatchNorm does not run on CPU, so on
CPU (gloo) each rank normalizes with its own share's statistics: results then differ slightly
from one process; use `model.norm = "group"` or `"instance"` for exact equivalence.

`launch(config, nproc)` re-executes training under `torch.distributed.run` (what `unetkit train
--nproc N` calls), each worker running `unetkit.training.worker`; multi-node commands are in
docs/distributed.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from unetkit.artifact import ARTIFACT_NAME
from unetkit.config import TrainConfig, to_dict
from unetkit.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def in_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """`auto`: this rank's GPU when CUDA is available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: '{name}' requested but CUDA is not available; use device='cpu' or 'auto'")
        if device.index is None:
            device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(device_name: str) -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun set up (nothing to do in a single process)."""
    if not in_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        env = DistEnv()
        return env, resolve_device(device_name, env)
    env = DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(device_name, env)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return env, device


def shutdown(env: DistEnv) -> None:
    """Leave the process group together: a rank that destroyed its gloo group while rank 0 was
    still validating and saving sometimes aborted ("terminate called without an active exception").
    If a rank died instead, torchrun stops the others, so the barrier cannot hang."""
    if env.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_share(batch_size: int, env: DistEnv) -> slice:
    """This rank's contiguous part of the global batch."""
    if batch_size % env.world_size:
        raise ConfigError(
            f"data.batch_size: {batch_size} is not divisible by the {env.world_size} training processes; "
            f"use a multiple of {env.world_size}"
        )
    per_rank = batch_size // env.world_size
    return slice(env.rank * per_rank, (env.rank + 1) * per_rank)


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """DDP-wrap the model (SyncBatchNorm first on GPUs); the model itself when single-process."""
    if not env.enabled:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def broadcast_floats(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Rank 0's `values` on every rank (float64, so step counts stay exact)."""
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def launch(config: TrainConfig, nproc: int) -> Path:
    """Train on `nproc` local processes through torchrun; returns the artifact path.

    The config goes to a temporary JSON file that every worker reads (`python -m
    unetkit.training.worker CONFIG.json`).
    """
    if nproc < 1:
        raise ConfigError(f"nproc: expected a positive number of processes, got {nproc}")
    config = dataclasses.replace(config, nproc=nproc)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, cfg_path = tempfile.mkstemp(prefix=".train-config.", suffix=".json", dir=out_dir)
    with os.fdopen(fd, "w") as f:
        json.dump(to_dict(config), f)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "unetkit.training.worker", cfg_path]
    try:
        result = subprocess.run(cmd, check=False)
    finally:
        Path(cfg_path).unlink(missing_ok=True)
    if result.returncode != 0:
        raise ConfigError(
            f"distributed training with {nproc} processes failed (torchrun exit code {result.returncode}); "
            "see the worker output above"
        )
    return out_dir / ARTIFACT_NAME
