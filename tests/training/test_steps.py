"""The step loop (training.steps), driven through fit(): checkpoints, resume, early stopping,
the budget, the log and weight averaging."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unetkit.config import LossConfig, ModelConfig
from unetkit.errors import ConfigError
from unetkit.training.checkpoint import BEST, LAST, load_checkpoint
from unetkit.training.fit import fit
from unetkit.training.runlog import read_log


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(run_dir) / LAST)["model"]


def test_checkpoint_is_weights_only_loadable(tiny_config) -> None:
    cfg = tiny_config(steps=3, val_every=100)
    fit(cfg)
    raw = torch.load(Path(cfg.out_dir) / LAST, weights_only=True)  # no arbitrary unpickling needed
    assert raw["state"]["step"] == 3 and raw["state"]["total_steps"] == 3
    assert isinstance(raw["rng"]["torch"], torch.Tensor) and "sampler" in raw["rng"]


# bf16 autocast + channels_last resumes exactly too: the same kernels on the same values, so the
# tolerance stays 1e-6 (fp32 and bf16+cl weights differ by ~0.07 after these 12 steps)
@pytest.mark.parametrize("mode", [{}, {"precision": "bf16", "memory_format": "channels_last"}], ids=["fp32", "bf16+cl"])
def test_resume_reproduces_an_uninterrupted_run(tiny_config, mode, bf16_anywhere) -> None:
    from unetkit.config import AugmentConfig

    augment = AugmentConfig(enabled=True, rotate_degrees=10.0, noise_std=0.05)  # uses the torch RNG
    straight = tiny_config("straight", augment=augment, **mode)
    fit(straight)

    def interrupt_at_first_validation(event: dict) -> None:
        if event["event"] == "val" and event["step"] == 6:
            signal.raise_signal(signal.SIGINT)  # handled: stop at the step boundary, checkpoint, raise

    split = tiny_config("split", augment=augment, **mode)
    with pytest.raises(KeyboardInterrupt):
        fit(split, callbacks=[interrupt_at_first_validation])
    assert load_checkpoint(Path(split.out_dir) / LAST)["state"]["step"] == 6
    # precision / memory format "auto" on resume: the interrupted run's mode
    fit(tiny_config("split", augment=augment, resume=True, precision="auto", memory_format="auto"))

    a, b = _weights(straight.out_dir), _weights(split.out_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    events = read_log(Path(split.out_dir) / "metrics.jsonl")
    assert [e["event"] for e in events].count("start") == 2 and "stop" in [e["event"] for e in events]
    assert len({e["mode"] for e in events if e["event"] == "start"}) == 1


def test_resume_refuses_another_compute_mode(tiny_config, bf16_anywhere) -> None:
    fit(tiny_config(steps=2, val_every=100))
    with pytest.raises(ConfigError, match="precision='fp32', the config now says 'bf16'"):
        fit(tiny_config(steps=4, val_every=100, resume=True, precision="bf16"))


def test_resume_refuses_a_different_model(tiny_config) -> None:
    fit(tiny_config(steps=2, val_every=100))
    with pytest.raises(ConfigError, match="model.base_width"):
        fit(tiny_config(steps=4, resume=True, model=ModelConfig(base_width=8, depth=2)))


def test_resume_without_checkpoint_says_so(tiny_config) -> None:
    from unetkit.errors import ArtifactError

    with pytest.raises(ArtifactError, match="checkpoint-last.pt: checkpoint not found"):
        fit(tiny_config(resume=True))


def test_early_stopping_after_patience_validations(tiny_config) -> None:
    # a learning rate too small to change anything: the metric never improves after the first validation
    from unetkit.config import OptimConfig

    cfg = tiny_config(steps=200, val_every=1, early_stop_patience=2,
                      optim=OptimConfig(lr=1e-12, warmup_steps=0, schedule="constant"),
                      model=ModelConfig(base_width=4, depth=2, norm="group"))
    fit(cfg)
    log = read_log(Path(cfg.out_dir) / "metrics.jsonl")
    stop = next(e for e in log if e["event"] == "stop")
    assert stop == {**stop, "reason": "early_stop", "step": 3}
    assert [e["step"] for e in log if e["event"] == "val"] == [1, 2, 3]


def test_budget_stops_in_time_with_a_fitted_schedule(tiny_config) -> None:
    from unetkit.artifact import load_artifact

    budget = 8.0
    cfg = tiny_config(steps=100_000, budget_seconds=budget, val_every=50)
    t0 = time.perf_counter()
    path = fit(cfg)
    elapsed = time.perf_counter() - t0
    # within the budget, and using it: 3 % is held in reserve (R11) and the end-of-run passes are estimated
    # from the run's own validations, which a loaded machine makes slower than the end's (CI stopped at 0.896)
    assert 0.85 * budget <= elapsed <= 1.1 * budget, elapsed
    assert load_artifact(path).meta.metrics
    state = load_checkpoint(Path(cfg.out_dir) / LAST)["state"]
    assert state["budget_decided"] and state["total_steps"] < 100_000
    # ran (nearly) the plan: the schedule is fitted to step times measured early; a parallel test worker
    # changes them later (CI on the AVX2 EPYC stopped 6 of 255 steps short), hence 4 %
    assert state["total_steps"] - state["step"] <= max(2, 0.04 * state["total_steps"])
    log = read_log(Path(cfg.out_dir) / "metrics.jsonl")
    plans = [e for e in log if e["event"] == "budget"]  # first plan, then refreshed as speed varies
    assert plans and plans[-1]["total_steps"] == state["total_steps"]
    lrs = [e["lr"] for e in log if e["event"] == "train"]
    assert lrs[-1] < 0.05 * cfg.optim.lr  # the schedule decayed to its end inside the budget


def test_the_end_search_is_timed_on_the_labels_then_again_on_validations_probabilities(tiny_config,
                                                                                      monkeypatch) -> None:
    """The adapted Rand search's reserve (`finish.end_seconds`): timed before training on the first
    validation image's one-hot labels, then again on the model's probabilities of it (more pieces to
    cut, slower trials) at the 1st, 2nd, 4th, 8th ... validation; the reserve keeps the largest."""
    import importlib

    from unetkit.training.prepare import load_training_data

    fit_module = importlib.import_module("unetkit.training.fit")
    calls = []

    def timed(config, val, num_classes, probs=None):
        calls.append(probs)
        return 0.5 if probs is None else 1.5

    monkeypatch.setattr(fit_module, "end_seconds", timed)
    cfg = tiny_config(tune_postprocess="rand", budget_seconds=8.0, steps=100_000, val_every=20)
    fit(cfg)
    data = load_training_data(cfg.data)
    log = read_log(Path(cfg.out_dir) / "metrics.jsonl")
    validations = sum(e["event"] == "val" for e in log)
    retimed = [i for i in range(1, validations + 1) if i & (i - 1) == 0]  # 1, 2, 4, 8, ...
    assert validations >= 3 and len(calls) == 1 + len(retimed) and calls[0] is None  # the labels first
    for probs in calls[1:]:
        assert probs.shape == (len(data.class_names), *data.val[0].labels.shape) and probs.dtype == np.float32
        assert np.allclose(probs.sum(0), 1.0, atol=1e-4)
    plans = [e for e in log if e["event"] == "budget"]
    assert plans and plans[-1]["end_seconds"] == 1.5  # the reserve keeps the model's timing, the larger


def test_loss_config_reaches_the_log(tiny_config) -> None:
    cfg = tiny_config(steps=1, val_every=100, loss=LossConfig(ce=1.0, dice=0.0, focal=0.5))
    fit(cfg)
    train = [e for e in read_log(Path(cfg.out_dir) / "metrics.jsonl") if e["event"] == "train"]
    assert {"loss_ce", "loss_focal"} <= set(train[0]) and "loss_dice" not in train[0]
    assert json.loads(json.dumps(train[0])) == train[0]


def test_ema_weights_are_validated_selected_saved_and_resumed(tiny_config) -> None:
    from unetkit.artifact import load_artifact
    from unetkit.config import OptimConfig

    optim = OptimConfig(lr=3e-3, warmup_steps=2, ema_decay=0.9)
    straight = tiny_config("ema-straight", optim=optim, val_every=100)  # one validation, at the end
    art = load_artifact(fit(straight))
    last = load_checkpoint(Path(straight.out_dir) / LAST)
    best = load_checkpoint(Path(straight.out_dir) / BEST)
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert averaged.keys() == last["model"].keys()
    assert any(not torch.allclose(v, last["model"][k]) for k, v in averaged.items() if v.is_floating_point())
    for name, value in averaged.items():  # the best checkpoint and the artifact hold the average
        torch.testing.assert_close(best["model"][name], value, atol=0, rtol=0, msg=name)
        torch.testing.assert_close(art.state_dict[name], value, atol=0, rtol=0, msg=name)

    def interrupt(event: dict) -> None:
        if event["event"] == "val" and event["step"] == 6:
            signal.raise_signal(signal.SIGINT)

    split = tiny_config("ema-split", optim=optim)
    with pytest.raises(KeyboardInterrupt):
        fit(split, callbacks=[interrupt])
    fit(tiny_config("ema-split", optim=optim, resume=True))
    resumed = load_checkpoint(Path(split.out_dir) / LAST)["ema"]
    for name, value in last["ema"].items():  # resume continues the average exactly
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=0, msg=name)
