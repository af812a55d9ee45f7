"""2-process gloo DDP on CPU (through torchrun, as `unetkit train --nproc 2` runs it) == 1 process."""

from __future__ import annotations

from pathlib import Path

import torch

from unetkit.config import LossConfig, ModelConfig
from unetkit.training.checkpoint import LAST, load_checkpoint
from unetkit.training.distributed import launch
from unetkit.training.fit import fit
from unetkit.training.runlog import read_log


def test_two_process_ddp_matches_one_process(tiny_config) -> None:
    # GroupNorm: CPU has no SyncBatchNorm, so BatchNorm statistics would be per-rank (documented);
    # CE only: the batch soft Dice of a half batch is not half of the whole batch's Dice.
    common = dict(steps=8, val_every=4, model=ModelConfig(base_width=4, depth=2, norm="group"),
                  loss=LossConfig(ce=1.0, dice=0.0))
    single = tiny_config("single", **common)
    fit(single)
    ddp = tiny_config("ddp", **common)
    artifact = launch(ddp, 2)
    assert artifact.is_file()

    a = load_checkpoint(Path(single.out_dir) / LAST)
    b = load_checkpoint(Path(ddp.out_dir) / LAST)
    assert b["config"]["nproc"] == 2 and b["state"]["step"] == 8
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], atol=1e-5, rtol=0, msg=name)
    log = read_log(Path(ddp.out_dir) / "metrics.jsonl")  # written by rank 0 only: one start, one end
    assert [e["event"] for e in log].count("start") == 1 and log[0]["world_size"] == 2
    assert [e["event"] for e in log].count("end") == 1
