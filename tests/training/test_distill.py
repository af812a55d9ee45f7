"""Distillation (unetkit.training.distill): a teacher first, then the student learning from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from unetkit.artifact import load_artifact, save_artifact
from unetkit.config import AugmentConfig, DistillConfig, LossConfig, ModelConfig
from unetkit.errors import ConfigError
from unetkit.losses.functional import distillation_loss
from unetkit.losses.losses import DistillationLoss
from unetkit.training import checkpoint as ckpt
from unetkit.training.budget import reserve_seconds
from unetkit.training.distill import TEACHER_DIR, TEACHER_FINAL, TeacherClock, teacher_model
from unetkit.training.fit import fit
from unetkit.training.steps import probability_logits


def test_distillation_loss_is_zero_when_the_student_matches_and_skips_ignored_pixels():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    assert float(distillation_loss(teacher.clone(), teacher, labels)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 3, 8, 8)
    assert float(distillation_loss(student, teacher, labels)) > 0
    ignored = labels.clone()
    ignored[0] = 255  # the first image ignored entirely: only the second counts
    only_second = distillation_loss(student[1:], teacher[1:], labels[1:], temperature=3.0)
    assert float(distillation_loss(student, teacher, ignored, temperature=3.0)) == pytest.approx(float(only_second))
    loss = DistillationLoss(LossConfig(dice=0.0), DistillConfig(weight=0.25))
    student.requires_grad_(True)
    total = loss(student, labels, teacher)
    terms = loss.last_terms
    assert float(total.detach()) == pytest.approx(0.75 * terms["ce"] + 0.25 * terms["distill"], rel=1e-5)
    total.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert "distill" not in (loss(student, labels), loss.last_terms)[1]  # no teacher: the label loss alone


@pytest.mark.parametrize("share", [0.5, 0.3])
def test_the_teacher_and_student_split_what_is_left_after_both_ends(share):
    clock = TeacherClock(600.0, end_passes=1.0, student_passes=9.0, student_share=1.0 - share)
    clock.val_seconds, clock.save_seconds = 25.0, 0.2  # a slow machine: the ends are 10 passes
    ends = reserve_seconds(25.0, 10.0, save_seconds=0.2, budget=600.0)
    teacher_training = clock.budget - clock.reserve()
    student_training = clock.reserve() - ends
    assert teacher_training == pytest.approx(share * (600.0 - ends))
    assert student_training == pytest.approx((1.0 - share) * (600.0 - ends))


def test_teacher_levers():
    student = ModelConfig(base_width=16, norm="batch")
    assert teacher_model(student, "instance") == ModelConfig(base_width=16, norm="instance")
    assert teacher_model(student, "wider").base_width == 24
    with pytest.raises(ConfigError, match="distill.teacher"):
        teacher_model(student, "ensemble")


def test_fit_distils_a_teacher_into_the_student_and_records_both(tiny_config) -> None:
    cfg = tiny_config(steps=6, val_every=3, distill=DistillConfig(mode="on", teacher="instance"),
                      augment=AugmentConfig(p=1.0))  # the cached targets are warped with each patch
    path = fit(cfg)
    art = load_artifact(path)
    record = art.meta.metrics["distillation"]
    assert record["teacher"]["lever"] == "instance" and record["teacher"]["model"].endswith("instance")
    assert record["student"]["model"].endswith("batch") and art.meta.model.norm == "batch"
    assert record["teacher"]["steps"] == record["student"]["steps"] == 6  # no budget: the same steps each
    for side in ("teacher", "student"):
        assert 0.0 <= record[side]["mean_dice_foreground"] <= 1.0
    assert record["reason"].startswith("set explicitly")
    taught = record["teacher"]["targets"]  # the default: the teacher's probabilities, computed once
    assert taught["kind"] == "cached" and taught["images"] > 0
    # it teaches as it scores best on the validation images: TTA views averaged, or plainly
    scores = taught["scores"]
    assert taught["views"] == ("dihedral" if scores["tta"] >= scores["plain"] else "none")
    assert taught["as_it_teaches"]["mean_dice_foreground"] == max(scores.values())
    teacher_dir = path.parent / TEACHER_DIR
    assert (teacher_dir / TEACHER_FINAL).is_file()
    events = (path.parent / "metrics.jsonl").read_text()
    assert '"loss_distill"' in events  # the student's steps had the soft-target term
    # resume: the finished teacher is loaded, not trained again
    before = (teacher_dir / "metrics.jsonl").stat().st_mtime_ns
    saved = ckpt.load_checkpoint(teacher_dir / TEACHER_FINAL)
    fit(tiny_config(steps=6, val_every=3, resume=True, distill=DistillConfig(mode="on"), augment=AugmentConfig(p=1.0)))
    assert (teacher_dir / "metrics.jsonl").stat().st_mtime_ns == before
    assert ckpt.load_checkpoint(teacher_dir / TEACHER_FINAL)["record"] == saved["record"]


def test_cached_probabilities_teach_as_the_teachers_logits_do():
    torch.manual_seed(1)
    teacher, student = torch.randn(2, 3, 8, 8) * 4, torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    cached = probability_logits(torch.softmax(teacher, 1).half())  # as the sampler hands them on
    for temperature in (1.0, 2.0):
        assert float(distillation_loss(student, cached, labels, temperature=temperature)) == pytest.approx(
            float(distillation_loss(student, teacher, labels, temperature=temperature)), rel=2e-3, abs=1e-4)


def test_online_teaching_when_asked_or_when_the_targets_would_not_fit(tiny_config, monkeypatch) -> None:
    from unetkit.training import distill
    from unetkit.training.prepare import load_training_data

    data = load_training_data(tiny_config().data)
    assert distill.targets_choice(tiny_config(distill=DistillConfig(mode="on")), data) == (True, "cached")
    online, why = distill.targets_choice(tiny_config(distill=DistillConfig(mode="on", targets="online")), data)
    assert not online and "as configured" in why
    monkeypatch.setattr(distill, "MAX_TARGET_BYTES", 1000)
    online, why = distill.targets_choice(tiny_config(distill=DistillConfig(mode="on")), data)
    assert not online and "GiB" in why
    path = fit(tiny_config(steps=4, val_every=2, distill=DistillConfig(mode="on")))
    record = load_artifact(path).meta.metrics["distillation"]["teacher"]["targets"]
    assert record["kind"] == "online" and "GiB" in record["reason"]
    assert '"loss_distill"' in (path.parent / "metrics.jsonl").read_text()


def test_distillation_refuses_an_ensemble_student(tiny_config) -> None:
    with pytest.raises(ConfigError, match="ensemble_folds"):
        fit(tiny_config(ensemble_folds=2, distill=DistillConfig(mode="on")))


def test_distillation_refuses_a_teacher_that_is_the_student_and_nothing_is_written(tiny_config, tmp_path) -> None:
    config = tiny_config(distill=DistillConfig(mode="on", teacher="instance"))
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, norm="instance"))
    with pytest.raises(ConfigError, match="distill.teacher: 'instance' would train the student's own network"):
        fit(config)
    assert not (Path(config.out_dir) / TEACHER_DIR).exists()
    assert not (Path(config.out_dir) / "model.unetkit").exists()


def test_the_teacher_settles_its_own_compute_mode_unless_the_user_fixed_it(tiny_config) -> None:
    from unetkit.training.fit import measured_mode_keys

    def planned(source: str) -> dict:
        return {"choices": [{"key": k, "value": v, "reason": "", "source": source}
                            for k, v in (("precision", "fp32"), ("memory_format", "channels_last"))]}

    # the plan's race was run on the student's network: its choice is not the teacher's
    assert measured_mode_keys(tiny_config(memory_format="channels_last", plan=planned("plan"))) == {
        "precision": "auto", "memory_format": "auto"}
    assert measured_mode_keys(tiny_config(memory_format="channels_last", plan=planned("user"))) == {}
    assert measured_mode_keys(tiny_config(precision="auto")) == {"precision": "auto"}
    assert measured_mode_keys(tiny_config()) == {}  # fixed in a config without a plan: the user's

    cfg = tiny_config(steps=6, val_every=3, memory_format="channels_last", plan=planned("plan"),
                      distill=DistillConfig(mode="on", teacher="instance"))
    path = fit(cfg)
    record = load_artifact(path).meta.metrics["distillation"]
    # the student keeps the plan's fp32+cl; the teacher's own decision (6 steps: too short to probe) is fp32
    assert record["teacher"]["mode"] == "fp32"
    assert '"mode": "fp32+cl"' in (path.parent / "metrics.jsonl").read_text()
    assert '"mode": "fp32",' in (path.parent / TEACHER_DIR / "metrics.jsonl").read_text()
    fixed = fit(tiny_config(out="fixed", steps=6, val_every=3, memory_format="channels_last",
                            distill=DistillConfig(mode="on")))
    assert load_artifact(fixed).meta.metrics["distillation"]["teacher"]["mode"] == "fp32+cl"


def _constant_teacher(path: Path, source: Path, label: int) -> Path:
    """`source`'s artifact with its head biased to say `label` everywhere: a teacher whose soft targets are
    far from the labels, so what the student learns shows where it learned it."""
    art = load_artifact(source)
    state = {k: v.clone() for k, v in art.state_dict.items()}
    bias = next(k for k in state if k.endswith("head.conv.bias"))
    state[bias][label] += 30.0
    return save_artifact(path, state, art.meta)


def test_a_teacher_artifact_teaches_without_a_teacher_being_trained(tiny_config, tmp_path) -> None:
    from unetkit.data.io import file_sha256
    from unetkit.inference.predict import predict_image
    from unetkit.training.prepare import load_training_data

    source = fit(tiny_config(out="source", steps=4, val_every=4))
    teacher = _constant_teacher(tmp_path / "teacher.unetkit", source, label=2)
    # "auto" without a plan: on, because a teacher artifact is given; only the soft targets teach (weight 1)
    cfg = tiny_config(out="student", steps=30, val_every=15, calibrate=False, tune_postprocess="off",
                      distill=DistillConfig(teacher_artifact=str(teacher), weight=1.0, temperature=1.0))
    path = fit(cfg)
    art = load_artifact(path)
    record = art.meta.metrics["distillation"]
    assert not (path.parent / TEACHER_DIR).exists()  # nothing was trained for the teacher
    assert record["teacher"]["sha256"] == art.meta.lineage["teacher_sha256"] == file_sha256(teacher)
    assert record["teacher"]["artifact"] == str(teacher) and record["student"]["steps"] == 30
    taught = record["teacher"]["targets"]
    assert taught["kind"] == "cached" and taught["images"] > 0
    assert record["teacher"]["mean_dice_foreground"] == taught["scores"]["plain"]
    assert '"loss_distill"' in (path.parent / "metrics.jsonl").read_text()
    # the student says what the teacher said, not what the labels say
    data = load_training_data(cfg.data)
    said = [predict_image(art, s.image).argmax(0) for s in data.val]
    assert np.mean([np.mean(p == 2) for p in said]) > 0.9
    assert np.mean([np.mean(s.labels == 2) for s in data.val]) < 0.5


@pytest.mark.parametrize("change, match", [
    ("classes", r"the teacher predicts classes \['background', 'a'\], the data has"),
    ("channels", r"teacher.unetkit: the model takes \d input channel\(s\), the data's images have"),
    ("off", "distillation is off"),
    ("missing", "model artifact not found"),
])
def test_a_teacher_artifact_that_cannot_teach_is_refused_before_anything_is_written(tiny_config, tmp_path, change,
                                                                                    match) -> None:
    source = fit(tiny_config(out="source", steps=2, val_every=2, calibrate=False, tune_postprocess="off"))
    meta = load_artifact(source).meta
    teacher = tmp_path / "teacher.unetkit"
    if change == "classes":
        art = load_artifact(source)
        state = art.state_dict
        head = [k for k in state if k.startswith("head.")]
        state = {k: (v[:2] if k in head else v) for k, v in state.items()}
        save_artifact(teacher, state, dataclasses.replace(
            meta, class_names=("background", "a"), class_colors=meta.class_colors[:2],
            model=dataclasses.replace(meta.model, out_channels=2)))
    elif change == "channels":
        from unetkit.models import build_model

        channels = meta.model.in_channels + 1
        model = dataclasses.replace(meta.model, in_channels=channels)
        save_artifact(teacher, build_model(model), dataclasses.replace(meta, model=model, mean=(0.0,) * channels,
                                                                         std=(1.0,) * channels))
    elif change != "missing":
        teacher = source
    mode = "off" if change == "off" else "auto"
    cfg = tiny_config(out="student", distill=DistillConfig(mode=mode, teacher_artifact=str(teacher)))
    with pytest.raises(ConfigError, match=match):
        fit(cfg)
    assert not Path(cfg.out_dir).exists()



def test_a_k_fold_ensemble_teaches_one_fast_student(tiny_config) -> None:
    ensemble = fit(tiny_config(out="ensemble", steps=3, val_every=3, ensemble_folds=2, calibrate=False,
                               tune_postprocess="off"))
    assert load_artifact(ensemble).meta.model.ensemble == 2
    path = fit(tiny_config(out="student", steps=3, val_every=3, distill=DistillConfig(teacher_artifact=str(ensemble))))
    art = load_artifact(path)
    teacher = art.meta.metrics["distillation"]["teacher"]
    assert art.meta.model.ensemble == 1 and teacher["model"].endswith("x2")
    assert teacher["targets"]["kind"] == "cached" and teacher["targets"]["images"] > 0


def test_a_teacher_artifact_does_not_teach_online(tiny_config, tmp_path) -> None:
    source = fit(tiny_config(out="source", steps=2, val_every=2, calibrate=False, tune_postprocess="off"))
    cfg = tiny_config(out="student", distill=DistillConfig(teacher_artifact=str(source), targets="online"))
    with pytest.raises(ConfigError, match="a teacher artifact teaches from cached probabilities; online as configured"):
        fit(cfg)
    assert not Path(cfg.out_dir).exists()
