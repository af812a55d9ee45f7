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
   rising; w16 models given 1,800-2,800 steps in the same 10 minutes reached 0.820.) Objects scored
   by their topology (R13's touching objects: cells split by a thin membrane network) want twice the
   steps (TOPOLOGY_STEPS): a one-pixel gap in a membrane merges two cells, and the topology of the
   maps kept improving after pixel Dice had flattened. ISBI 2012, 30 minutes, one Zen 4 machine,
   scored as `unetkit predict` writes (re-tuned leaving the slice out): w32 for ~3,550 steps (the
   plain target's rung) 0.0378 (0.0381) and 0.0273 (0.0302); w16 for ~11,000 steps, pinned 0.0228
   (0.0299) and planned by this rule 0.0286 (0.0327), 0.0267 (0.0307), 0.0305 (0.0294), 0.0292
   (0.0335). w16 met <= 0.035 in five runs of five, w32 in one of two; its lead (~0.005, ~0.003 held out) is smaller
   than the ~0.01 spread between runs of one plan, so the factor rests on thin evidence. Runs of >=
   4,600 steps on other machines scored 0.026-0.032 (docs/benchmarks.md; the figures of 2026-12-05
   correct earlier ones that scored TTA-adopting models without their TTA). Those steps come from a
   narrower network, never a shallower one than TOPOLOGY_DEPTH (4) while that rung gets at least half
   the plain target: on an AMD EPYC Zen 3 (fp32) the factor took ISBI 2012 down to w16 d3 96x96 for
   ~7,800 steps, 0.0428 (0.0660 held out), where w16 d4 128x128 for ~3,100 steps, pinned, scored 0.0317
   (0.0314) and the same rung planned before the factor 0.0343 (one run each).
R2 Model ladder. Candidates come from `LADDER`, (width, depth, patch, batch) rungs ordered by cost,
   each adapted to the data (R3, R4). The plan takes the most expensive rung whose planned steps
   (training seconds / seconds per step) still reach the step target; if none does, the cheapest.
   Faster machines (more cores, a GPU) time every rung faster, so they climb higher: wider, deeper,
   larger patches, more steps, all within the same budget.
R3 Patch fits the image. A patch side is never larger than the median image side (the sampler pads
   smaller images), and pixels per step are kept by changing the batch (to the nearest of 2, 4, 6,
   8, 12, 16, 24, 32) when a patch changes. Patches are multiples of 16, at least 64 (or the image).
R4 Object scale and context. Thin classes: most pixels vanish after one erosion
   (erosion_survival < 0.5), or a long network a few pixels wide (mean_border_distance < 3 px and
   sqrt(90th-percentile object size) > 10x that distance). A *thin-structure data set* (vessels,
   membranes) is one whose thin classes hold at least half (THIN_SHARE) of the labelled pixels
   outside the largest class; a scene where one rare class happens to be thin (poles: ~1.5 % of
   CamVid's pixels outside the road, ~3 px wide) is not, and gets none of the thin-structure rules
   (R4, R5, R6, R7) -- unless a thin class is a hairline, at most ~2 px wide (mean border distance
   < HAIRLINE_DEPTH): bilinear resampling erases those whatever their share, and the synthetic
   one-pixel lines of tests/planning/test_auto.py learned to IoU 0.20 instead of >= 0.5 in 437 steps
   with resampling and without clDice (which of the two matters was not separated: the machine was
   too loaded to train the arms); such data keep clDice and lossless augmentation (R5, R7) but get
   the context rules below. A thin-structure data set keeps the rung's patch and depth: 3/4-size patches with a larger
   batch were tried on DRIVE and learned slower (validation F1 0.77 vs 0.80 for 128x128 patches
   after one minute, docs/benchmarks.md). Otherwise the context is the typical extent of the
   objects outside the largest class (the fingerprint's pixel-weighted `object_extent_p50`, so
   fragments do not hide a large object; older fingerprints: sqrt of the 90th-percentile size):
   when it exceeds half the rung's patch, the patch grows to 1.5x, and up to the context itself as
   far as the rung's pixels per step pay for at batch 2 (R3 caps it by the image); the U-Net is
   deepened (at most MAX_DEPTH, bottom at least MIN_BOTTOM px) until its encoder's receptive field
   spans half of the object within the patch (`receptive_field`). No bottleneck is planned: the
   model family's three cost 11-17 % per step and none gained on both of CamVid's held-out daylight
   and dusk sequences at equal budget (mIoU: pyramid pooling -0.012 / -0.024, ASPP -0.010 / +0.001,
   a transformer layer -0.016 / -0.030; docs/benchmarks.md).
R5 Loss. Cross-entropy + Dice, or + Lovász for many classes. clDice (weight 0.5) is added under the
   thin-structure rules (R4: the topology of vessels/membranes) when the thin classes are foreground
   (index >= 1: the classes clDice scores). Rare classes (< 1 % of labelled pixels) get class-weighted
   CE with w_k = clip(sqrt(1 / (K f_k)), 1, 10) (1 for balanced classes); Dice excludes the background
   (class 0) when it is the majority class, so the tiny foreground is not swamped by its easy Dice.
   Three or more classes outside the thin-structure rules (`multi_class`: scored by the IoU averaged
   over the classes) get Lovász-softmax (`loss.lovasz`, that IoU's surrogate) in place of Dice, on a
   random quarter of the pixels each step (`loss.lovasz_sample` 0.25). A Dice weight the user sets
   keeps Lovász off; a Lovász weight the user sets replaces Dice on any data. Measured on CamVid, the
   one multi-class data set here: every pixel's sort cost 53-55 % per step and scored -0.004 / -0.006
   mIoU (daylight / dusk held-out sequences) at equal budget; the quarter costs 7-9 % of the steps and
   scored -0.012, -0.001 / +0.015, +0.021 at 45 minutes (two seeds) and -0.003 / +0.007 under the
   60-minute plan: -0.0055 / +0.014 on average (five 45-minute runs of the old loss spread 0.013
   daylight, 0.020 dusk; docs/benchmarks.md). DRIVE and ISBI 2012 (two classes) keep Dice; binary
   data was not measured with Lovász.
R6 Sampling. A fraction of patches is centred on a rare-class pixel (or a foreground pixel when no
   class is rare): 0.5 with a rare class; 0.2 when the foreground is the majority; 0.5 for a
   thin-structure data set; 0.33 otherwise.
R7 Augmentation. Flips and rot90, except for upright data: when the classes' mean rows (the
   fingerprint's `mean_row_col`, classes over 1 % of the pixels) lie UPRIGHT_SPREAD (20 %) of the
   height apart -- sky above road -- only left-right flips (no upside-down flip, no rot90). Rotation
   15 deg and scale 0.85-1.15 (0.75-1.33 for wide context: objects spanning a third of the
   image's shorter side, whose distance from the camera varies), except under the thin-structure
   rules (R4): their width (1-3 px) is the signal, and bilinear resampling of a rotated or scaled patch
   blurs it while the nearest-neighbour label stays sharp, so they get only the lossless flips and
   rot90 (DRIVE: validation F1 0.78 after one minute vs 0.58-0.77 with resampling); brightness and
   contrast 0.1 (per-channel normalisation already removes gross intensity differences), 0.2 for
   wide-context scenes under changing light, which in colour also get saturation 1 ± 0.3 and a
   white-balance shift of ± 0.1 per channel (the colour jitter of the common street-scene
   pipelines; CamVid, one network pinned, 45 min, held-out sequences: mIoU 0.403 vs 0.395 on the
   daylight 0006R0 frames, 0.278 vs 0.265 on the dusk 0001TP frames, pixel accuracy +0.017 / +0.040;
   DRIVE and ISBI 2012 fall under the thin-structure rules, so their plans do not change); mild
   gamma/noise; each photometric operation with probability 0.5, rotation and scale 0.5 below 200
   training images and 0.3 above (`augment.p_geometric`). On CamVid's 266-305 frames, seen 50-59 times
   each in 45 minutes, 0.5 for both traded daylight for dusk (mIoU -0.002 and -0.019 on the 0006R0
   frames, +0.017 and +0.019 on the 0001TP frames, two seeds against 0.3 for both); 0.5 for the
   photometric operations alone kept daylight level (+0.004, -0.005) and still gained on dusk (+0.004,
   +0.041). Elastic deformation off (costly on CPUs). A rotated or zoomed-out patch is cut from the
   window around it (`unetkit.data.transforms.context_window`): its corners and borders are the
   image's own pixels, not ignored padding (CamVid, w16 d4 192x192 b4 at 0.75x pinned, 60 min, arms
   side by side, held out 0006R0: mIoU 0.443 against 0.426; 0016E5 at 20 min: 0.426 against 0.419); the plans of flips-only data (DRIVE,
   ISBI 2012) need no window and train as before. The street-scene recipe's wider 0.5-2x range lost
   in the same round (0.418): at 0.75x the 0.5 end shows objects at 0.375 of their size, the 2 end
   crops a patch of a quarter of the context R3/R4 chose.
R8 Optimiser. AdamW, lr 1e-3 * sqrt(batch / 8) clamped to 5e-4..2e-3 (2e-3 made DRIVE's
   validation F1 swing by 0.03-0.13 between validations), weight decay 1e-4, linear
   warm-up over 3 % of the steps (20..500), cosine decay to 1 % -- the schedule's length is
   re-fitted to the budget during training by `unetkit.training.budget`. No weight averaging
   (`optim.ema_decay` 0): at equal steps on DRIVE it changed F1 by -0.001 and AUC by +0.001.
R9 Normalisation layers. BatchNorm at batch >= 4; below (noisy batch statistics) GroupNorm for
   natural scenes (R7's wide context) and InstanceNorm otherwise. At equal steps on CamVid (w16 d4
   224x224 b2, 60 minutes at one thread per arm, 101 held-out frames) GroupNorm scored mIoU 0.364 vs
   0.353 and pixel accuracy 0.789 vs 0.767: ahead on the large classes (building +0.06, tree +0.05,
   car +0.03), behind on the thin ones (pole -0.04, sign and fence -0.02). Both cost the same.
   BatchNorm folds into the convolutions at export; InstanceNorm and GroupNorm cannot, and make a
   tile's output depend on the tile. On DRIVE InstanceNorm gained F1 +0.000..0.006 and AUC
   +0.001..0.004 at equal steps but made ORT inference 1.2x slower in fp32 and 2x in int8
   (docs/benchmarks.md); at equal time it was level (DRIVE 10 minutes, Zen 4: F1 0.8151 vs 0.8152,
   0.8193 vs 0.8170 with TTA; its steps cost 1.2x), so inference speed wins the default;
   `model.norm: instance` in a config file trades it for the accuracy.
R10 Validation. Whole-image validation costs ~forward time on the validation pixels (tiled with
   25 % overlap); the plan validates 2..20 times, spending about 8 % of the budget on it, and keeps
   the best checkpoint on the validation Dice. One pass may cost at most 2 % of the budget (4
   validations in the 8 %; the end of the run -- final validation, calibration, tuning, drift
   baseline -- costs ~5 passes more): a larger validation split is validated on an evenly spread
   sample of it (`data.val_images`, at least 8 images), in training and at its end alike. CamVid's
   101 validation frames took 150-230 s a pass on one loaded core, and a 20-minute run spent all but
   ~3 minutes validating (180 steps).
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
   scored slice out; docs/benchmarks.md). Its seeds have a size floor (10 px to start, then searched
   after the threshold): a speck of confidence inside a cell is not a cell (six saved ISBI models
   re-tuned, benchmarks/seed_floor.py: mean Rand error 0.0346 -> 0.0313 in sample, 0.0423 -> 0.0395 held
   out, none worse). The Dice guard is what stops the search's threshold: held
   out on four ISBI models, 0.02 instead gained 0.010-0.011 Rand error and lost 0.09-0.13 membrane F1,
   a trade left to the user (`unetkit tune-postprocess --dice-guard`). Before the search, test-time augmentation is decided the
   same way (`unetkit.tuning.tta`): on where the views' mean beats the plain prediction across the
   validation images (DRIVE and CamVid gained, ISBI 2012 lost Dice; for the object score the gate judges
   1 - Rand error: held out on five ISBI models TTA helped three and cost two, and the gate's choices
   scored as well as TTA always on), and the search tunes on what inference will then produce.
R14 Compute mode. The autocast precision (fp32 or bf16) and memory format (NCHW or channels_last)
   the candidates were timed fastest in, among the modes that passed the health check over their
   probe steps (`unetkit.planning.throughput.measure_throughput`); the reason lists the measured
   ms/step of every mode. Timed by a real run only: with a simulated throughput no mode is planned
   and fit decides (`unetkit.training.precision`).
R15 Pretrained start (`--init` artifact, `--pretrained` encoder, or R16's pretraining). The start
   fixes the architecture (width, depth, normalization: its weights have those shapes), and an
   `--init` artifact its resolution too (R18: its filters are sized for that scale), unless the user
   sets `--resolution`; an encoder file leaves the resolution to R18 (R16 pretrains at it). The rest
   depends on what kind of start it is:
   - **Continued training** (an `--init` artifact whose head is kept: the same classes, so the same
     task, e.g. the next active-learning round): the step target is half of R1's (the network
     already solves the task; the time buys a larger patch and batch), R8's lr x 0.5, the encoder at
     0.25 x that (large updates erase what the start learned), no freeze.
   - **Transfer** (a new head: other classes, or an encoder file): R1's step target and R8's learning
     rate, one rate for the whole network, with the encoder frozen for the first 10 % of the steps
     while the new head and the decoder catch up (a random head sends large, random gradients back).
     Measured on DRIVE (green channel, 5 labels, 10 minutes, 4 arms side by side): the halved steps
     and rates made a *random* start (the source's architecture with fresh weights) score F1 0.751
     against scratch's 0.786, so they, not the start, cost the earlier fine-tuning runs their 0.02-0.03;
     with R1's steps and R8's rate the ISBI 2012 start scored 0.792 against scratch's 0.774
     (encoder at 0.5x: 0.789); a CamVid street-scene start went from −0.023 to level (0.7725 vs
     0.7710). Continued training on DRIVE 21-35 from a 21-25 parent beat scratch by 0.017 with the
     halved rates and with scratch's alike (docs/benchmarks.md, "Fine-tuning from another data
     set's model", 2026-12-03).
R16 Self-supervised pretraining (`--unlabelled DIR`). Proposed only when labelled training images
   are few (< 30), the unlabelled images are many (at least 100, and at least 10x the labelled ones),
   and the budget is long enough that the fine-tuning share still reaches its step target (R15's) on
   the cheapest candidate: then `PRETRAIN_SHARE` of the budget pretrains the planned U-Net's encoder
   by dense contrastive learning on the unlabelled and training images (`unetkit.training.pretrain`),
   the rest fine-tunes from it (R15). Contrastive, because of the three objectives measured on one
   machine (DRIVE, 5 labels, 30 minutes, AVX2 EPYC) it came closest to scratch (F1 −0.004;
   masked-image modelling −0.008, denoising −0.020) and was the only one whose start led early per
   pixel seen; keeping its decoder too (`keep: network`) was no better (−0.006). Why so strict: on
   DRIVE with 5 labelled images and 15 images to pretrain on, every measured arm lost to scratch at
   equal budget (docs/benchmarks.md, "Self-supervised pretraining on DRIVE"): half of 20 minutes on a loaded CPU left fine-tuning 122
   steps (F1 0.32 vs 0.71); a quarter of 30 minutes on a quiet one, in the measured compute mode
   (857 pretraining steps), left it 2,202 and F1 0.772 vs 0.816 under R15's old halved rates. With
   R15's transfer recipe (scratch's rate after the freeze) the same comparison scored 0.810 vs 0.820
   (3,100 fine-tuning steps vs 4,106): the pretrained start was level with scratch per step, so the
   quarter of the budget it cost was not paid back. A few images' worth of inpainting is no better
   a start than random weights; what pays in the literature is pretraining on many more images than
   are labelled, so that is the only case R16 proposes, and its plan says it is unmeasured here.
   (The mim runs above used the objective R16 then chose.) The most those 10 images could add was
   measured by labelling them: +0.007 F1 at 30 minutes (0.8249 vs 0.8181, AMX Xeon); self-training
   on a teacher's pseudo-labels for them lost 0.009 (their F1 against the real labels: 0.761), so
   R16 does not propose it (docs/benchmarks.md, 2026-12-05 14:26).
R17 Distillation. The accuracy levers (InstanceNorm: F1 +0.004..0.006 on DRIVE at equal steps, but
   1.2x slower fp32 and 2x int8 inference, R9; a two-model ensemble: +0.0007) cost inference time;
   `distill.mode on` trains the best measured one, InstanceNorm, as a teacher on half the budget and
   distils it into the fast BatchNorm student on the other half (`unetkit.training.distill`; a
   student step costs a plain step when the teacher's probabilities are cached, the default, and 4/3
   of one with the teacher's forward pass on each batch, "online"). The plan leaves it off and says
   why: on DRIVE the students kept none of the teacher's lead at equal steps (2,000 steps each:
   teacher +0.006, +0.012 with its views; students -0.001 and -0.002 against the plain network; a
   1.5x wider teacher, +0.0065 / +0.011, kept 4-6 %: `distill_drive.py --teacher wider`; on CamVid's
   11 classes a wider teacher led by 0.033 at 3,000 steps and its student ended level with the plain
   network: `distill_camvid.py`; taught by that teacher as an artifact, students at weight 0.5 / T 2 and
   0.9 / T 4 kept 9 % and -22 % of its held-out lead: `distill_camvid.py --arms`; on DRIVE's 10 minutes,
   `--distill-from` the 10-minute InstanceNorm model scored F1 0.8118 against the plain run's 0.8170), and
   the teacher's half of the budget costs the student steps (20 minutes, 2 cores: plain run
   0.811-0.814, distilled 0.755). An earlier R17 turned it on wherever the student's half still
   reached the step target: in two runs of one command (DRIVE, 5 labels, 30 minutes) the plan whose
   timings put it on scored 0.8025, the one whose timings kept it off 0.8140. When asked for, steps
   and validations are the student's; the reason says whether its half would reach the step target.
   A teacher artifact the user gives (`--distill-from`: nothing is trained for it) turns it on, and the
   student's steps are the whole budget's.
R18 Resolution. A natural scene (R4/R7's wide context) whose rung patch, after R4, covers less than
   half of the frame trains at a reduced side (`data.resolution`), where the same pixels per step see
   more of the frame: the first of `REDUCED_RESOLUTIONS` (0.75, 0.5) at which the rung's patch still
   covers a third of the reduced frame at batch >= 4 (BatchNorm, R9), else the last; its frame and
   object sizes are scaled for R3/R4, and validation and every prediction resample the native image
   and resize the probabilities back. Not for thin structures (their width is the signal), not at a
   resolution whose frame's shorter side would fall under `MIN_PATCH`, and not when the user set the
   patch (in native pixels). On CamVid (360x480, w16 d4, GroupNorm, 60 minutes at one thread per arm,
   101 held-out frames scored at the native size) the half-resolution arm (176x240 b2: the whole frame
   per patch) scored mIoU 0.380 vs 0.336 for the native 224x224 b2 arm, pixel accuracy 0.802 vs
   0.763, with 7,114 steps vs 5,454 (cheaper patches), ahead on every class but sign and bicyclist --
   the 1.5 px poles too (0.085 vs 0.000). With the plans unpinned and this rule against
   `data.resolution` 1 (45 minutes, one thread each): mIoU 0.406 vs 0.310, pixel accuracy 0.826 vs
   0.717. Three quarters against a half (60 minutes, four trainings at one thread each, the w16 d4
   rung): 192x192 b4 at 0.75x (38 % of the frame) against the plan's 180x192 b4 at 0.5x scored
   0.4415 / 0.4343 vs 0.4155 / 0.4161 on sequence 0016E5, 0.4171 / 0.4130 vs 0.4034 / 0.4151 on
   0006R0 and 0.3381 vs 0.2981 on the dusk sequence 0001TP (two seeds where two figures): +0.023 on
   average, ahead on all three (poles, pedestrians, fences, trees; pavement lost); the cheaper rung at
   0.75x, 176x176 at batch 2 (32 % of the frame, GroupNorm), scored 0.3867 on 0006R0, hence the batch
   and share conditions. The issue's command alone on two threads of the AMX Xeon (`benchmarks/
   camvid.py --budget 60m`, 0006R0 held out) planned w32 d4 192x192 b4 at 0.75x, 9,129 steps: mIoU
   0.4692, pixel accuracy 0.856, against 0.4330 / 0.840 for the 0.5x-only rule's plan on the same day
   (w32 d4 180x192 b4, 9,152 steps; pedestrian +0.16, car +0.09, tree and sign +0.06; fence -0.03).
   DRIVE and ISBI 2012 are thin-structure sets: their plans do not change. A model trained at a
   reduced side then decides multi-scale inference at the end of its run (`unetkit.tuning.scales`:
   2/3 of its resolution, it and native averaged, kept where the gain holds across the validation
   images), which wins back some of the small objects the reduced side loses.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unetkit.config import DistillConfig, TileConfig, replace
from unetkit.data.fingerprint import largest_class
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
MAX_STEPS = 20000  # R1: the step target's ceiling
TOPOLOGY_STEPS = 2.0  # R1: the step target's factor for objects scored by their topology (R13's touching)
TOPOLOGY_DEPTH = 4  # R1: ... which buy those steps with width, not with a shallower network than this,
TOPOLOGY_MIN_SHARE = 0.5  # ... while it gets at least this share of the plain step target
THIN_SHARE = 0.5  # R4: thin classes hold at least half the pixels outside the largest class
HAIRLINE_DEPTH = 1.25  # R4: mean distance to the border of structures at most 2 px wide
UPRIGHT_SPREAD = 0.2  # R7: classes' mean rows this far apart (fraction of the height): the data has an up
MAX_DEPTH = 5  # R4: deepest U-Net the receptive-field rule plans
MIN_BOTTOM = 8  # R4: px, the smallest feature map side at the bottom of the U-Net
THIN_BORDER_DISTANCE = 3.0
RARE_FRACTION = 0.01
MULTI_CLASS = 3  # R5: classes from which a data set outside the thin-structure rules gets Lovász
LOVASZ_SAMPLE = 0.25  # R5: the share of the pixels Lovász scores per step (measured on CamVid)
TOUCHING_OBJECTS = 10  # R13: objects per image for "many objects"
MAX_BATCH = 32
REDUCED_RESOLUTIONS = (0.75, 0.5)  # R18: a scene whose patch sees little of the frame trains at the first ...
FRAME_SHARE = 0.5  # R18: ... when the native patch covers less than this share of the frame's area
REDUCED_FRAME_SHARE = 1 / 3  # R18: ... whose patch covers at least this share of the reduced frame at BATCHNORM_BATCH
BATCHNORM_BATCH = 4  # R9: the smallest batch whose statistics BatchNorm uses
MIN_PATCH = 64
BATCHES = (2, 4, 6, 8, 12, 16, 24, 32)
VALIDATION_SHARE = 0.08
VALIDATION_PASS_SHARE = 0.02  # R10: of the budget, at most per validation pass
MIN_VAL_IMAGES = 8  # R10: the smallest validation sample the plan draws
FINETUNE_STEP_FACTOR = 0.5  # R15: continued training's step target, of R1's (a transfer: R1's)
FINETUNE_LR_FACTOR = 0.5  # R15: continued training's learning rate, of R8's (a transfer: R8's)
FINETUNE_ENCODER_LR_RATIO = 0.25  # R15: continued training's encoder learning rate, of the decoder's
TRANSFER_ENCODER_LR_RATIO = 1.0  # R15: a transfer's (0.5 measured no better on DRIVE)
FINETUNE_FREEZE_FRACTION = 0.1  # R15: a transfer's steps with the encoder frozen (its head is new)
FEW_LABELLED = 30  # R16: below this many labelled training images, pretraining may pay
MANY_UNLABELLED = 100  # R16: at least this many unlabelled images ...
UNLABELLED_RATIO = 10  # R16: ... and this many per labelled training image
PRETRAIN_SHARE = 0.25  # R16: of the budget, spent pretraining (half left fine-tuning too few steps)
PRETRAIN_OBJECTIVE = "contrastive"  # R16


@dataclass(frozen=True)
class StartFacts:
    """R15: what a pretrained start fixes. `model` (base_width, depth, norm) is None for R16's encoder,
    which the plan itself chooses before pretraining it."""

    kind: str  # "init" | "pretrained" | "pretrain" (R16: pretrained by this run)
    path: str = ""
    model: Mapping[str, Any] | None = None
    keeps_head: bool = False
    resolution: float | None = None  # the scale an artifact start was trained at (R18); None: not fixed

    def fixed(self) -> dict[str, Any]:
        if self.model is None:
            return {}
        return {f"model.{k}": self.model[k] for k in ("base_width", "depth", "norm")}

    def pinned(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """What the start fixes in the plan: its architecture, and the resolution a parent artifact was
        trained at (its features and head are sized for that scale) unless the user set one."""
        if self.resolution is None or "data.resolution" in overrides:
            return self.fixed()
        return self.fixed() | {"data.resolution": self.resolution}

    def label(self) -> str:
        return {"init": f"--init {self.path}", "pretrained": f"--pretrained {self.path}"}.get(
            self.kind, "the encoder pretrained first (R16)")


def min_steps(budget_seconds: float) -> int:
    """R1: the step target for a budget."""
    return int(min(MAX_STEPS, max(300, 2000 * math.sqrt(max(budget_seconds, 1.0) / 600.0))))


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
    thin_share: float = 0.0  # R4: the thin classes' share of the labelled pixels outside the largest class
    context: float = 0.0  # R4: px, typical extent of the objects outside the largest class (pixel-weighted)
    upright: float = 0.0  # R7: spread of the classes' mean rows (fraction of the height)
    hairline: tuple[str, ...] = ()  # R4: thin classes at most ~2 px wide (mean border distance < 1.25)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def thin_data(self) -> bool:
        """R4: a thin-structure data set (vessels, membranes: the foreground itself is thin), not a
        scene where one rare class (a pole) happens to be thin."""
        return bool(self.thin) and self.thin_share >= THIN_SHARE

    @property
    def thin_rules(self) -> bool:
        """R5/R7: clDice and lossless augmentation: a thin-structure data set, or any class of lines
        at most ~2 px wide, which bilinear resampling erases whatever share of the pixels it holds."""
        return self.thin_data or bool(self.hairline)

    def at_resolution(self, resolution: float) -> DataFacts:
        """R18: the frame and object sizes as a model trained at `resolution` sees them (the classes'
        shares, thinness and layout are the data's and stay as measured)."""
        return dataclasses.replace(self, height=max(1, round(self.height * resolution)),
                                   width=max(1, round(self.width * resolution)), context=self.context * resolution,
                                   object_side=self.object_side * resolution)

    @property
    def multi_class(self) -> bool:
        """R5: MULTI_CLASS or more classes and none of the thin-structure rules (which keep Dice and
        clDice): scored by the IoU averaged over the classes, which Lovász-softmax stands in for."""
        return self.num_classes >= MULTI_CLASS and not self.thin_rules

    @property
    def is_upright(self) -> bool:
        """R7: the classes sit at different heights of the frame (sky above road): the data has an up."""
        return self.upright >= UPRIGHT_SPREAD


def under_topology_depth(c: Candidate, facts: DataFacts) -> bool:
    """R1: a rung shallower than TOPOLOGY_DEPTH for objects scored by their topology, which the plan passes
    over for the first rung that deep while that one gets TOPOLOGY_MIN_SHARE of the plain step target."""
    return bool(facts.touching) and c.depth < TOPOLOGY_DEPTH


def step_target(budget_seconds: float, facts: DataFacts) -> int:
    """R1's step target for this data: `min_steps`, times TOPOLOGY_STEPS when objects are scored by
    their topology (R13's touching objects)."""
    base = min_steps(budget_seconds)
    return min(MAX_STEPS, int(TOPOLOGY_STEPS * base)) if facts.touching else base


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
    largest = largest_class(fp) or 0
    others = [c for k, c in enumerate(classes) if k != largest and c["pixel_fraction"] > 0]
    outside = sum(c["pixel_fraction"] for c in others)
    thin_share = sum(c["pixel_fraction"] for c in others if c["name"] in thin) / outside if outside > 0 else 0.0
    # older fingerprints have no extents: the side of a large (90th percentile) object stands in
    extents = [(float(c.get("object_extent_p50", math.sqrt(max(c["object_size_p10_p50_p90"][2], 0.0)))),
                float(c["pixel_fraction"])) for c in others]
    rows = [c["mean_row_col"][0] for c in classes if "mean_row_col" in c and c["pixel_fraction"] >= RARE_FRACTION]
    return DataFacts(n_train=n - n_val, n_val=n_val, channels=int(fp["channels"]), height=height, width=width,
                     fractions=fractions, names=tuple(c["name"] for c in classes), thin=thin, rare=rare,
                     object_side=side, labelled_fraction=float(fp.get("labelled_fraction", 1.0)),
                     touching=touching, thin_share=thin_share, context=_weighted_median(extents),
                     upright=max(rows) - min(rows) if rows else 0.0,
                     hairline=tuple(c["name"] for c in minority
                                    if is_thin(c) and float(c["mean_border_distance"]) < HAIRLINE_DEPTH))


def _weighted_median(pairs: list[tuple[float, float]]) -> float:
    """The value below which half the weight of (value, weight) pairs lies; 0 for none."""
    total, running = sum(w for _, w in pairs), 0.0
    for value, weight in sorted(pairs):
        running += weight
        if running >= total / 2:
            return value
    return 0.0


def receptive_field(depth: int) -> int:
    """R4: pixels seen by one output pixel of a U-Net's encoder (two 3x3 convolutions per level)."""
    return 1 + 4 * (2 ** (depth + 1) - 1)


def is_thin(c: Mapping[str, Any]) -> bool:
    """R4: most pixels vanish after one erosion, or a long network only a few pixels wide."""
    depth = float(c["mean_border_distance"])
    long_side = math.sqrt(max(float(c["object_size_p10_p50_p90"][2]), 0.0))
    return float(c["erosion_survival"]) < THIN_SURVIVAL or (depth < THIN_BORDER_DISTANCE and long_side > 10 * depth)


def _round16(x: float) -> int:
    return max(MIN_PATCH, int(round(x / 16.0)) * 16)


def adapt_rung(rung: tuple[int, int, int, int], facts: DataFacts, overrides: Mapping[str, Any]) -> Candidate:
    """R3 + R4 (and the user's fixed width/depth/patch/batch) applied to one ladder rung, at the
    resolution R18 (or the user) chooses for it."""
    native = _adapt(rung, facts, overrides)
    if "data.resolution" in overrides:
        resolution = float(overrides["data.resolution"])
        return native if resolution == 1.0 else _reduced(rung, facts, overrides, resolution)
    if "data.patch_size" in overrides:  # a patch the user set is in the pixels they know: native ones
        return native
    return scene_candidate(rung, facts, overrides, native)


def _reduced(rung: tuple[int, int, int, int], facts: DataFacts, overrides: Mapping[str, Any],
             resolution: float) -> Candidate:
    return dataclasses.replace(_adapt(rung, facts.at_resolution(resolution), overrides), resolution=resolution)


def scene_candidate(rung: tuple[int, int, int, int], facts: DataFacts, overrides: Mapping[str, Any],
                    native: Candidate) -> Candidate:
    """R18: a natural scene (R4/R7's wide context) whose `native` patch covers less than `FRAME_SHARE` of
    the frame trains at the first of `REDUCED_RESOLUTIONS` where the rung's patch covers at least
    `REDUCED_FRAME_SHARE` of the reduced frame at a batch BatchNorm can use, else at the last; a
    resolution that would take the frame's shorter side under `MIN_PATCH` is not tried. Else native."""
    if not (_wide_context(facts) and frame_share(native, facts) < FRAME_SHARE):
        return native
    tried = [r for r in REDUCED_RESOLUTIONS if min(facts.height, facts.width) * r >= MIN_PATCH]
    for r in tried:
        c = _reduced(rung, facts, overrides, r)
        if r == tried[-1] or (c.batch >= BATCHNORM_BATCH and frame_share(c, facts) >= REDUCED_FRAME_SHARE):
            return c
    return native


def frame_share(c: Candidate, facts: DataFacts) -> float:
    """R18: the share of the frame, as the candidate's resolution resamples it, that one patch covers."""
    small = facts.at_resolution(c.resolution)
    return c.patch[0] * c.patch[1] / (small.height * small.width)


def _adapt(rung: tuple[int, int, int, int], facts: DataFacts, overrides: Mapping[str, Any]) -> Candidate:
    width, depth, side, batch = rung
    pixels = side * side * batch
    if not facts.thin_data and facts.context > side / 2:
        # context: up to the objects' extent, as far as the rung's pixels pay for at batch 2
        paid = 16 * int(math.sqrt(pixels / 2) // 16)
        side = max(_round16(side * 1.5), min(_round16(facts.context), paid))
    patch = (min(side, facts.height), min(side, facts.width))
    if not facts.thin_data:  # deepen until the receptive field spans half the object, in the patch
        wanted = min(facts.context, min(patch)) / 2
        while depth < MAX_DEPTH and receptive_field(depth) < wanted and min(patch) >> (depth + 1) >= MIN_BOTTOM:
            depth += 1
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


def validation_seconds(c: Candidate, seconds_per_step: float, facts: DataFacts, images: int = 0) -> float:
    """R10: forward ~ 1/3 of a training step per pixel; patch-sized tiles overlapping by the
    default `TileConfig.overlap` (25 %: ~1.78x pixels), as fit validates; 1.3x overhead. `images`:
    of the validation split (0: all of it)."""
    per_pixel = seconds_per_step / 3.0 / c.pixels_per_step
    tiled = tiled_pixels_per_pixel(c.patch, TileConfig().overlap)
    n = min(images, facts.n_val) if images > 0 else facts.n_val
    return 1.3 * tiled * per_pixel * n * facts.height * facts.width * c.resolution ** 2  # R18: resampled images


def validation_images(c: Candidate, seconds_per_step: float, facts: DataFacts, budget: float,
                      overrides: Mapping[str, Any] | None = None) -> int:
    """R10: how many validation images each pass uses (0: all), so that one pass costs at most
    `VALIDATION_PASS_SHARE` of the budget; at least `MIN_VAL_IMAGES`. An explicit
    `data.val_images` wins."""
    if overrides and "data.val_images" in overrides:
        return int(overrides["data.val_images"])
    full = validation_seconds(c, seconds_per_step, facts)
    if facts.n_val <= MIN_VAL_IMAGES or budget <= 0 or full <= VALIDATION_PASS_SHARE * budget:
        return 0
    fits = int(facts.n_val * VALIDATION_PASS_SHARE * budget / full)
    return max(MIN_VAL_IMAGES, fits) if max(MIN_VAL_IMAGES, fits) < facts.n_val else 0


def planned_steps(c: Candidate, seconds_per_step: float, facts: DataFacts, budget: float,
                  overrides: Mapping[str, Any] | None = None) -> tuple[int, int, float]:
    """R10 + R11: (steps, number of validations, seconds per validation) for candidate `c`."""
    images = validation_images(c, seconds_per_step, facts, budget, overrides)
    val_s = validation_seconds(c, seconds_per_step, facts, images)
    n_val = int(min(20, max(2, VALIDATION_SHARE * budget // max(val_s, 1e-6))))
    # the final validation is the last of the n_val; fit's clock re-times the rest of the end work
    train_s = budget - reserve_seconds(val_s, 0.0, budget=budget) - n_val * val_s
    return max(0, int(train_s / seconds_per_step)), n_val, val_s


TEACHER_FORWARD = 4.0 / 3.0  # R17, online teaching: a student step plus the teacher's forward pass (~1/3 of a step)


def distill_settings(overrides: Mapping[str, Any]) -> DistillConfig:
    """The distill.* values the user set, defaults for the rest."""
    return replace(DistillConfig(), **{k.partition(".")[2]: v for k, v in overrides.items() if k.startswith("distill.")})


def student_share(d: DistillConfig, budget_seconds: float, sps: float) -> tuple[float, float]:
    """R17: (the student's training seconds, its seconds per step): the budget after the teacher's share
    (all of it when a teacher artifact teaches); a plain step from cached targets, TEACHER_FORWARD x one
    with the teacher's forward pass on each batch."""
    share = budget_seconds if d.teacher_artifact else (1.0 - d.teacher_share) * budget_seconds
    return share, sps * (TEACHER_FORWARD if d.targets == "online" else 1.0)


def distill_mode(facts: DataFacts, cand: Candidate, sps: float, budget_seconds: float, folds: int,
                 overrides: Mapping[str, Any]) -> tuple[str, str]:
    """R17: ("off", why): the plan does not choose distillation (it has not paid where measured);
    the reason says what the student's half of the budget would get, for a user weighing `--distill on`.
    A teacher artifact the user gave (`--distill-from`) turns it on: it costs the student no steps."""
    d = distill_settings(overrides)
    share, student_sps = student_share(d, budget_seconds, sps)
    steps = planned_steps(cand, student_sps, facts, share, overrides)[0]
    if d.teacher_artifact:
        return "on", (f"on: {d.teacher_artifact} teaches (--distill-from); nothing is trained for it, so the "
                      f"student keeps the whole budget, {steps} steps (R17)")
    if folds > 1:
        return "off", "off: the ensemble is planned instead (R12, R17)"
    target = step_target(budget_seconds, facts)
    if steps < target:
        return "off", (f"off: the student's half of the budget would get {steps} steps, under the step target "
                       f"{target}; steps are worth more than a teacher here (R17)")
    return "off", (f"off: the student's half of the budget would reach the step target ({steps} >= {target}), but "
                   "on DRIVE and CamVid distilled students kept none of their teacher's lead at equal steps "
                   "(docs/benchmarks.md); `--distill on` trains one (R17)")


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
    if distill_settings(overrides).asked:
        return 1, "off: distillation is asked for, and its student is one network (R12, R17)"
    val_s = planned_steps(cand, sps, facts, budget_seconds, overrides)[2]
    two = planned_steps(cand, sps, facts, member_budget(budget_seconds, 2, val_s), overrides)[0]
    if not largest:
        return 1, f"off: a larger model is the better use of this budget (2 folds would get {two} steps each) (R12)"
    for k in (5, 4, 3, 2):
        share = member_budget(budget_seconds, k, val_s)
        member_steps = planned_steps(cand, sps, facts, share, overrides)[0]
        if facts.n_train >= 2 * k and member_steps >= step_target(share, facts):
            return k, (f"the largest model reaches the step target of 1/{k} of the budget ({step_target(share, facts)}): "
                       f"{k} members of {member_steps} steps, one per fold of the training split (R12)")
    if facts.n_train < 4:
        return 1, f"off: {facts.n_train} training images are too few for 2 folds (R12)"
    half = step_target(member_budget(budget_seconds, 2, val_s), facts)
    return 1, f"off: 2 folds would get {two} steps each, under the step target {half} of half the budget (R12)"


def make_plan(fingerprint: Mapping[str, Any], throughput: ThroughputModel, budget_seconds: float,
              overrides: Mapping[str, Any] | None = None, *, n_val: int | None = None,
              timed: frozenset[Candidate] | set = frozenset(), mode: ModeDecision | None = None,
              start: StartFacts | None = None, unlabelled: int = 0) -> Plan:
    """The training plan for this data, machine and budget; see the module docstring for the rules.

    `n_val`: validation images, when the split is known (else from val_keys / val_fraction).
    `timed`: candidates whose seconds/step were measured (marked in the printed table).
    `mode`: the compute mode the throughput was measured in, and why (R14).
    `start`: the weights the run starts from (R15). `unlabelled`: unlabelled images given (R16)."""
    overrides = dict(overrides or {})
    facts = data_facts(fingerprint, overrides, n_val)
    total_budget = budget_seconds
    cheapest = candidates(facts, overrides)[0]
    tuning_steps = planned_steps(cheapest, float(throughput(cheapest)), facts, (1 - PRETRAIN_SHARE) * budget_seconds,
                                 overrides)[0]
    pretrain_seconds, why_pretrain = pretrain_budget(facts, unlabelled, start, budget_seconds, tuning_steps)
    if pretrain_seconds > 0:
        start, budget_seconds = StartFacts("pretrain"), budget_seconds - pretrain_seconds
    fixed = start.pinned(overrides) if start is not None else {}
    continued = start is not None and start.keeps_head  # R15: continued training (else a transfer, or scratch)
    target = step_target(budget_seconds, facts)
    if continued:
        target = int(FINETUNE_STEP_FACTOR * target)
    rows, planned, best, best_i = [], [], None, 0
    for i, c in enumerate(candidates(facts, overrides | fixed)):
        sps = float(throughput(c))
        steps, n_val, val_s = planned_steps(c, sps, facts, budget_seconds, overrides)
        rows.append({"label": c.label(), "seconds_per_step": sps, "steps": steps, "timed": c in timed})
        planned.append((c, sps, steps, n_val, val_s))
        if best is None or steps >= target:
            best, best_i = planned[-1], i
    assert best is not None
    deepened = ""
    if under_topology_depth(best[0], facts):  # R1: the topology's steps never cost the depth
        deep = next((i for i, p in enumerate(planned) if not under_topology_depth(p[0], facts)), None)
        floor = int(TOPOLOGY_MIN_SHARE * min_steps(budget_seconds))
        if deep is not None and planned[deep][2] >= floor:
            best, best_i = planned[deep], deep
            deepened = (f": topology wants the receptive field before the steps, while that rung gets at least "
                        f"{floor}")
    rows[best_i]["chosen"] = True
    cand, sps, steps, n_val, val_s = best
    val_images = validation_images(cand, sps, facts, budget_seconds, overrides)
    sized = {**overrides, "data.val_images": val_images}  # the rest of the plan validates on that sample
    folds, why_folds = ensemble_folds(facts, cand, sps, budget_seconds, best_i == len(rows) - 1, sized)
    if folds > 1:  # steps and validations are per member
        steps, n_val, val_s = planned_steps(cand, sps, facts, member_budget(budget_seconds, folds, val_s), sized)
    distill, why_distill = ("", "") if "distill.mode" in overrides else distill_mode(
        facts, cand, sps, budget_seconds, folds, sized)
    if overrides.get("distill.mode", distill) == "on":  # steps and validations are the student's
        share, student_sps = student_share(distill_settings(sized), budget_seconds, sps)
        steps, n_val, val_s = planned_steps(cand, student_sps, facts, share, sized)
    if "steps" in overrides:
        steps = int(overrides["steps"])
    reached = "reaches" if steps >= target else "is below"
    which = f"the cheapest rung of depth {TOPOLOGY_DEPTH}" if deepened else "the largest candidate"
    why_model = (f"{which} whose {steps} steps in this budget {reached} the step target {target} "
                 f"(R1/R2{'/R15: half of R1, continued training' if continued else ''}"
                 f"{f'; {TOPOLOGY_STEPS:g}x for objects scored by their topology, R13' if facts.touching else ''}; "
                 f"{sps * 1000:.0f} ms/step here){deepened}")
    choices: list[Choice] = []

    def choose(key: str, value: Any, reason: str) -> None:
        if key in fixed:
            what = "the resolution" if key == "data.resolution" else "the architecture"
            choices.append(Choice(key, _plain(fixed[key]), f"{what} of {start.label()} (R15)", PLANNED))
        elif key in overrides:
            choices.append(Choice(key, _plain(overrides[key]), "set explicitly (flag or config file)", USER))
        else:
            choices.append(Choice(key, _plain(value), reason, PLANNED))

    choose("model.base_width", cand.base_width, why_model)
    choose("model.depth", cand.depth, "down-sampling steps of the same ladder rung (R2)" if facts.thin_data
           or receptive_field(cand.depth) >= facts.context else
           f"the rung's, deepened (at most {MAX_DEPTH}) for a receptive field of {receptive_field(cand.depth)} px "
           f"over objects of ~{facts.context:.0f} px (R4)")
    choose("model.norm", *_norm_choice(facts, cand))
    choose("data.resolution", cand.resolution, _resolution_reason(facts, cand, overrides))
    choose("data.patch_size", cand.patch, _patch_reason(facts.at_resolution(cand.resolution), cand))
    choose("data.batch_size", cand.batch, f"keeps ~{cand.pixels_per_step:,} pixels per step for this rung (R3/R4)")
    _loss_choices(choose, facts, overrides)
    _sampling_choice(choose, facts)
    _augment_choices(choose, facts)
    lr = min(2e-3, max(5e-4, 1e-3 * math.sqrt(cand.batch / 8)))
    choose("optim.optimizer", "adamw", "AdamW: robust default for U-Nets trained from scratch (R8)")
    if not continued:
        choose("optim.lr", round(lr, 6), "1e-3 x sqrt(batch/8), clamped to 5e-4..2e-3 (R8)" if start is None else
               "R8's rate, 1e-3 x sqrt(batch/8): a transfer (new head) learns a new task; halved rates made even "
               "a random start lose 0.035 F1 to scratch on DRIVE (R15)")
    else:
        choose("optim.lr", round(FINETUNE_LR_FACTOR * lr, 6),
               f"R8's {lr:.2g} x {FINETUNE_LR_FACTOR}: continued training of the same classes needs smaller steps, "
               "large ones erase what it learned (R15)")
    choose("optim.schedule", "cosine", "cosine decay to 1 %, its length re-fitted to the budget during the run (R8)")
    choose("optim.warmup_steps", int(min(500, max(20, 0.03 * steps))), "3 % of the steps, 20..500 (R8)")
    choose("optim.ema_decay", 0.0, "no weight averaging: the cosine decay already averages the last steps (R8)")
    per = f"each member's 1/{folds} of the budget" if folds > 1 else "budget"
    choose("steps", steps, f"({per} - 3 % reserve - {n_val} validations x {val_s:.1f} s) / step time (R11)")
    choose("data.val_images", val_images,
           f"{val_images} of the {facts.n_val} validation images, evenly spread: a pass over all of them would take "
           f"~{validation_seconds(cand, sps, facts):.0f} s, over {VALIDATION_PASS_SHARE:.0%} of the budget (R10)"
           if val_images else f"all {facts.n_val} validation images: a pass fits in {VALIDATION_PASS_SHARE:.0%} "
           "of the budget (R10)")
    choose("val_every", max(1, steps // n_val), f"{n_val} validations of ~{val_s:.1f} s, ~8 % of the budget; "
           "the best checkpoint on validation Dice is kept (R10)")
    choose("budget_seconds", float(budget_seconds), "the wall-clock budget; fit re-times steps and stops in it (R11)")
    choose("tune_postprocess", "rand" if facts.touching else "dice",
           f"objects ({', '.join(facts.touching)}) touch through a thin background: tuned for the adapted Rand "
           "score, watershed split included (R13)" if facts.touching else
           "tuned on the validation split for pooled Dice, kept only where it helps (R13)")
    choose("tta", "auto", "decided at the end on the validation split: the mean of the flipped/rotated views only "
           "where it beats the plain prediction across the images, at 2-8x the inference cost (R13)")
    choose("ensemble_folds", folds, why_folds)
    choose("distill.mode", distill, why_distill)
    if start is not None:
        _start_choices(choose, start, steps)
    if unlabelled or pretrain_seconds:
        choose("plan.pretrain_seconds", round(pretrain_seconds, 1), why_pretrain)
        if pretrain_seconds:
            choose("plan.pretrain_objective", PRETRAIN_OBJECTIVE,
                   "dense contrastive learning: the closest of three objectives to scratch on one machine (DRIVE, 5 "
                   "labels, 30 min: F1 -0.004, masked-image modelling -0.008, denoising -0.020; docs/benchmarks.md), "
                   "though none beat it there (R16)")
    if mode is not None:
        why_mode = f"{mode.reason} (R14)"
        choose("precision", mode.mode.precision, why_mode)
        choose("memory_format", mode.mode.memory_format, f"measured with the precision: {mode.mode.name} (R14)")
    summary = (f"{len(facts.names)} classes, {facts.n_train} train / {facts.n_val} val images "
               f"{facts.height}x{facts.width}; thin: {', '.join(facts.thin) or 'none'}"
               f"{' (a thin-structure data set)' if facts.thin_data else ''}; objects ~{facts.context:.0f} px; "
               f"{'upright; ' if facts.is_upright else ''}"
               f"rare: {', '.join(facts.rare) or 'none'}")
    if start is not None:
        summary += f"; starts from {start.label()}"
    estimates = {"summary": summary, "seconds_per_step": sps, "steps": steps, "step_target": target,
                 "validations": n_val, "validation_seconds": val_s, "candidate": cand.label(),
                 "ensemble_folds": folds}
    if mode is not None:
        estimates["compute_mode"] = mode.to_dict()
    if pretrain_seconds:
        estimates["pretrain_seconds"] = pretrain_seconds
    return Plan(float(total_budget), tuple(choices), estimates, tuple(rows))


def pretrain_budget(facts: DataFacts, unlabelled: int, start: StartFacts | None, budget: float,
                    tuning_steps: int) -> tuple[float, str]:
    """R16: (seconds of the budget spent on self-supervised pretraining, why); 0 = none.
    `tuning_steps`: what the cheapest candidate would get in the fine-tuning share."""
    if not unlabelled:
        return 0.0, ""
    if start is not None:
        return 0.0, f"no pretraining: the run already starts from {start.label()} (R16)"
    if facts.n_train >= FEW_LABELLED:
        return 0.0, f"no pretraining: {facts.n_train} labelled training images are enough (< {FEW_LABELLED}: R16)"
    if unlabelled < max(MANY_UNLABELLED, UNLABELLED_RATIO * facts.n_train):
        return 0.0, (f"no pretraining: {unlabelled} unlabelled images, under max({MANY_UNLABELLED}, "
                     f"{UNLABELLED_RATIO} x {facts.n_train} labelled); pretraining on 15 DRIVE images (5 labelled) "
                     "lost 0.010 F1 to scratch at 30 minutes: level per step, a quarter of the budget short (R16)")
    target = step_target((1 - PRETRAIN_SHARE) * budget, facts)  # R15: the fine-tuning after it is a transfer (new head)
    if tuning_steps < target:
        return 0.0, (f"no pretraining: fine-tuning in the other {1 - PRETRAIN_SHARE:.0%} of this budget would get "
                     f"{tuning_steps} steps, under its step target {target}; the labelled images need the time (R16)")
    return PRETRAIN_SHARE * budget, (f"{PRETRAIN_SHARE:.0%} of the budget pretrains the encoder on {unlabelled} "
                                     f"unlabelled + {facts.n_train} training images: few labels (< {FEW_LABELLED}), "
                                     f"{unlabelled / max(facts.n_train, 1):.0f}x as many unlabelled; unmeasured at "
                                     "this scale, measured to lose with 3x (R16)")


def _start_choices(choose, start: StartFacts, steps: int) -> None:
    """R15: how the encoder of a pretrained start is protected."""
    if start.keeps_head:
        choose("finetune.encoder_lr_ratio", FINETUNE_ENCODER_LR_RATIO,
               "continued training (the parent's head is kept): discriminative learning rates, the encoder's "
               "features fit the task already, so they move least (R15)")
        choose("finetune.freeze_encoder_steps", 0,
               "the parent's head is kept (same classes): nothing random to protect the encoder from (R15)")
        return
    choose("finetune.encoder_lr_ratio", TRANSFER_ENCODER_LR_RATIO,
           "a transfer (new head): one rate for the whole network once the encoder is unfrozen; on DRIVE the "
           "encoder at 0.5x scored no better, and slowed rates cost a random start 0.035 F1 (R15)")
    choose("finetune.freeze_encoder_steps", int(FINETUNE_FREEZE_FRACTION * steps),
           f"the first {FINETUNE_FREEZE_FRACTION:.0%} of the steps: the new head's random gradients must not "
           "reach the pretrained encoder (R15)")


def _resolution_reason(facts: DataFacts, c: Candidate, overrides: Mapping[str, Any]) -> str:
    if c.resolution == 1.0 and "data.patch_size" in overrides:
        return "native: the patch size you set is in native pixels (R18)"
    if c.resolution == 1.0:
        why = ("a patch covers at least half the frame" if _wide_context(facts) else
               "not a wide-context scene: fine structure is the signal")
        return f"native: {why} (R18)"
    small = facts.at_resolution(c.resolution)
    finer = [r for r in REDUCED_RESOLUTIONS if r > c.resolution]
    why_not = (f" (at {finer[-1]:g}x it would see under {REDUCED_FRAME_SHARE:.0%} of the frame at batch >= "
               f"{BATCHNORM_BATCH})" if finer else "")
    return (f"{c.resolution:g}x the native side ({small.height}x{small.width}): a natural scene whose native patch "
            f"would see under {FRAME_SHARE:.0%} of the {facts.height}x{facts.width} frame; the patch now sees "
            f"{min(1.0, frame_share(c, facts)):.0%} of it{why_not}. "
            "Predictions are resampled back to the native size (R18)")


def _patch_reason(facts: DataFacts, c: Candidate) -> str:
    parts = []
    if not facts.thin_data and facts.context > 0 and facts.context > min(c.patch) / 3:
        parts.append(f"larger patches for context: objects span ~{facts.context:.0f} px")
    if c.patch[0] >= facts.height or c.patch[1] >= facts.width:
        parts.append(f"capped by the image size {facts.height}x{facts.width}")
    return "; ".join(parts) + " (R3/R4)" if parts else "the ladder rung's patch (R2)"


def _cldice_reason(facts: DataFacts, thin: bool) -> str:
    if thin:
        return f"clDice for thin structures ({', '.join(facts.thin)}) (R5)"
    if not facts.thin:
        return "off: no thin foreground structures (R5)"
    if facts.thin_rules:  # a thin-structure data set whose thin class is class 0
        return (f"off: the thin class ({facts.names[0]}) is class 0, and clDice scores the classes after it: here "
                "the thick ones (R5)")
    return (f"off: thin classes ({', '.join(facts.thin)}) are {facts.thin_share:.0%} of the pixels outside the "
            "largest class, not a thin-structure data set (R4/R5)")


def _loss_choices(choose, facts: DataFacts, overrides: Mapping[str, Any]) -> None:
    choose("loss.ce", 1.0, "cross-entropy: calibrated per-pixel probabilities (R5)")
    # the user's Lovász weight, else Lovász for many classes unless the user asked for Dice
    lovasz = overrides.get("loss.lovasz", float(facts.multi_class and not overrides.get("loss.dice")))
    if lovasz:
        choose("loss.dice", 0.0, "off: Lovász scores the overlap instead (R5)")
        choose("loss.lovasz", 1.0, f"Lovász-softmax, the surrogate of the IoU averaged over {facts.num_classes} "
               "classes (R5)")
        choose("loss.lovasz_sample", LOVASZ_SAMPLE, f"on a random {LOVASZ_SAMPLE:.0%} of the pixels each step: "
               "its sort then costs under twice Dice's time instead of seven times (R5)")
    else:
        choose("loss.dice", 1.0, "Dice: overlap of the minority classes, insensitive to imbalance (R5)")
    thin = facts.thin_rules and bool(set(facts.thin) - {facts.names[0]})
    choose("loss.cldice", 0.5 if thin else 0.0, _cldice_reason(facts, thin))
    k = facts.num_classes
    if facts.rare:
        weights = tuple(round(min(10.0, max(1.0, math.sqrt(1.0 / (k * f)))) if f > 0 else 1.0, 3)
                        for f in facts.fractions)
        reason = f"class-weighted CE for rare classes ({', '.join(facts.rare)} < 1 % of pixels) (R5)"
    else:
        weights, reason = (), "uniform: no class under 1 % of pixels (R5)"
    choose("loss.class_weights", weights, reason)
    majority_bg = facts.fractions[0] >= 0.5 and k > 1
    overlap = "Lovász" if lovasz else "Dice"
    choose("loss.dice_include_background", not majority_bg,
           f"{overlap} over foreground classes: background is the majority (R5)" if majority_bg
           else f"background is a minority class: keep it in {overlap} (R5)")


def _sampling_choice(choose, facts: DataFacts) -> None:
    if facts.rare:
        value, why = 0.5, f"half the patches centred on rare-class pixels ({', '.join(facts.rare)})"
    elif len(facts.fractions) > 1 and sum(facts.fractions[1:]) >= 0.5:
        value, why = 0.2, "foreground is the majority: little oversampling"
    elif facts.thin_rules:
        value, why = 0.5, "half the patches centred on foreground pixels (thin structures)"
    else:
        value, why = 0.33, "a third of the patches centred on foreground pixels"
    choose("data.rare_oversample", value, why + " (R6)")


def _augment_choices(choose, facts: DataFacts) -> None:
    few = facts.n_train < 200
    choose("augment.enabled", True, "flips + rot90 + mild geometry/intensity (R7)")
    choose("augment.p", 0.5, "each photometric operation on half the samples (R7)")
    geometry = "rotation and scale as often as the photometric operations" if few \
        else "milder geometry, which resamples thin objects"
    choose("augment.p_geometric", 0.5 if few else 0.3, f"{facts.n_train} training images: {geometry} (R7)")
    lossless = "off: resampling blurs thin structures (R7)"
    thin, wide = facts.thin_rules, _wide_context(facts)
    choose("augment.rotate_degrees", 0.0 if thin else 15.0, lossless if thin else "small rotations (R7)")
    choose("augment.scale", (1.0, 1.0) if thin else (0.75, 1.33) if wide else (0.85, 1.15),
           lossless if thin else f"0.75-1.33x: objects span ~{facts.context:.0f} px, their distance varies (R7)"
           if wide else "±15 % scale (R7)")
    upright = f"the classes sit at different heights (mean rows {facts.upright:.0%} of the height apart): " \
              "the data has an up (R7)"
    choose("augment.flip_vertical", not facts.is_upright, f"off: {upright}" if facts.is_upright
           else "upside-down flips too: no class keeps to one height (R7)")
    choose("augment.rot90", not facts.is_upright, f"off: {upright}" if facts.is_upright else "lossless (R7)")
    for key in ("augment.brightness", "augment.contrast"):
        choose(key, 0.2 if wide else 0.1, "stronger: natural scenes under changing light (R7)" if wide
               else "mild: per-channel normalisation removes gross intensity differences (R7)")
    colour, off = wide and facts.channels > 1, "off: not a colour natural scene (R7)"
    choose("augment.saturation", 0.3 if colour else 0.0,
           "colour scenes under changing light and cameras: saturation 1 ± 0.3 (R7)" if colour else off)
    choose("augment.channel_shift", 0.1 if colour else 0.0,
           "a white-balance shift of ± 0.1 per channel (R7)" if colour else off)
    choose("augment.elastic_alpha", 0.0, "elastic deformation off: costly on CPUs (R7)")


def _norm_choice(facts: DataFacts, cand: Candidate) -> tuple[str, str]:
    """R9: BatchNorm where the batch allows; below it, per-image statistics: GroupNorm for natural scenes
    (it keeps the brightness and colour of whole feature groups), InstanceNorm otherwise."""
    if cand.batch >= BATCHNORM_BATCH:
        return "batch", (f"BatchNorm at batch >= {BATCHNORM_BATCH} (folds into the convs: fast inference; R9: "
                         "instance is often a little more accurate but 1.2x slower fp32, 2x int8)")
    if _wide_context(facts):
        return "group", (f"GroupNorm at batch {cand.batch} (< {BATCHNORM_BATCH}: noisy batch statistics) for a "
                         "natural scene: it keeps what InstanceNorm normalises away per channel (CamVid at equal "
                         "steps: mIoU +0.012, pixel accuracy +0.022) (R9)")
    return "instance", (f"InstanceNorm at batch {cand.batch} (< {BATCHNORM_BATCH}: noisy batch statistics; on DRIVE "
                        "it beat BatchNorm at equal steps) (R9)")


def _wide_context(facts: DataFacts) -> bool:
    """R4/R7: natural scenes -- no thin-structure rules, objects spanning a third of the frame."""
    return not facts.thin_rules and facts.context >= min(facts.height, facts.width) / 3


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
