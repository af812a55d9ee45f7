"""Calibration stays within its time bound; the planned train command works end to end on data it
has never seen (colour-coded masks, 6 classes, an ignore colour, odd non-square images) and stores
the plan in the artifact."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.planning.conftest import make_fingerprint
from unetkit.artifact import load_artifact
from unetkit.cli import app
from unetkit.data.io import write_png
from unetkit.planning import auto
from unetkit.planning.rules import LADDER, TOPOLOGY_DEPTH
from unetkit.planning.throughput import Candidate, MeasuredThroughput, measure_throughput

COLOURS = [(0, 0, 0), (220, 40, 40), (40, 200, 40), (40, 60, 230), (230, 200, 30), (160, 40, 200)]
IGNORE = (255, 255, 255)


def make_colour_dataset(root: Path, n: int = 6, size=(75, 101), seed: int = 0) -> Path:
    """RGB images + RGB colour-coded masks (6 classes), a white ignore border, odd non-square size."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        labels = np.zeros((h, w), np.uint8)
        for k in range(1, 6):
            cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(5, 12)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
        image = np.array(COLOURS, np.float32)[labels] * 0.6 + 50 + rng.normal(0, 10, (h, w, 3))
        mask = np.array(COLOURS, np.uint8)[labels]
        mask[:3] = IGNORE  # an ignored strip
        write_png(root / "images" / f"s{i}.png", np.clip(image, 0, 255).astype(np.uint8))
        write_png(root / "masks" / f"s{i}.png", mask)
    from unetkit.data.spec import detect_spec, save_spec

    spec = detect_spec(root)
    classes = tuple(c for c in spec.classes if tuple(c.value) != IGNORE)
    import dataclasses

    save_spec(dataclasses.replace(spec, classes=classes, ignore_values=(IGNORE,)), root / "unetkit-dataset.json")
    return root / "unetkit-dataset.json"


def test_timing_candidates_stays_within_its_time_bound():
    ladder = [Candidate(w, d, (p, p), b) for w, d, p, b in LADDER]
    measure_throughput(ladder[:1], in_channels=3, out_channels=2, max_seconds=0.1)  # one-off imports/init
    for limit in (0.5, 2.0):
        t0 = time.perf_counter()
        measured = measure_throughput(ladder, in_channels=3, out_channels=2, max_seconds=limit)
        spent = time.perf_counter() - t0
        assert measured.table, "at least the cheapest candidate is timed"
        assert spent <= limit * 1.5 + 0.5, f"timing candidates took {spent:.2f} s for a {limit} s bound"
        assert len(measured.table) < len(ladder)  # the big rungs are extrapolated, not run
        assert all(measured(c) > 0 for c in ladder)


def test_timing_candidates_stops_once_a_candidate_is_too_slow():
    ladder = [Candidate(w, d, (p, p), b) for w, d, p, b in LADDER[:6]]
    measured = measure_throughput(ladder, in_channels=1, out_channels=2, max_seconds=30.0,
                                  stop_when=lambda c, s: True)
    assert len(measured.table) == 1


def test_objects_scored_by_their_topology_time_on_to_the_first_depth_4_rung(monkeypatch):
    """R1 may take the cheapest depth-4 rung below the doubled target: it must be timed, with the compute
    modes raced on it, not extrapolated from the depth-3 rungs whose timing stopped the ladder."""
    captured: dict = {}

    def record(candidates, **kwargs):
        captured.update(kwargs, candidates=list(candidates))
        return MeasuredThroughput(1, 2)

    monkeypatch.setattr(auto, "measure_throughput", record)
    membranes = [("membrane", 0.22, 0.73, 2.5, 58000.0), ("interior", 0.78, 0.92, 12.0, 4700.0)]
    for objects, d3_stops in ((114.0, False), (3.0, True)):  # touching cells; few objects: the plain rule
        fp = make_fingerprint(size=(512, 512), n=30, channels=1, classes=membranes, objects_per_image=objects)
        auto.time_candidates(fp, {}, 1800, device="cpu")
        stop, ladder = captured["stop_when"], captured["candidates"]
        d3 = next(c for c in ladder if c.depth == 3)
        d4 = next(c for c in ladder if c.depth >= TOPOLOGY_DEPTH)
        assert stop(d3, 10.0) is d3_stops and stop(d4, 10.0)  # 10 s a step: under any step target
        assert not stop(d4, 1e-4)


