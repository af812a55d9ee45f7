"""Choosing the compute mode by measurement: the health check, the choice, a far slower mode giving
up its probe, fit's own probe without a plan, bf16 refused where the CPU lacks it, and every training
feature working in bf16 + channels_last."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from unetkit.config import LossConfig, ModelConfig, OptimConfig
from unetkit.errors import ConfigError
from unetkit.training import precision
from unetkit.training.fit import fit
from unetkit.training.modes import FP32, ComputeMode, candidate_modes
from unetkit.training.precision import (
    LOSS_TOLERANCE,
    Probe,
    choose_mode,
    decide_mode,
    health_problems,
    measure_modes,
    too_slow,
)
from unetkit.training.runlog import read_log

CPU = torch.device("cpu")
MODES = candidate_modes("auto", "auto", CPU)
FP32_LOSSES = (0.70, 0.66, 0.63, 0.61, 0.60)


def test_health_rejects_non_finite_values_and_a_loss_that_leaves_fp32s():
    near = tuple(v * (1 + 0.5 * LOSS_TOLERANCE) for v in FP32_LOSSES)
    far = tuple(v * (1 + 2 * LOSS_TOLERANCE) for v in FP32_LOSSES)
    probes = {"fp32": Probe(1.0, FP32_LOSSES), "fp32+cl": Probe(0.9, near), "bf16": Probe(0.5, far),
              "bf16+cl": Probe(0.4, (0.7, math.inf))}
    problems = health_problems(probes)
    assert set(problems) == {"bf16", "bf16+cl"}
    assert "vs fp32 0.7 at probe step 1" in problems["bf16"] and "inf" in problems["bf16+cl"]


def test_choose_takes_the_fastest_healthy_mode_and_says_why():
    probes = {"fp32": Probe(0.728, FP32_LOSSES), "fp32+cl": Probe(0.637, FP32_LOSSES),
              "bf16": Probe(0.310, FP32_LOSSES), "bf16+cl": Probe(0.237, (0.7, 0.9, 1.3, 2.0, 3.0))}
    decision = choose_mode(probes, "w32 d4 128x128 b8", MODES)
    assert decision.mode.name == "bf16"
    assert "fp32 728 ms, fp32+cl 637 ms, bf16 310 ms, bf16+cl 237 ms" in decision.reason
    assert "bf16+cl" in decision.rejected and decision.to_dict()["memory_format"] == "contiguous"
    with pytest.raises(ConfigError, match="no compute mode trains"):
        choose_mode({"bf16": Probe(0.1, (math.nan,))}, "x", MODES)


def test_real_probes_of_every_mode_train_healthily_from_the_same_weights():
    probes = measure_modes(ModelConfig(base_width=4, depth=2, in_channels=3, out_channels=2), MODES,
                           patch=(32, 32), batch_size=4, loss=LossConfig(), augment=None, device=CPU,
                           warmup_steps=1, timed_steps=2)
    assert health_problems(probes) == {}
    assert {p.losses[0] for p in probes.values()} and all(len(p.losses) == 3 for p in probes.values())
    assert probes["fp32"].losses[0] == probes["fp32+cl"].losses[0] or \
        abs(probes["fp32"].losses[0] - probes["fp32+cl"].losses[0]) < 1e-5  # same weights, same batch


class _Slow(nn.Module):
    def __init__(self, net: nn.Module, seconds: float) -> None:
        super().__init__()
        self.net, self.seconds = net, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.net(x)


@dataclass(frozen=True)
class _SlowMode(ComputeMode):
    """A mode whose every forward pass sleeps (an emulated bf16 stand-in on any CPU)."""

    def prepare(self, model: nn.Module) -> nn.Module:
        return _Slow(super().prepare(model), 2.0)


def test_a_mode_far_slower_than_the_fastest_stops_probing_but_fp32_never_does():
    model = ModelConfig(base_width=4, depth=2, in_channels=3, out_channels=2)
    slow, fast = _SlowMode("bf16"), ComputeMode("fp32", channels_last=True)  # 2 s a step: > 5x any real one
    probes = measure_modes(model, [FP32, slow, fast], patch=(32, 32), batch_size=2, loss=LossConfig(),
                           augment=None, device=CPU, warmup_steps=2, timed_steps=3)
    assert len(probes["bf16"].losses) == 2 and probes["bf16"].seconds >= 2.0  # judged after its second step
    assert len(probes["fp32"].losses) == len(probes["fp32+cl"].losses) == 5
    assert choose_mode(probes, "x", [FP32, slow, fast]).mode.name != "bf16"

    slow_fp32 = _SlowMode("fp32")  # the health reference runs every step however slow
    probes = measure_modes(model, [slow_fp32, fast], patch=(32, 32), batch_size=2, loss=LossConfig(),
                           augment=None, device=CPU, warmup_steps=1, timed_steps=2)
    assert len(probes["fp32"].losses) == 3 and health_problems(probes) == {}


def test_too_slow_compares_mean_steps_with_the_fastest_mode():
    assert too_slow({"fp32": 0.1, "bf16": 0.49, "bf16+cl": 0.51}) == {"bf16+cl"}
    assert too_slow({"fp32": 1.0, "bf16+cl": 0.1}) == set()  # fp32 never gives up
    assert too_slow({"bf16": 9.0}) == set()


def test_without_a_plan_a_short_run_stays_fp32_and_says_why(tiny_config):
    decision = decide_mode(tiny_config(precision="auto", memory_format="auto"), CPU)
    assert decision.mode == FP32 and "too short" in decision.reason


def test_fit_with_auto_and_a_budget_measures_and_logs_the_choice(tiny_config):
    cfg = tiny_config("auto", precision="auto", memory_format="auto", budget_seconds=20.0, steps=6, val_every=100)
    fit(cfg)
    start = next(e for e in read_log(Path(cfg.out_dir) / "metrics.jsonl") if e["event"] == "start")
    assert set(start["mode_ms_per_step"]) == {"fp32", "fp32+cl", "bf16", "bf16+cl"}
    assert start["mode"] in start["mode_ms_per_step"] and "fastest healthy mode" in start["mode_reason"]


def test_bf16_on_a_cpu_without_native_bf16_names_what_is_available_and_the_slowdown(monkeypatch, tiny_config):
    monkeypatch.setattr(precision, "native_bf16", lambda: False)
    cfg = tiny_config(precision="bf16", data=Path("/nonexistent"))  # refused before the data is read
    with pytest.raises(ConfigError, match=r"no native bf16.*available: fp32.*measured \d+\.\dx the fp32 step time"):
        fit(cfg)
    precision.check_available("fp32", CPU, cfg.model, cfg.loss)  # fp32 is always there


def test_every_training_feature_works_in_bf16_channels_last(tiny_config, tmp_path: Path, bf16_anywhere):
    """Ensemble members, EMA, clDice, validation and the artifact, with bf16 autocast + channels_last."""
    from unetkit.artifact import load_artifact
    from unetkit.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "ten", n_images=10, size=(48, 48), seed=1)
    cfg = tiny_config("bf16", data=data, precision="bf16", memory_format="channels_last", ensemble_folds=2,
                      steps=6, val_every=3, loss=LossConfig(cldice=0.5), optim=OptimConfig(lr=3e-3, ema_decay=0.9))
    art = load_artifact(fit(cfg))
    assert art.meta.train_config["precision"] == "bf16" and art.meta.train_config["memory_format"] == "channels_last"
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in art.state_dict.values() if v.is_floating_point())
    assert math.isfinite(art.meta.metrics["mean_dice_foreground"])
    starts = [e for e in read_log(Path(cfg.out_dir) / "member-0" / "metrics.jsonl") if e["event"] == "start"]
    assert starts[0]["mode"] == "bf16+cl"
    with torch.no_grad():
        assert torch.isfinite(art.pipeline_module(probabilities=True)(torch.rand(1, 3, 48, 48) * 255)).all()
