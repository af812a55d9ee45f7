"""`fit(config) -> artifact path`: the whole training run, top to bottom.

data (spec, pairing, validation, split, normalization from the training images) -> the step loop
(`unetkit.training.steps`: patch sampler + augmentation -> model -> loss -> optimizer and LR
schedule -> steps, with validation every `val_every` steps, best/last checkpoints, early stopping,
wall-clock budget, JSONL log) -> the end (`unetkit.training.finish`): the best weights, calibrated
(temperature) and with postprocessing tuned on the validation split, saved as a model artifact
(`out_dir/model.unetkit`) with the drift baseline (input statistics of the training images, output
statistics on the validation images; `unetkit.monitor`). The budget reserves the time of this end
work. With `ensemble_folds > 1` the step loop runs once per fold (`unetkit.training.ensemble`).

`resume=True` continues an interrupted run exactly from `checkpoint-last.pt`. With `nproc > 1`
fit re-launches itself under torchrun (`unetkit.training.distributed`, `unetkit.training.worker`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from unetkit.artifact import ARTIFACT_NAME
from unetkit.config import TrainConfig
from unetkit.errors import ConfigError
from unetkit.runtime import keep_freed_memory
from unetkit.training.budget import BudgetClock
from unetkit.training.distributed import in_torchrun, init_distributed, launch, shutdown
from unetkit.training.ensemble import fit_ensemble
from unetkit.training.finish import end_passes, save_final_artifact
from unetkit.training.prepare import load_training_data
from unetkit.training.runlog import Callback
from unetkit.training.steps import log_time, run_steps


def fit(config: TrainConfig, *, callbacks: Sequence[Callback] | None = None) -> Path:
    """Train per `config`; returns the path of the saved model artifact."""
    if config.nproc > 1 and not in_torchrun():
        return launch(config, config.nproc)
    clock = BudgetClock(config.budget_seconds)
    env, device = init_distributed(config.device)
    if device.type == "cpu":
        keep_freed_memory()  # reuse activation buffers: glibc's page faults cost up to 30 % of a CPU step
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if config.ensemble_folds < 1:  # before loading the data: a user error should not wait for it
            raise ConfigError(f"ensemble_folds: expected an integer >= 1 (1 = one model), got {config.ensemble_folds}")
        # ---- data: refuse bad data (unless skip_bad), split, normalization from the training images
        data = load_training_data(config.data, progress=config.progress and env.is_main,
                                  log=print if config.progress and env.is_main else None)
        config = dataclasses.replace(config, model=data.resolve_model(config.model))  # resolved, for the artifact
        if config.ensemble_folds > 1:
            return fit_ensemble(config, data, env, device, clock, callbacks or ())
        clock.end_passes = end_passes(config, len(data.train), len(data.val))
        model, state, log = run_steps(config, data, env, device, clock, out_dir, callbacks or ())
        # ---- the best weights as the artifact
        artifact_path = out_dir / ARTIFACT_NAME
        if env.is_main:
            save_final_artifact(artifact_path, model, data, config, state)
            log.write({"event": "end", "step": state.step, "time": log_time(state, clock),
                       "artifact": str(artifact_path), "best": state.best_metric, "best_step": state.best_step})
        log.close()
        return artifact_path
    finally:
        shutdown(env)