def test_the_race_times_the_network_the_user_set_not_only_the_planned_choices(tmp_path: Path, monkeypatch):
    """Deep supervision (not a plan choice) made steps 1.8x dearer; the race timed the plain network."""
    from unetkit.config import DataConfig
    from unetkit.planning import auto
    from unetkit.training.prepare import load_training_data

    timed = {}
    monkeypatch.setattr(auto, "measure_throughput", lambda *a, **kw: timed.update(kw))
    spec = make_colour_dataset(tmp_path / "d")
    fingerprint = load_training_data(DataConfig(data=str(spec)), progress=False).fingerprint
    auto.time_candidates(fingerprint, {"model.deep_supervision": True, "model.attention": True, "loss.focal": 0.5},
                         60.0, device="cpu")
    assert timed["model"].deep_supervision and timed["model"].attention and timed["loss"].focal == 0.5
    auto.time_candidates(fingerprint, {}, 60.0, device="cpu")
    assert not timed["model"].deep_supervision and not timed["model"].attention


def test_plan_and_train_work_unchanged_on_a_never_seen_colour_coded_data_set(tmp_path: Path):
    spec = make_colour_dataset(tmp_path / "colours")
    runner = CliRunner()
    shown = runner.invoke(app, ["plan", str(spec), "--budget", "20s", "--json", str(tmp_path / "plan.json")])
    assert shown.exit_code == 0, shown.output
    assert "Training plan" in shown.output and "6 classes" in shown.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    patch = next(c["value"] for c in plan["choices"] if c["key"] == "data.patch_size")
    assert patch[0] <= 75 and patch[1] <= 101
    precision = next(c for c in plan["choices"] if c["key"] == "precision")  # R14: measured, with the ms
    assert precision["source"] == "plan" and precision["value"] in ("fp32", "bf16") and " ms" in precision["reason"]
    assert plan["estimates"]["compute_mode"]["mode"] in plan["estimates"]["compute_mode"]["ms_per_step"]
    t0 = time.perf_counter()
    out = tmp_path / "run"
    trained = runner.invoke(app, ["train", str(spec), "--budget", "20s", "--out", str(out), "--quiet",
                                  "--lr", "0.003"])
    seconds = time.perf_counter() - t0
    assert trained.exit_code == 0, trained.output
    assert seconds <= 20 * 1.05 + 3.0  # the budget, plus process-level set-up outside the clock
    art = load_artifact(out / "model.unetkit")
    assert len(art.meta.class_names) == 6 and art.meta.model.out_channels == 6
    choices = {c["key"]: c for c in art.meta.plan["choices"]}
    assert choices["optim.lr"]["value"] == 0.003 and choices["optim.lr"]["source"] == "user"
    assert choices["model.base_width"]["source"] == "plan"
    assert art.meta.train_config["model"]["base_width"] == choices["model.base_width"]["value"]
    assert art.meta.metrics["step"] >= 0  # the best validated checkpoint was selected


def test_plan_keeps_the_precision_the_user_set_and_races_only_the_memory_formats(tmp_path: Path):
    spec = make_colour_dataset(tmp_path / "colours", n=4)
    shown = CliRunner().invoke(app, ["plan", str(spec), "--budget", "20s", "--precision", "fp32",
                                     "--json", str(tmp_path / "plan.json")])
    assert shown.exit_code == 0, shown.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    choices = {c["key"]: c for c in plan["choices"]}
    assert choices["precision"]["value"] == "fp32" and choices["precision"]["source"] == "user"
    assert choices["memory_format"]["source"] == "plan"
    assert set(plan["estimates"]["compute_mode"]["ms_per_step"]) <= {"fp32", "fp32+cl"}


@pytest.mark.slow
def test_the_default_plan_learns_a_rare_class_under_one_percent(tmp_path: Path):
    from unetkit.config import TrainConfig, replace
    from unetkit.data.synthetic import make_synthetic_dataset
    from unetkit.planning import apply_plan, make_plan
    from unetkit.planning.throughput import simulated_throughput
    from unetkit.training.fit import fit
    from unetkit.training.prepare import load_training_data

    root = make_synthetic_dataset(tmp_path / "shapes", n_images=12, size=(96, 128), seed=3)
    cfg = replace(TrainConfig(), **{"data.data": str(root), "out_dir": str(tmp_path / "run"), "progress": False})
    data = load_training_data(cfg.data)
    rare = [c for c in data.fingerprint["classes"] if c["pixel_fraction"] < 0.01]
    assert [c["name"] for c in rare] == ["class_3"]
    # plan for a 60 s budget on a simulated single core; train the planned steps (no wall clock,
    # so a loaded machine changes the duration, not the result)
    plan = make_plan(data.fingerprint, simulated_throughput(8.0, 0.01), 60, {}, n_val=len(data.val))
    planned = replace(apply_plan(cfg, plan), budget_seconds=0.0)
    assert planned.loss.class_weights[3] > 1 and planned.data.rare_oversample == 0.5
    art = load_artifact(fit(planned))
    assert art.meta.metrics["iou/class_3"] >= 0.5, art.meta.metrics


