"""Checkpoint writes are durable (issue 16, case 13)."""

from __future__ import annotations

import pytest
import torch

from tests.data.test_atomic import run_with_file_size_limit
from unetkit.training.checkpoint import load_checkpoint, save_checkpoint


def test_issue16_case13_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """Before: torch.save's 'unexpected pos 704 vs 598' and no fsync; now one clear line, old checkpoint intact."""
    save_checkpoint(tmp_path / "checkpoint-last.pt", {"step": 7, "w": torch.ones(3)})
    done = run_with_file_size_limit("""
        import torch
        from unetkit.errors import StorageError
        from unetkit.training.checkpoint import save_checkpoint
        try:
            save_checkpoint("checkpoint-last.pt", {"step": 8, "w": torch.ones(1_000_000)})
        except StorageError as e:
            print(e)
    """, limit=500_000, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "checkpoint-last.pt: could not write it (the file size limit was reached)" in done.stdout
    state = load_checkpoint(tmp_path / "checkpoint-last.pt")
    assert state["step"] == 7 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-last.pt"]


def test_resume_takes_config_keys_added_since_the_checkpoint_as_their_defaults(tmp_path):
    from unetkit.config import ModelConfig, TrainConfig, to_dict
    from unetkit.errors import ConfigError
    from unetkit.training.checkpoint import check_resumable

    before = to_dict(TrainConfig())
    del before["model"]["encoder"], before["model"]["options"]  # written before these fields existed
    check_resumable({"config": before}, TrainConfig(), tmp_path / "checkpoint-last.pt")
    with pytest.raises(ConfigError, match="model.encoder='unet', the config now says 'resnet18'"):
        check_resumable({"config": before}, TrainConfig(model=ModelConfig(encoder="resnet18")), tmp_path / "c.pt")
