"""Checkpoint writes are durable (issue 16, case 13)."""

from __future__ import annotations

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
