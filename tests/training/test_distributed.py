"""2-process gloo DDP on CPU (through torchrun, as `unetkit train --nproc 2` runs it) == 1 process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unetkit.config import LossConfig, ModelConfig
from unetkit.errors import ConfigError
from unetkit.training.checkpoint import LAST, load_checkpoint
from unetkit.training.distributed import DistEnv, launch, rank_share
from unetkit.training.fit import fit
from unetkit.training.runlog import read_log


def test_batch_must_divide_between_the_processes() -> None:
    assert rank_share(8, DistEnv(1, 2, 1)) == slice(4, 8)
    with pytest.raises(ConfigError, match="data.batch_size: 6 is not divisible by the 4"):
        rank_share(6, DistEnv(0, 4, 0))


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


def test_two_process_ensemble_matches_one_process(tiny_config, tmp_path: Path) -> None:
    from unetkit.artifact import load_artifact
    from unetkit.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "ten", n_images=10, size=(48, 48), seed=1)  # 2 folds need >= 4
    common = dict(data=data, steps=8, val_every=4, ensemble_folds=2, model=ModelConfig(base_width=4, depth=2, norm="group"),
                  loss=LossConfig(ce=1.0, dice=0.0))
    single = load_artifact(fit(tiny_config("ens-single", **common)))
    ddp = tiny_config("ens-ddp", **common)
    both = load_artifact(launch(ddp, 2))

    assert both.meta.model.ensemble == 2
    assert [m["fold"] for m in both.meta.lineage["members"]] == [m["fold"] for m in single.meta.lineage["members"]]
    assert [m["steps"] for m in both.meta.lineage["members"]] == [8, 8]
    for name in single.state_dict:  # every member trained exactly as in one process
        torch.testing.assert_close(single.state_dict[name], both.state_dict[name], atol=1e-5, rtol=0, msg=name)
    for i in range(2):  # each member's log written once, by rank 0
        log = read_log(Path(ddp.out_dir) / f"member-{i}" / "metrics.jsonl")
        assert [e["event"] for e in log].count("start") == 1 and log[0]["world_size"] == 2
