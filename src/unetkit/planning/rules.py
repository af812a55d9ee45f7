"""The planner: data fingerprint + this machine's throughput + a budget -> a training plan.

`make_plan(fingerprint, throughput, budget_seconds, overrides) -> Plan` is a pure function: the
fingerprint is `unetkit.data.fingerprint.fingerprint`'s dict, `throughput(candidate)` gives seconds
per optimizer step (measured, simulated or tabulated, see `unetkit.planning.throughput`), and
`overrides` maps dotted TrainConfig keys the user set explicitly (flags, config file) to their
values: those always win, and the remaining choices are planned around them. No rule knows any data
set by name; every rule reads only the fingerprint, the budget and the timings.

The rules, in the order they apply:

R1 Step target. Optimisation needs steps more than capacity at these budgets: the plan wants at
   least `min_steps(budget) = 2000 * sqrt(budget / 10 min)` steps (clamped to 300..20000), so a
   longer budget buys both more steps and a bigger model, and a tiny budget a small model. (At
   1500, DRIVE's 10-minute plan took a w24 model for 1,530 steps and ended at F1 0.813, still
   rising; w16 models given 1,800-2,800 steps in the same 10 minutes reached 0.820.)
R2 Model ladder. Candidates come from `LADDER`, (width, depth, patch, batch) rungs ordered by cost,
   each adapted to the data (R3, R4). The plan takes the most expensive rung whose planned steps
   (training seconds / seconds per step) still reach the step target; if none does, the cheapest.
   Faster machines (more cores, a GPU) time every rung faster, so they climb higher: wider, deeper,
   larger patches, more steps, all within the same budget.
R3 Patch fits the image. A patch side is never larger than the median image side (the sampler pads
   smaller images), and pixels per step are kept by changing the batch (to the nearest of 2, 4, 6,
   8, 12, 16, 24, 32) when a patch changes. Patches are multiples of 16, at least 64 (or the image).
R4 Object scale. Big objects (90th percentile object side > half the patch) use 1.5x patches
   with a smaller batch (context), within R3. Thin structures (a minority class whose pixels
   mostly vanish after one erosion, erosion_survival < 0.5, or a long network a few pixels wide:
   mean_border_distance < 3 px and sqrt(90th-percentile object size) > 10x that distance) keep
   the rung's patch: 3/4-size patches with a larger batch were tried on DRIVE and learned slower
   (validation F1 0.77 vs 0.80 for 128x128 patches after one minute, docs/benchmarks.md).
R5 Loss. Dice + cross-entropy. clDice (weight 0.5) is added for thin structures (topology of
   vessels/membranes) when they are foreground classes (index >= 1: the classes clDice scores). Rare classes (< 1 % of labelled pixels) get class-weighted CE with
   w_k = clip(sqrt(1 / (K f_k)), 1, 10) (1 for balanced classes); Dice excludes the background
   (class 0) when it is the majority class, so the tiny foreground is not swamped by its easy Dice.
R6 Sampling. A fraction of patches is centred on a rare-class pixel (or a foreground pixel when no
   class is rare): 0.5 with a rare class; 0.2 when the foreground is the majority; 0.5 with thin
   structures; 0.33 otherwise.
R7 Augmentation. Flips and rot90 always; rotation 15 deg and scale 0.85-1.15, except for thin
   structures: their width (1-3 px) is the signal, and bilinear resampling of a rotated or scaled
   patch blurs it while the nearest-neighbour label stays sharp, so they get only the lossless
   flips and rot90 (DRIVE: validation F1 0.78 after one minute vs 0.58-0.77 with resampling);
   mild brightness/contrast/gamma/noise (per-channel normalisation already removes gross
   intensity differences); probability 0.5 below 200 training images, 0.3 above; elastic
   deformation off (costly on CPUs).
R8 Optimiser. AdamW, lr 1e-3 * sqrt(batch / 8) clamped to 5e-4..2e-3 (2e-3 made DRIVE's
   validation F1 swing by 0.03-0.13 between validations), weight decay 1e-4, linear
   warm-up over 3 % of the steps (20..500), cosine decay to 1 % -- the schedule's length is
   re-fitted to the budget during training by `unetkit.training.budget`. No weight averaging
   (`optim.ema_decay` 0): at equal steps on DRIVE it changed F1 by -0.001 and AUC by +0.001.
R9 Normalisation layers. BatchNorm at batch >= 4, InstanceNorm below (noisy batch statistics).
   BatchNorm folds into the convolutions at export; InstanceNorm cannot, and makes a tile's output
   depend on the tile. On DRIVE InstanceNorm gained F1 +0.000..0.006 and AUC +0.001..0.004 but made
   ORT inference 1.2x slower in fp32 and 2x in int8 (docs/benchmarks.md), so inference speed wins
   the default; `model.norm: instance` in a config file trades it for the accuracy.
R10 Validation. Whole-image validation costs ~forward time on the validation pixels (tiled with
   25 % overlap); the plan validates 2..20 times, spending about 8 % of the budget on it, and keeps
   the best checkpoint on the validation Dice.
R11 Time. Steps = (budget - 3 % reserve - validation time) / seconds per step; fit re-measures the
   step time during the run and re-fits the step count so the run ends within the budget.
R12 Ensembling (k-fold). Only once the largest ladder rung reaches the step target (a bigger model
   is the better use of time until then): the most folds, 5 down to 2, for which each member
   reaches the step target (R1) of its share of the budget (what is left after the ensemble's end
   work, k x ~4 validation passes), with at least 2 training images per fold. Member i trains on the
   other folds and keeps its best checkpoint on fold i; the artifact averages the members'
   probabilities (`unetkit.training.ensemble`). Steps and validation cadence are then per member.
R13 Postprocessing. At the end of training the artifact's postprocessing is tuned on the validation
   split (greedy, kept only where it strictly helps: `unetkit.inference.postprocess`). Objects that
   touch through a thin background (a foreground class with >= 10 objects per image while class 0
   is a thin network: cells and membranes) are scored as objects -- 1 - adapted Rand error, which
   adds the watershed split, with at most 0.005 Dice given up; everything else by pooled Dice.
   On ISBI 2012 the split took the Rand error of one model from 0.121 to 0.037 (tuned leaving the
   scored slice out; docs/benchmarks.md).
R15 Distillation. The accuracy levers (InstanceNorm: F1 +0.004..0.006 on DRIVE at equal steps, but
   1.2x slower fp32 and 2x int8 inference, R9; a two-model ensemble: +0.0007) cost inference time,
   so the best measured one, InstanceNorm, is trained as a teacher on half the budget and distilled
   into the fast BatchNorm student on the other half (`unetkit.training.distill`). Planned only when
   no ensemble is (R12) and the student, in its half with the teacher's forward pass on each batch
   (~1/3 of a step), still reaches the step target of the whole budget (R1): halving the steps
   costs more than the teacher gives until steps stop being the bottleneck. Steps and validations
   are then the student's.
R14 Compute mode. The autocast precision (fp32 or bf16) and memory format (NCHW or channels_last)
   the candidates were timed fastest in, among the modes that passed the health check over their
   probe steps (`unetkit.planning.throughput.measure_throughput`); the reason lists the measured
   ms/step of every mode. Timed by a real run only: with a simulated throughput no mode is planned
   and fit decides (`unetkit.training.precision`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unetkit.config import DistillConfig, TileConfig
from unetkit.inference.tiling import tiled_pixels_per_pixel
from unetkit.planning.plan import PLANNED, USER, Choice, Plan
from unetkit.planning.throughput import Candidate, ThroughputModel
from unetkit.training.budget import reserve_seconds
from unetkit.training.precision import ModeDecision

# (base_width, depth, patch side, batch), cheapest first
LADDER: tuple[tuple[int, int, int, int], ...] = (
    (8, 3, 64, 4), (8, 3, 96, 4), (16, 3, 96, 4), (16, 3, 96, 8), (16, 4, 128, 8), (24, 4, 128, 8),
    (32, 4, 128, 8), (32, 4, 192, 8), (32, 4, 192, 16), (48, 5, 256, 16), (64, 5, 256, 16),
    (64, 5, 384, 16), (64, 5, 512, 16),
)
THIN_SURVIVAL = 0.5
THIN_BORDER_DISTANCE = 3.0
RARE_FRACTION = 0.01
TOUCHING_OBJECTS = 10  # R13: objects per image for "many objects"
MAX_BATCH = 32
MIN_PATCH = 64
BATCHES = (2, 4, 6, 8, 12, 16, 24, 32)
VALIDATION_SHARE = 0.08


def min_steps(budget_seconds: float) -> int:
    """R1: the step target for a budget."""
    return int(min(20000, max(300, 2000 * math.sqrt(max(budget_seconds, 1.0) / 600.0))))


@dataclass(frozen=True)
class DataFacts:
    """What the rules read from the fingerprint (and the split the user asked for)."""

    n_train: int
    n_val: int
    channels: int
    height: int  # median image height / width
    width: int
    fractions: tuple[float, ...]
    names: tuple[str, ...]
    thin: tuple[str, ...]  # thin-structure classes
    rare: tuple[str, ...]  # classes under RARE_FRACTION of labelled pixels
    object_side: float  # sqrt of the largest 90th-percentile object size among minority classes
    labelled_fraction: float
    touching: tuple[str, ...] = ()  # R13: classes of many objects per image split by a thin class-0 network

    @property
    def num_classes(self) -> int:
        return len(self.names)


def data_facts(fp: Mapping[str, Any], overrides: Mapping[str, Any], n_val: int | None = None) -> DataFacts:
    n = int(fp["n_samples"])
    if n_val is not None:
        pass
    elif overrides.get("data.val_keys"):
        n_val = len(overrides["data.val_keys"])
    else:
        n_val = min(n - 1, max(1, round(n * float(overrides.get("data.val_fraction", 0.2)))))
    classes = list(fp["classes"])
    fractions = tuple(float(c["pixel_fraction"]) for c in classes)
    minority = [c for c in classes if 0 < c["pixel_fraction"] < 0.5]
    thin = tuple(c["name"] for c in minority if is_thin(c))
    rare = tuple(c["name"] for c in classes if 0 < c["pixel_fraction"] < RARE_FRACTION)
    side = max((math.sqrt(max(c["object_size_p10_p50_p90"][2], 0.0)) for c in minority), default=0.0)
    network = bool(classes) and 0 < classes[0]["pixel_fraction"] < 0.5 and is_thin(classes[0])
    touching = tuple(c["name"] for c in classes[1:] if network and c["objects_per_image"] >= TOUCHING_OBJECTS)
    height, width = (int(v) for v in fp["size"]["median"])
    return DataFacts(n_train=n - n_val, n_val=n_val, channels=int(fp["channels"]), height=height, width=width,
                     fractions=fractions, names=tuple(c["name"] for c in classes), thin=thin, rare=rare,
                     object_side=side, labelled_fraction=float(fp.get("labelled_fraction", 1.0)),
                     touching=touching)


def is_thin(c: Mapping[str, Any]) -> bool:
    """R4: most pixels vanish after one erosion, or a long network only a few pixels wide."""
    depth = float(c["mean_border_distance"])
    long_side = math.sqrt(max(float(c["object_size_p10_p50_p90"][2]), 0.0))
    return float(c["erosion_survival"]) < THIN_SURVIVAL or (depth < THIN_BORDER_DISTANCE and long_side > 10 * depth)


def _round16(x: float) -> int:
    return max(MIN_PATCH, int(round(x / 16.0)) * 16)


def adapt_rung(rung: tuple[int, int, int, int], facts: DataFacts, overrides: Mapping[str, Any]) -> Candidate:
    """R3 + R4 (and the user's fixed width/depth/patch/batch) applied to one ladder rung."""
    width, depth, side, batch = rung
    pixels = side * side * batch
    if not facts.thin and facts.object_side > side / 2:
        side = _round16(side * 1.5)
    patch = (min(side, facts.height), min(side, facts.width))
    wanted = pixels / (patch[0] * patch[1])
    batch = min(BATCHES, key=lambda b: abs(math.log(b / wanted)))
    width = int(overrides.get("model.base_width", width))
    depth = int(overrides.get("model.depth", depth))
    if "data.patch_size" in overrides:
        patch = tuple(int(v) for v in overrides["data.patch_size"])  # type: ignore[assignment]
    batch = int(overrides.get("data.batch_size", batch))
    return Candidate(width, depth, patch, batch)  # type: ignore[arg-type]


def candidates(facts: DataFacts, overrides: Mapping[str, Any]) -> list[Candidate]:
    """The ladder adapted to the data, duplicates removed, in ladder order."""
    seen: list[Candidate] = []
    for rung in LADDER:
        c = adapt_rung(rung, facts, overrides)
        if c not in seen:
            seen.append(c)
    return seen


def validation_seconds(c: Candidate, seconds_per_step: float, facts: DataFacts) -> float:
    """R10: forward ~ 1/3 of a training step per pixel; patch-sized tiles overlapping by the
    default `TileConfig.overlap` (25 %: ~1.78x pixels), as fit validates; 1.3x overhead."""
    per_pixel = seconds_per_step / 3.0 / c.pixels_per_step
    tiled = tiled_pixels_per_pixel(c.patch, TileConfig().overlap)
    return 1.3 * tiled * per_pixel * facts.n_val * facts.height * facts.width


def planned_steps(c: Candidate, seconds_per_step: float, facts: DataFacts, budget: float) -> tuple[int, int, float]:
    """R10 + R11: (steps, number of validations, seconds per validation) for candidate `c`."""
    val_s = validation_seconds(c, seconds_per_step, facts)
    n_val = int(min(20, max(2, VALIDATION_SHARE * budget // max(val_s, 1e-6))))
    # the final validation is the last of the n_val; fit's clock re-times the rest of the end work
    train_s = budget - reserve_seconds(val_s, 0.0, budget=budget) - n_val * val_s
    return max(0, int(train_s / seconds_per_step)), n_val, val_s


TEACHER_FORWARD = 4.0 / 3.0  # R15: a student step plus the teacher's forward pass (~1/3 of a training step)


def distill_mode(facts: DataFacts, cand: Candidate, sps: float, budget_seconds: float, folds: int,
                 overrides: Mapping[str, Any]) -> tuple[str, str]:
    """R15: ("on" | "off", why)."""
    if folds > 1:
        return "off", "off: the ensemble is planned instead (R12, R15)"
    share = (1.0 - DistillConfig().teacher_share) * budget_seconds
    steps = planned_steps(cand, sps * TEACHER_FORWARD, facts, share)[0]
    target = min_steps(budget_seconds)
    if steps >= target:
        return "on", (f"an InstanceNorm teacher on half the budget, then this BatchNorm network distilled from it: "
                      f"its {steps} steps in the other half still reach the step target {target} (R15)")
    return "off", (f"off: the student's half of the budget would get {steps} steps, under the step target "
                   f"{target}; steps are worth more than a teacher here (R15)")


ENSEMBLE_END_PASSES = 4.0  # per member: final validation, calibration, tuning, drift baseline (R12)


def member_budget(budget_seconds: float, folds: int, val_s: float) -> float:
    """R12: each member's share of the budget after the ensemble's end work."""
    # no margin of the whole budget: each member's planned steps keep 3 % of its share
    return max(0.0, budget_seconds - reserve_seconds(folds * val_s, ENSEMBLE_END_PASSES)) / folds


def ensemble_folds(facts: DataFacts, cand: Candidate, sps: float, budget_seconds: float,
                   largest: bool, overrides: Mapping[str, Any]) -> tuple[int, str]:
    """R12: (folds, why); 1 = a single model."""
    if "ensemble_folds" in overrides:
        return int(overrides["ensemble_folds"]), ""
    val_s = planned_steps(cand, sps, facts, budget_seconds)[2]
    two = planned_steps(cand, sps, facts, member_budget(budget_seconds, 2, val_s))[0]
    if not largest:
        return 1, f"off: a larger model is the better use of this budget (2 folds would get {two} steps each) (R12)"
    for k in (5, 4, 3, 2):
        share = member_budget(budget_seconds, k, val_s)
        member_steps = planned_steps(cand, sps, facts, share)[0]
        if facts.n_train >= 2 * k and member_steps >= min_steps(share):
            return k, (f"the largest model reaches the step target of 1/{k} of the budget ({min_steps(share)}): "
                       f"{k} members of {member_steps} steps, one per fold of the training split (R12)")
    if facts.n_train < 4:
        return 1, f"off: {facts.n_train} training images are too few for 2 folds (R12)"
    half = min_steps(member_budget(budget_seconds, 2, val_s))
    return 1, f"off: 2 folds would get {two} steps each, under the step target {half} of half the budget (R12)"


def make_plan(fingerprint: Mapping[str, Any], throughput: ThroughputModel, budget_seconds: float,
              overrides: Mapping[str, Any] | None = None, *, n_val: int | None = None,
              timed: frozenset[Candidate] | set = frozenset(), mode: ModeDecision | None = None) -> Plan:
    """The training plan for this data, machine and budget; see the module docstring for the rules.

    `n_val`: validation images, when the split is known (else from val_keys / val_fraction).
    `timed`: candidates whose seconds/step were measured (marked in the printed table).
    `mode`: the compute mode the throughput was measured in, and why (R14)."""
    overrides = dict(overrides or {})
    facts = data_facts(fingerprint, overrides, n_val)
    target = min_steps(budget_seconds)
    rows, best, best_i = [], None, 0
    for i, c in enumerate(candidates(facts, overrides)):
        sps = float(throughput(c))
        steps, n_val, val_s = planned_steps(c, sps, facts, budget_seconds)
        rows.append({"label": c.label(), "seconds_per_step": sps, "steps": steps, "timed": c in timed})
        if best is None or steps >= target:
            best, best_i = (c, sps, steps, n_val, val_s), i
    assert best is not None
    rows[best_i]["chosen"] = True
    cand, sps, steps, n_val, val_s = best
    folds, why_folds = ensemble_folds(facts, cand, sps, budget_seconds, best_i == len(rows) - 1, overrides)
    if folds > 1:  # steps and validations are per member
        steps, n_val, val_s = planned_steps(cand, sps, facts, member_budget(budget_seconds, folds, val_s))
    distill, why_distill = ("", "") if "distill.mode" in overrides else distill_mode(
        facts, cand, sps, budget_seconds, folds, overrides)
    if overrides.get("distill.mode", distill) == "on":  # steps and validations are the student's
        share = (1.0 - float(overrides.get("distill.teacher_share", DistillConfig().teacher_share))) * budget_seconds
        steps, n_val, val_s = planned_steps(cand, sps * TEACHER_FORWARD, facts, share)
    if "steps" in overrides:
        steps = int(overrides["steps"])
    reached = "reaches" if steps >= target else "is below"
    why_model = (f"the largest candidate whose {steps} steps in this budget {reached} the step target {target} "
                 f"(R1/R2; {sps * 1000:.0f} ms/step here)")
    choices: list[Choice] = []

    def choose(key: str, value: Any, reason: str) -> None:
        if key in overrides:
            choices.append(Choice(key, _plain(overrides[key]), "set explicitly (flag or config file)", USER))
        else:
            choices.append(Choice(key, _plain(value), reason, PLANNED))

    choose("model.base_width", cand.base_width, why_model)
    choose("model.depth", cand.depth, "down-sampling steps of the same ladder rung (R2)")
    choose("model.norm", "batch" if cand.batch >= 4 else "instance",
           "BatchNorm at batch >= 4 (folds into the convs: fast inference), else InstanceNorm (R9; "
           "instance is often a little more accurate but 1.2x slower fp32, 2x int8)")
    choose("data.patch_size", cand.patch, _patch_reason(facts, cand))
    choose("data.batch_size", cand.batch, f"keeps ~{cand.pixels_per_step:,} pixels per step for this rung (R3/R4)")
    _loss_choices(choose, facts)
    _sampling_choice(choose, facts)
    _augment_choices(choose, facts)
    lr = min(2e-3, max(5e-4, 1e-3 * math.sqrt(cand.batch / 8)))
    choose("optim.optimizer", "adamw", "AdamW: robust default for U-Nets trained from scratch (R8)")
    choose("optim.lr", round(lr, 6), "1e-3 x sqrt(batch/8), clamped to 5e-4..2e-3 (R8)")
    choose("optim.schedule", "cosine", "cosine decay to 1 %, its length re-fitted to the budget during the run (R8)")
    choose("optim.warmup_steps", int(min(500, max(20, 0.03 * steps))), "3 % of the steps, 20..500 (R8)")
    choose("optim.ema_decay", 0.0, "no weight averaging: the cosine decay already averages the last steps (R8)")
    per = f"each member's 1/{folds} of the budget" if folds > 1 else "budget"
    choose("steps", steps, f"({per} - 3 % reserve - {n_val} validations x {val_s:.1f} s) / step time (R11)")
    choose("val_every", max(1, steps // n_val), f"{n_val} validations of ~{val_s:.1f} s, ~8 % of the budget; "
           "the best checkpoint on validation Dice is kept (R10)")
    choose("budget_seconds", float(budget_seconds), "the wall-clock budget; fit re-times steps and stops in it (R11)")
    choose("tune_postprocess", "rand" if facts.touching else "dice",
           f"objects ({', '.join(facts.touching)}) touch through a thin background: tuned for the adapted Rand "
           "score, watershed split included (R13)" if facts.touching else
           "tuned on the validation split for pooled Dice, kept only where it helps (R13)")
    choose("ensemble_folds", folds, why_folds)
    choose("distill.mode", distill, why_distill)
    if mode is not None:
        why_mode = f"{mode.reason} (R14)"
        choose("precision", mode.mode.precision, why_mode)
        choose("memory_format", mode.mode.memory_format, f"measured with the precision: {mode.mode.name} (R14)")
    summary = (f"{len(facts.names)} classes, {facts.n_train} train / {facts.n_val} val images "
               f"{facts.height}x{facts.width}; thin: {', '.join(facts.thin) or 'none'}; "
               f"rare: {', '.join(facts.rare) or 'none'}")
    estimates = {"summary": summary, "seconds_per_step": sps, "steps": steps, "step_target": target,
                 "validations": n_val, "validation_seconds": val_s, "candidate": cand.label(),
                 "ensemble_folds": folds}
    if mode is not None:
        estimates["compute_mode"] = mode.to_dict()
    return Plan(float(budget_seconds), tuple(choices), estimates, tuple(rows))


def _patch_reason(facts: DataFacts, c: Candidate) -> str:
    parts = []
    if facts.object_side > 0 and not facts.thin and c.patch[0] < 2 * facts.object_side + 1:
        parts.append(f"larger patches for big objects (~{facts.object_side:.0f} px)")
    if c.patch[0] >= facts.height or c.patch[1] >= facts.width:
        parts.append(f"capped by the image size {facts.height}x{facts.width}")
    return "; ".join(parts) + " (R3/R4)" if parts else "the ladder rung's patch (R2)"


def _loss_choices(choose, facts: DataFacts) -> None:
    choose("loss.ce", 1.0, "cross-entropy: calibrated per-pixel probabilities (R5)")
    choose("loss.dice", 1.0, "Dice: overlap of the minority classes, insensitive to imbalance (R5)")
    thin = bool(set(facts.thin) - {facts.names[0]})
    choose("loss.cldice", 0.5 if thin else 0.0,
           f"clDice for thin structures ({', '.join(facts.thin)}) (R5)" if thin
           else "off: no thin foreground structures (R5)")
    k = facts.num_classes
    if facts.rare:
        weights = tuple(round(min(10.0, max(1.0, math.sqrt(1.0 / (k * f)))) if f > 0 else 1.0, 3)
                        for f in facts.fractions)
        reason = f"class-weighted CE for rare classes ({', '.join(facts.rare)} < 1 % of pixels) (R5)"
    else:
        weights, reason = (), "uniform: no class under 1 % of pixels (R5)"
    choose("loss.class_weights", weights, reason)
    majority_bg = facts.fractions[0] >= 0.5 and k > 1
    choose("loss.dice_include_background", not majority_bg,
           "Dice over foreground classes: background is the majority (R5)" if majority_bg
           else "background is a minority class: keep it in Dice (R5)")


def _sampling_choice(choose, facts: DataFacts) -> None:
    if facts.rare:
        value, why = 0.5, f"half the patches centred on rare-class pixels ({', '.join(facts.rare)})"
    elif len(facts.fractions) > 1 and sum(facts.fractions[1:]) >= 0.5:
        value, why = 0.2, "foreground is the majority: little oversampling"
    elif facts.thin:
        value, why = 0.5, "half the patches centred on foreground pixels (thin structures)"
    else:
        value, why = 0.33, "a third of the patches centred on foreground pixels"
    choose("data.rare_oversample", value, why + " (R6)")


def _augment_choices(choose, facts: DataFacts) -> None:
    few = facts.n_train < 200
    choose("augment.enabled", True, "flips + rot90 + mild geometry/intensity (R7)")
    choose("augment.p", 0.5 if few else 0.3, f"{facts.n_train} training images: "
           + ("stronger augmentation" if few else "milder augmentation") + " (R7)")
    lossless = "off: resampling blurs thin structures (R7)"
    choose("augment.rotate_degrees", 0.0 if facts.thin else 15.0, lossless if facts.thin else "small rotations (R7)")
    choose("augment.scale", (1.0, 1.0) if facts.thin else (0.85, 1.15), lossless if facts.thin else "±15 % scale (R7)")
    choose("augment.elastic_alpha", 0.0, "elastic deformation off: costly on CPUs (R7)")


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