def test_pretrain_first_runs_the_planned_pretraining_and_starts_fit_from_it(tmp_path):
    import dataclasses

    from unetkit.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
    from unetkit.data.synthetic import make_synthetic_dataset
    from unetkit.models.unet_encoder import read_unet_encoder
    from unetkit.planning.auto import PRETRAINED_NAME, pretrain_first
    from unetkit.planning.plan import Choice, Plan

    data = make_synthetic_dataset(tmp_path / "data", n_images=4, size=(32, 32), seed=0)
    unlabelled = make_synthetic_dataset(tmp_path / "more", n_images=3, size=(40, 40), seed=1) / "images"
    cfg = TrainConfig(data=DataConfig(data=str(data), patch_size=(32, 32), batch_size=2),
                      augment=AugmentConfig(enabled=False), model=ModelConfig(base_width=4, depth=2),
                      budget_seconds=60.0, out_dir=str(tmp_path / "run"), progress=False)
    assert pretrain_first(cfg, Plan(60.0, ()), unlabelled, log=None) is cfg  # the plan chose none
    plan = Plan(60.0, (Choice("plan.pretrain_objective", "denoise", "test"),), {"pretrain_seconds": 2.0})
    after = pretrain_first(cfg, plan, unlabelled, log=None)
    encoder = tmp_path / "run" / PRETRAINED_NAME
    assert after.finetune.pretrained == str(encoder) and after.budget_seconds < 60.0
    meta = read_unet_encoder(encoder)[1]
    assert meta["pretraining"]["objective"] == "denoise" and meta["architecture"]["base_width"] == 4
    assert meta["pretraining"]["images"] == 3 + 3  # the unlabelled images and the training split's (val kept out)
    assert meta["pretraining"]["resolution"] == 1.0
    half = dataclasses.replace(cfg, out_dir=str(tmp_path / "half"),
                               data=dataclasses.replace(cfg.data, resolution=0.5, patch_size=(16, 16)))
    pretrain_first(half, plan, unlabelled, log=None)  # R18's scale: pretrained where fine-tuning trains
    assert read_unet_encoder(tmp_path / "half" / PRETRAINED_NAME)[1]["pretraining"]["resolution"] == 0.5


def test_a_sampled_validation_split_still_leaves_the_planner_the_true_training_count(tmp_path: Path):
    """`data.val_images` samples the validation split: the plan still counts the split's images as
    validation, not training (it once saw 347 training images in CamVid's 266 / 101 split)."""
    spec = make_colour_dataset(tmp_path / "colours", n=10)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": {"val_images": 2}}))
    shown = CliRunner().invoke(app, ["plan", str(spec), "--budget", "20s", "--val-keys", "s0,s1,s2,s3,s4,s5",
                                     "--config", str(config), "--json", str(tmp_path / "plan.json")])
    assert shown.exit_code == 0, shown.output
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["estimates"]["summary"].startswith("6 classes, 4 train / 6 val images"), plan["estimates"]["summary"]
    assert {c["key"]: c["value"] for c in plan["choices"]}["data.val_images"] == 2


def test_a_teacher_for_other_classes_is_refused_before_the_timing_race(tmp_path: Path, monkeypatch):
    from unetkit.artifact import ArtifactMeta, save_artifact
    from unetkit.config import DataConfig, DistillConfig, ModelConfig, TrainConfig
    from unetkit.errors import ConfigError
    from unetkit.models import build_model
    from unetkit.planning import auto

    monkeypatch.setattr(auto, "time_candidates", lambda *a, **kw: pytest.fail("timed before refusing the teacher"))
    spec = make_colour_dataset(tmp_path / "d")
    model = ModelConfig(in_channels=3, out_channels=2, base_width=4, depth=2)
    teacher = save_artifact(tmp_path / "cells.unetkit", build_model(model),
                            ArtifactMeta(model=model, class_names=("background", "cell"), mean=(0.0,) * 3,
                                         std=(1.0,) * 3, patch_size=(32, 32)))
    config = TrainConfig(data=DataConfig(data=str(spec)), budget_seconds=60.0,
                         distill=DistillConfig(teacher_artifact=str(teacher)), out_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"cells.unetkit: the teacher predicts classes \['background', 'cell'\]"):
        auto.plan_training(config, {"distill.teacher_artifact": str(teacher)}, log=None)
    assert not (tmp_path / "run").exists()
