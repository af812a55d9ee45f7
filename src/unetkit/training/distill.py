"""Distillation (plan rule R17): a more accurate teacher first, then the fast student learns from it.

The accuracy levers measured on DRIVE cost inference time: InstanceNorm (+0.004..0.006 F1, but
1.2x slower fp32 and 2x int8 inference: it does not fold into the convolutions), a wider network,
k-fold ensembles (k forward passes). Distillation spends training time instead: the teacher
(`DistillConfig.teacher`: "instance" = the student's network with InstanceNorm, "wider" = 1.5x its
width) trains first on `teacher_share` of the budget, in `out_dir/teacher/`; then the student (the
configured network, BatchNorm: what the artifact holds and inference pays for) trains on the rest
with `DistillationLoss`: (1 - weight) x its label loss + weight x T^2 x KL(teacher || student) on
each batch.

How the teacher teaches (`DistillConfig.targets`):
- "cached" (default): once the teacher is trained, `teacher_targets` predicts every training image
  whole, averaging the TTA views (8, or 2 for a model trained upright) when they score better on the
  validation images: a lever that costs inference time, here paid once. The sampler crops these probabilities with each patch and the augmenter warps
  them with the image, so a student step costs what a plain step does. The teacher's validation score
  "as it teaches" (with the views) is recorded beside its plain one.
- "online": the teacher's logits on each augmented batch, a forward pass per step. Measured on DRIVE
  w16 d4 (AVX512-BF16 EPYC, 2 cores, three runs): 408 ms per student step against 222 ms plain, so the
  student got half the plain run's steps (docs/benchmarks.md, 2026-12-02 23:16).
  Also the fallback when the cached probabilities would exceed `MAX_TARGET_BYTES` of memory.

A trained model artifact can teach instead (`DistillConfig.teacher_artifact`, `unetkit train
--distill-from MODEL`): a k-fold ensemble, an InstanceNorm or wider model, one trained on a bigger
machine. Nothing is trained for it: it must predict the student's classes from the same channels, and
it teaches from cached probabilities, as it predicts (its own normalization, resolution and TTA views;
averaged views only where they score better on the validation images); the student gets the whole
budget, and the artifact's lineage records the teacher's sha256.

Both keep their best checkpoint on the same validation split, so the artifact's
`metrics["distillation"]` records the teacher's and the student's validation scores side by side
(and the teacher's run, steps and lever). A finished teacher leaves `teacher-final.pt`: `resume`
skips it and continues the student.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetkit.artifact import ARTIFACT_NAME, Artifact, ArtifactMeta, load_artifact, read_meta
from unetkit.config import ModelConfig, TileConfig, TrainConfig, to_dict
from unetkit.data.io import file_sha256
from unetkit.errors import ArtifactError, ConfigError
from unetkit.inference.backends import make_predictor
from unetkit.inference.files import tile_config_for, trained_views
from unetkit.inference.predict import Predictor, predict_tiled, tta_views
from unetkit.metrics.summary import evaluate_samples
from unetkit.models import build_model
from unetkit.training import checkpoint as ckpt
from unetkit.training.budget import BudgetClock, reserve_seconds
from unetkit.training.finetune import check_inputs
from unetkit.training.finish import end_passes, save_final_artifact
from unetkit.training.loop import SELECTION_METRIC, flat_metrics, torch_predictor
from unetkit.training.precision import config_mode
from unetkit.training.prepare import TrainingData
from unetkit.training.runlog import Callback
from unetkit.training.selection import select_weights
from unetkit.training.steps import log_time, run_steps

MAX_TARGET_BYTES = 4 << 30  # cached targets: float16 (K, H, W) per training image, at most this in memory
TEACHER_DIR = "teacher"
TEACHER_FINAL = "teacher-final.pt"
WIDER = 1.5  # the "wider" teacher's width over the student's


@dataclass
class TeacherClock(BudgetClock):
    """The teacher's clock over all the time left (`budget`): it also keeps the student's end work
    (`student_passes` validation passes, timed by the teacher's own validations) and the student's
    share of the rest, so both trainings split what is left after every end, whatever a validation
    costs on this machine at this load."""

    student_passes: float = 0.0
    student_share: float = 0.5

    def reserve(self) -> float:
        ends = reserve_seconds(self.val_seconds, self.end_passes + self.student_passes,
                               save_seconds=self.save_seconds, budget=self.budget, end_seconds=self.end_seconds)
        return ends + self.student_share * max(0.0, self.budget - ends)


def teacher_model(student: ModelConfig, lever: str) -> ModelConfig:
    """The teacher's network for an accuracy lever: the student's with InstanceNorm, or 1.5x wider."""
    if lever == "instance":
        return dataclasses.replace(student, norm="instance")
    if lever == "wider":
        return dataclasses.replace(student, base_width=max(student.base_width + 8,
                                                           round(WIDER * student.base_width / 8) * 8))
    raise ConfigError(f"distill.teacher: expected 'instance' or 'wider', got {lever!r}")


def read_teacher(config: TrainConfig) -> ArtifactMeta | None:
    """The teacher artifact's metadata (verified), before any data is read; None without one."""
    path = config.distill.teacher_artifact
    if not path:
        return None
    if config.distill.mode == "off":
        raise ConfigError(f"--distill-from {path}: distillation is off (distill.mode off); drop one of the two")
    try:
        return read_meta(path)
    except ArtifactError as e:
        raise ConfigError(f"--distill-from: {e}") from None


def check_teacher(meta: ArtifactMeta, config: TrainConfig, data: TrainingData) -> None:
    """Refuse a teacher artifact that cannot teach this data, before anything is written: other classes
    (names and order), input channels or spatial dims, or probabilities that cannot be cached."""
    path = config.distill.teacher_artifact
    if tuple(meta.class_names) != tuple(data.class_names):
        raise ConfigError(f"--distill-from {path}: the teacher predicts classes {list(meta.class_names)}, the data "
                          f"has {list(data.class_names)}; a teacher must predict the student's classes, in order")
    check_inputs(meta.model, f"--distill-from {path}", data.in_channels, data.train[0].image.ndim - 1)
    cached, why = targets_choice(config, data)
    if not cached:
        raise ConfigError(f"--distill-from {path}: a teacher artifact teaches from cached probabilities; {why} "
                          "(distill.targets)")


def check_distill(config: TrainConfig, world_size: int) -> None:
    d = config.distill
    if not 0.0 < d.teacher_share < 1.0:
        raise ConfigError(f"distill.teacher_share: expected a fraction between 0 and 1, got {d.teacher_share}")
    if not 0.0 <= d.weight <= 1.0:
        raise ConfigError(f"distill.weight: expected a value in [0, 1], got {d.weight}")
    if d.temperature <= 0:
        raise ConfigError(f"distill.temperature: expected a positive number, got {d.temperature}")
    if config.ensemble_folds > 1:
        raise ConfigError("distill: the student is one fast network; set ensemble_folds 1 (or distill.mode off)")
    if d.teacher == "instance" and config.model.norm == "instance" and not d.teacher_artifact:
        raise ConfigError("distill.teacher: 'instance' would train the student's own network (model.norm is already "
                          "instance); use distill.teacher 'wider', or model.norm batch for the fast student")
    if world_size > 1:
        raise ConfigError("distill: not supported with nproc > 1 yet; use nproc 1 (or distill.mode off)")


def teacher_config(config: TrainConfig, **changes: Any) -> TrainConfig:
    """The teacher's run: the lever's network in `out_dir/teacher/`, not distilled itself; `changes`
    e.g. precision/memory_format "auto", so that its compute mode is measured on its own network."""
    folder = Path(config.out_dir) / TEACHER_DIR
    return dataclasses.replace(config, out_dir=str(folder), model=teacher_model(config.model, config.distill.teacher),
                               distill=dataclasses.replace(config.distill, mode="off"),
                               resume=config.resume and (folder / ckpt.LAST).is_file(), **changes)


def fit_distilled(config: TrainConfig, data: TrainingData, env: Any, device: torch.device, clock: BudgetClock,
                  callbacks: Sequence[Callback], mode_info: dict[str, Any] | None = None,
                  teacher: tuple[TrainConfig, dict[str, Any]] | None = None) -> Path:
    """Train the teacher, then the student distilled from it; save the student as `out_dir/model.unetkit`.
    `teacher`: its config (`teacher_config`) with its compute mode settled, and why; default: the
    student's mode. The teacher computes in its own mode while it trains and while it teaches: a mode
    fast for the student's layers can be a slow path for the teacher's (InstanceNorm under bf16 +
    channels_last: 544 ms per step of w16 d4 128x128 b8 on one core, against 183 ms in bf16 NCHW and
    145 ms for the BatchNorm student in bf16 + channels_last, AVX512-BF16 EPYC; since GroupNorm takes
    channels_last input through a contiguous copy, bf16 + channels_last is InstanceNorm's fastest mode too:
    217 ms against 233 ms in bf16 NCHW and BatchNorm's 183 ms, two Zen 4 cores)."""
    check_distill(config, env.world_size)
    out_dir = Path(config.out_dir)
    passes = end_passes(config, len(data.train), len(data.val))
    cached, why = targets_choice(config, data)
    lineage: dict[str, Any] = {}
    network, t_mode = None, None
    if config.distill.teacher_artifact:  # a trained model teaches (checked by fit): the budget is the student's
        clock.end_passes = passes
        teacher_art = load_teacher(config.distill.teacher_artifact)
        record = {"teacher": artifact_record(teacher_art)}
        lineage["teacher_sha256"] = record["teacher"]["sha256"]
        predictor: Predictor = make_predictor(teacher_art, "torch")
        tile = tile_config_for(teacher_art, {"tta": True})
    else:
        t_config, t_info = teacher or (teacher_config(config), mode_info or {})
        teaching = target_passes(t_config, data) if cached else 0.0
        network, record = train_teacher(config, t_config, data, env, device, clock, passes + teaching, callbacks,
                                        t_info)
        clock.end_passes = passes
        t_mode = config_mode(t_config, device)
        predictor, tile = torch_predictor(network.eval(), data.mean, data.std, device, t_mode), teacher_tile(t_config)
    targets = None
    if cached:
        if config.progress and env.is_main:
            who = (f"{record['teacher']['artifact']} ({record['teacher']['model']})" if config.distill.teacher_artifact
                   else "the teacher")
            print(f"distillation: {who} predicts the {len(data.train)} training images (its soft targets)")
        targets, record["teacher"]["targets"] = teacher_targets(predictor, tile, data, config.loss.ignore_index)
        if config.distill.teacher_artifact:  # its score on this run's validation images, as it predicts plainly
            record["teacher"][SELECTION_METRIC] = record["teacher"]["targets"].get("scores", {}).get("plain")
    else:
        record["teacher"]["targets"] = {"kind": "online", "reason": why}
    student_resume = config.resume and (out_dir / ckpt.LAST).is_file()
    model, state, log = run_steps(dataclasses.replace(config, resume=student_resume), data, env, device, clock,
                                  out_dir, callbacks, mode_info, teacher=None if cached else network,
                                  teacher_mode=t_mode, targets=targets)
    artifact_path = out_dir / ARTIFACT_NAME
    distillation = {**record, "student": {"model": _model_label(config.model), "steps": state.step,
                                          "best_step": state.best_step, SELECTION_METRIC: state.best_metric},
                    "temperature": config.distill.temperature, "weight": config.distill.weight,
                    "reason": _plan_reason(config.plan)}
    if env.is_main:
        save_final_artifact(artifact_path, model, data, config, state, extra_metrics={"distillation": distillation},
                            extra_lineage=lineage, clock=clock)
        log.write({"event": "end", "step": state.step, "time": log_time(state, clock), "artifact": str(artifact_path),
                   "best": state.best_metric, "best_step": state.best_step,
                   "teacher_best": record["teacher"].get(SELECTION_METRIC)})
    log.close()
    return artifact_path


def targets_choice(config: TrainConfig, data: TrainingData) -> tuple[bool, str]:
    """(cache the teacher's probabilities?, why): as configured, unless they would not fit in memory."""
    if config.distill.targets == "online":
        return False, "online as configured (distill.targets)"
    k = len(data.class_names)
    size = sum(2 * k * s.labels.size for s in data.train)  # float16
    if size > MAX_TARGET_BYTES:
        return False, (f"online: the cached probabilities would take {size / 2**30:.1f} GiB, over "
                       f"{MAX_TARGET_BYTES / 2**30:.0f} GiB")
    return True, "cached"


def teacher_tile(cfg: TrainConfig) -> TileConfig:
    """How the teacher predicts what it teaches: whole images tiled at its patch size, the TTA views
    its training showed it averaged."""
    return TileConfig(tile_size=tuple(cfg.data.patch_size), tta=True, tta_views=trained_views(to_dict(cfg)),
                      resolution=cfg.data.resolution)


def target_passes(cfg: TrainConfig, data: TrainingData) -> float:
    """The most `teacher_targets` costs, in validation passes (for the budget): the validation
    images plainly and with every view, then every view of every training image."""
    if not data.val:
        return 0.0
    views = len(tta_views(teacher_tile(cfg)))
    return 1 + views + views * len(data.train) / len(data.val)


def load_teacher(path: str) -> Artifact:
    """The teacher artifact (verified; an unreadable one is a ConfigError naming --distill-from)."""
    try:
        return load_artifact(path)
    except ArtifactError as e:
        raise ConfigError(f"--distill-from: {e}") from None


def artifact_record(art: Artifact) -> dict[str, Any]:
    """What the student's artifact records of a teacher artifact."""
    m = art.meta.model
    return {"artifact": str(art.path), "sha256": file_sha256(Path(art.path)), "name": art.meta.name,
            "model": f"{m.arch} {_model_label(m)}" + (f" x{m.ensemble}" if m.ensemble > 1 else ""),
            "steps": art.meta.lineage.get("steps"), "its_validation": {
                k: art.meta.metrics.get(k) for k in (SELECTION_METRIC, "mean_iou") if k in art.meta.metrics}}


@torch.no_grad()
def teacher_targets(predictor: Predictor, tile: TileConfig, data: TrainingData,
                    ignore_index: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The teacher's probabilities `(K, H, W)` float16 on each training image and their record;
    `predictor` takes raw images, `tile` is how it predicts with its TTA views on.

    The teacher teaches as it scores best on the validation images: with its TTA views averaged
    (`tile`) when that scores at least as well as its plain prediction, else plainly (TTA
    cost ISBI 2012 Dice, docs/benchmarks.md; plain teaching is also `views` times cheaper). The
    record has both scores, the choice and the seconds; without validation images, the views."""
    t0 = time.perf_counter()

    def probabilities(image: np.ndarray, how: TileConfig) -> np.ndarray:
        return predict_tiled(predictor, np.asarray(image, np.float32), how)

    record: dict[str, Any] = {"kind": "cached", "views": tile.tta_views}
    if data.val:
        scores = {}
        for name, how in (("plain", dataclasses.replace(tile, tta=False)), ("tta", tile)):
            summary = evaluate_samples(lambda image, how=how: probabilities(image, how).argmax(0), data.val,
                                       data.class_names, ignore_index)
            scores[name] = flat_metrics(summary)[SELECTION_METRIC]
        if (scores["tta"] or 0.0) < (scores["plain"] or 0.0):
            tile, record["views"] = dataclasses.replace(tile, tta=False), "none"
        record["as_it_teaches"] = {SELECTION_METRIC: scores["tta" if tile.tta else "plain"]}
        record["scores"] = scores
    targets = [probabilities(s.image, tile).astype(np.float16) for s in data.train]
    record["images"] = len(targets)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return targets, record


def train_teacher(config: TrainConfig, cfg: TrainConfig, data: TrainingData, env: Any, device: torch.device,
                  clock: BudgetClock, passes: float, callbacks: Sequence[Callback],
                  mode_info: dict[str, Any] | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The teacher's best weights (trained per `cfg` in `out_dir/teacher/` on its share of the
    budget, or loaded when a resumed run finished it) and its record for the artifact."""
    folder = Path(cfg.out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lever = config.distill.teacher
    final = folder / TEACHER_FINAL
    if config.resume and final.is_file():
        saved = ckpt.load_checkpoint(final)
    else:
        left = max(1.0, clock.seconds_left()) if clock.enabled else 0.0
        cfg = dataclasses.replace(cfg, budget_seconds=left)
        if config.progress and env.is_main:
            print(f"distillation: training the teacher ({lever}: {_model_label(cfg.model)})"
                  + (f", {config.distill.teacher_share:.0%} of the {left / 60:.1f} min left" if left else ""))
        # the teacher's end is its final validation; its clock keeps the student's end and share too
        teacher_clock = TeacherClock(left, end_passes=1.0, student_passes=passes, end_seconds=clock.end_seconds,
                                     time_end=clock.time_end,
                                     student_share=1.0 - config.distill.teacher_share)
        network, state, log = run_steps(cfg, data, env, device, teacher_clock, folder, callbacks, mode_info)
        clock.val_seconds = max(clock.val_seconds, teacher_clock.val_seconds)
        kept = select_weights(folder, state, network)
        record = {"teacher": {"lever": lever, "model": _model_label(cfg.model), "steps": state.step,
                              "mode": config_mode(cfg, device).name, "best_step": state.best_step,
                              "kept_step": kept.step, SELECTION_METRIC: kept.metrics.get(SELECTION_METRIC),
                              "checkpoint": kept.record["reason"], "seconds": round(teacher_clock.elapsed(), 1)}}
        log.write({"event": "end", "step": state.step, "time": teacher_clock.elapsed(),
                   "best": state.best_metric, "best_step": state.best_step, "kept_step": kept.step})
        log.close()
        saved = {"model": kept.weights, "record": record}
        ckpt.save_checkpoint(final, saved)
    teacher = build_model(cfg.model)
    teacher.load_state_dict(saved["model"], strict=True)
    return teacher, saved["record"]


def _model_label(m: ModelConfig) -> str:
    return f"w{m.base_width} d{m.depth} {m.norm}"


def _plan_reason(plan: dict[str, Any]) -> str:
    for choice in plan.get("choices", []):
        if choice.get("key") == "distill.mode":
            return str(choice.get("reason", ""))
    return "set explicitly" if plan else "set explicitly (no plan)"
