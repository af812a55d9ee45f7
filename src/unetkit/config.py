"""Typed, strict configuration: one frozen dataclass per concern.

`from_dict(Cls, mapping)` builds a config from plain JSON/YAML values and refuses unknown keys and
wrong types, naming the offending key path (`train.optim.lr: expected float, got 'fast'`).
`to_dict(config)` gives plain JSON values back; the resolved config is stored in the artifact.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from unetkit.errors import ConfigError

C = TypeVar("C")


# ---------------------------------------------------------------- closed sets of names
# Each set of names has one owner, here (no torch, so the command line can offer them as choices
# without loading it): the dataclasses type their fields with these, the library checks values
# against the tuples, `unetkit --help` lists them and a typo fails at parse time.

DataSplit = Literal["train", "val", "test"]  # a data set's own splits (unetkit.data.manifest, evaluate --split)
DATA_SPLITS: tuple[str, ...] = get_args(DataSplit)
Backend = Literal["auto", "torch", "onnx", "compile", "openvino", "openvino-bf16"]  # unetkit.inference.backends
BACKENDS: tuple[str, ...] = get_args(Backend)
TrainPrecision = Literal["auto", "fp32", "bf16"]  # what `unetkit train --precision` accepts
Precision = Literal[TrainPrecision, "fp16"]  # fp16: only "auto" picks it, on a GPU (unetkit.training.modes)
MemoryFormat = Literal["auto", "contiguous", "channels_last"]
PostprocessMetric = Literal["dice", "iou", "rand"]  # what postprocessing is tuned for (unetkit.tuning.postprocess)
POSTPROCESS_METRICS: tuple[str, ...] = get_args(PostprocessMetric)
TunePostprocess = Literal[PostprocessMetric, "off"]
TtaMode = Literal["auto", "on", "off"]  # TrainConfig.tta: decided by the gate, always, never
# the views TTA averages (unetkit.inference.predict.VIEW_SETS), each set inside the next: "mirror" (as is +
# left-right), "flips" (+ upside-down and both: 4), "dihedral" (the 8 flips/quarter turns of the square)
TtaViews = Literal["dihedral", "flips", "mirror"]
TTA_VIEWS: tuple[str, ...] = get_args(TtaViews)
ServedTtaViews = Literal["model", TtaViews]  # ServeConfig.tta_views: "model", the model's own set
DistillMode = Literal["auto", "off", "on"]  # unetkit.training.distill; "auto": the plan decides (R17)
DISTILL_MODES: tuple[str, ...] = get_args(DistillMode)
DistillTeacher = Literal["instance", "wider"]  # the teacher's accuracy lever (unetkit.training.distill)
# how the teacher teaches: "cached", its TTA-averaged probabilities on each training image, computed
# once and cropped/warped with each patch; "online", its logits on each augmented batch (a forward pass per step)
DistillTargets = Literal["cached", "online"]
ExportFormat = Literal["onnx", "openvino"]
RankScore = Literal["entropy", "margin", "tta", "combined"]  # unetkit.active.rank
RANK_SCORES: tuple[str, ...] = get_args(RankScore)
RankAggregate = Literal["mean", "top", "foreground"]
RANK_AGGREGATES: tuple[str, ...] = get_args(RankAggregate)
ServedStage = Literal["staging", "production"]  # registry stages holding at most one version per model
RegistryStage = Literal["candidate", ServedStage, "archived"]  # unetkit.registry.db
REGISTRY_STAGES: tuple[str, ...] = get_args(RegistryStage)
SINGLE_STAGES: tuple[str, ...] = get_args(ServedStage)
AddStage = Literal["candidate", ServedStage]  # where `registry add` may put a new version
# U-Net encoders (unetkit.models.encoders): the built-in conv-block encoder, or an ImageNet backbone
Encoder = Literal["unet", "resnet18", "resnet34", "resnet50",
                  "efficientnet-b0", "efficientnet-b1", "efficientnet-b2", "efficientnet-b3"]
ENCODERS: tuple[str, ...] = get_args(Encoder)
MODEL_PLUGIN_GROUP = "unetkit.models"  # entry-point group of architectures other packages provide
Tracker = Literal["mlflow"]  # experiment trackers `unetkit train --track NAME[:URI]` reports to (unetkit.training.tracking)
TRACKERS: tuple[str, ...] = get_args(Tracker)

# Environment variables (read where the value is used; the command line declares them on its options)
REGISTRY_ENV = "UNETKIT_REGISTRY"  # the registry database (unetkit.registry.location)
REGISTRY_STORE_ENV = "UNETKIT_REGISTRY_STORE"  # the registry's artifact folder
CACHE_DIR_ENV = "UNETKIT_CACHE_DIR"  # --backend auto's measurements (unetkit.inference.backends)
SERVE_ENV_PREFIX = "UNETKIT_SERVE_"  # + a ServeConfig field name, upper case (unetkit.serve.server)
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own: where `--track mlflow` (no URI) and `--to mlflow` write
MLFLOW_EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"  # MLflow's own: the experiment of `--track mlflow` runs
# OpenTelemetry's standard variables that turn tracing of `serve` and `predict` on or off (unetkit.tracing)
OTEL_EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
OTEL_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTEL_PROTOCOL_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
OTEL_DISABLED_ENV = "OTEL_SDK_DISABLED"
OTEL_SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"


# ---------------------------------------------------------------- data


# who set a value of a planned TrainConfig (`TrainConfig.plan`'s choices: unetkit.planning.plan)
PLANNED = "plan"
USER = "user"


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is split and sampled.

    `data` is a data folder (layout detected automatically), a dataset description JSON written by
    `unetkit init-dataset`, or a manifest CSV/JSON of image, mask, roi paths.
    """

    data: str = ""
    val_fraction: float = 0.2
    val_keys: tuple[str, ...] = ()  # explicit validation keys; overrides val_fraction
    # validate on at most this many of the validation split's images, evenly spread (0: all): every pass,
    # in training and at its end (calibration, tuning), so a large split cannot eat the budget (R10)
    val_images: int = 0
    skip_bad: bool = False  # train on the good files when validation finds bad ones
    patch_size: tuple[int, int] = (256, 256)
    batch_size: int = 8
    rare_oversample: float = 0.33  # fraction of patches centred on a pixel of a rare class
    # train at this fraction of the native side (0.5: half): the training images and labels are resampled
    # (`unetkit.data.resample`), the patch is in resampled pixels; validation and every prediction resample
    # the native image and bring the probabilities back (TileConfig.resolution, from the artifact)
    resolution: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    """Synchronized image/mask augmentation (kornia, batched, on the training device)."""

    enabled: bool = True
    flip: bool = True
    flip_vertical: bool = True  # with `flip`, upside-down flips too; off for upright scenes (sky above road)
    rot90: bool = True
    rotate_degrees: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    elastic_alpha: float = 0.0  # 0 disables elastic deformation
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.1
    noise_std: float = 0.02  # in units of the normalized intensity
    blur_sigma: float = 0.0  # 0 disables Gaussian blur
    # colour images only (2+ channels); 0 disables each
    saturation: float = 0.0  # each pixel's distance from its channels' mean scaled by a factor in 1 ± this
    channel_shift: float = 0.0  # one shift per channel (a white-balance change), normalized units
    p: float = 0.5  # probability of each photometric op, and of each geometric one while `p_geometric` is None
    p_geometric: float | None = None  # rotation, scale and elastic alone get this one; None: `p`

    def __post_init__(self) -> None:
        for name in ("p", "p_geometric"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"augment.{name}: expected a probability in [0, 1], got {value}")


# ---------------------------------------------------------------- model


# `ModelConfig.input_norm`: "image" standardizes each input per channel by its own pixels (docs/training.md)
InputNorm = Literal["none", "image"]


@dataclass(frozen=True)
class ModelConfig:
    """A U-Net family member. `arch` names a builder in `unetkit.models.MODELS`, or an architecture
    another package provides through the entry-point group `unetkit.models` (its builder gets this
    config; `options` are its own keyword values).

    `encoder` "unet" is the U-Net's own conv-block encoder; a backbone name (resnet34,
    efficientnet-b0, ...) makes an smp-style U-Net: that backbone's five feature levels, a decoder
    of `base_width * width_mult**level` channels (capped at `max_width`) and a 1x1 head; `depth` is
    then the backbone's (5)."""

    arch: str = "unet"
    encoder: Encoder = "unet"
    in_channels: int = 3
    out_channels: int = 2
    spatial_dims: int = 2
    depth: int = 4  # number of down-sampling steps
    base_width: int = 32
    width_mult: float = 2.0
    max_width: int = 512
    norm: Literal["batch", "group", "instance", "none"] = "batch"
    # "image": each input (a patch, a tile) standardized per channel by its own pixels' mean and std after
    # the data set's normalization -- nnU-Net's per-image z-score: blind to a tile's brightness, contrast
    # and colour cast (`unetkit.models.blocks.standardize`); "none": the data set's normalization only
    input_norm: InputNorm = "none"
    act: Literal["relu", "leaky_relu", "gelu", "silu"] = "relu"
    upsample: Literal["transpose", "bilinear"] = "transpose"
    downsample: Literal["maxpool", "strided"] = "maxpool"  # strided: a learned 2x2 stride-2 conv
    dropout: float = 0.0
    residual: bool = False
    attention: bool = False  # attention gates on the skip connections
    separable: bool = False  # depthwise-separable convolutions ("mobile")
    bottleneck: Literal["none", "aspp", "ppm", "transformer"] = "none"
    transformer_heads: int = 4
    transformer_layers: int = 1
    deep_supervision: bool = False
    ensemble: int = 1  # members of this architecture whose probabilities are averaged (k-fold ensembling, R12)
    options: dict[str, Any] = field(default_factory=dict)  # keyword values of a plugin architecture's builder


# ---------------------------------------------------------------- loss


@dataclass(frozen=True)
class LossConfig:
    """A weighted sum of terms; terms with weight 0 are not computed.

    The weights are the fields named after the losses in `unetkit.losses.LOSSES` (a new loss adds its
    weight here); the other fields are the terms' parameters.
    """

    ce: float = 1.0
    dice: float = 1.0
    focal: float = 0.0
    tversky: float = 0.0
    lovasz: float = 0.0  # Lovász-softmax: the IoU's convex surrogate (functional.lovasz_softmax_loss)
    cldice: float = 0.0
    class_weights: tuple[float, ...] = ()  # for CE; empty = uniform
    focal_gamma: float = 2.0
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    lovasz_sample: float = 1.0  # fraction of the valid pixels Lovász scores per step (a random subset; 1 = all)
    dice_include_background: bool = True  # the classes every overlap term scores: Dice, Tversky and Lovász
    ignore_index: int = 255
    deep_supervision_decay: float = 0.5  # weight of head k is decay**k, normalized

    def __post_init__(self) -> None:
        if not 0 < self.lovasz_sample <= 1:
            raise ConfigError(f"loss.lovasz_sample: expected a fraction of the pixels in (0, 1], got {self.lovasz_sample}")


# ---------------------------------------------------------------- optimisation and training


@dataclass(frozen=True)
class OptimConfig:
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.99  # SGD only
    nesterov: bool = True  # SGD only
    schedule: Literal["poly", "cosine", "constant"] = "cosine"
    warmup_steps: int = 50
    poly_power: float = 0.9
    min_lr_ratio: float = 0.01
    grad_clip: float = 12.0  # 0 disables
    ema_decay: float = 0.0  # exponential moving average of the weights (validated and saved); 0 disables


@dataclass(frozen=True)
class FinetuneConfig:
    """Where a run's weights start (`unetkit.training.finetune`) and how the start is protected.

    `init`: a trained model artifact: its architecture and every weight that fits (the head only
    when the classes are the same, names and count). `pretrained`: encoder weights of the built-in
    U-Net (`unetkit pretrain`'s safetensors file). With a start, the encoder is frozen for the first
    `freeze_encoder_steps` steps (the new head and decoder learn first), then trains at
    `encoder_lr_ratio` x the learning rate (discriminative learning rates)."""

    init: str = ""
    pretrained: str = ""
    freeze_encoder_steps: int = 0
    encoder_lr_ratio: float = 1.0


PretrainObjective = Literal["mim", "denoise", "contrastive"]  # unetkit.training.pretrain
PRETRAIN_OBJECTIVES: tuple[str, ...] = get_args(PretrainObjective)
PretrainKeep = Literal["encoder", "network"]  # what `unetkit pretrain` writes: the encoder, or all but the head
PRETRAIN_KEEPS: tuple[str, ...] = get_args(PretrainKeep)


@dataclass(frozen=True)
class PretrainConfig:
    """`unetkit pretrain`: self-supervised training of the built-in U-Net's encoder on unlabelled images.

    The whole U-Net learns to restore corrupted patches (`mim`: masked `mask_patch`-pixel squares,
    `mask_ratio` of them, scored on the masked pixels; `denoise`: Gaussian noise of `noise_std`
    normalized units), or (`contrastive`) to match each pixel of two recoloured, shifted crops of one
    region (`unetkit.training.contrastive`: `contrastive_points` pixels per crop, InfoNCE at
    `contrastive_temperature`, crops up to `contrastive_shift` of the patch apart). `keep` says what
    is written: the encoder's weights, or (`network`) the encoder's and the decoder's (all but the
    head, which fine-tuning replaces). The architecture fields must be the ones the fine-tuning run
    will use (the planner reads them from the file)."""

    images: str = ""
    out: str = "encoder.safetensors"
    objective: PretrainObjective = "contrastive"  # the closest to scratch of the three on DRIVE (R16)
    budget_seconds: float = 0.0  # 0: run `steps`
    steps: int = 1000
    base_width: int = 16
    depth: int = 4
    norm: Literal["batch", "group", "instance", "none"] = "batch"
    input_norm: InputNorm = "none"  # `ModelConfig.input_norm`: the fine-tuning run's
    patch_size: tuple[int, int] = (128, 128)
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    mask_ratio: float = 0.5
    mask_patch: int = 16
    noise_std: float = 0.5
    contrastive_points: int = 64
    contrastive_temperature: float = 0.2
    contrastive_shift: float = 0.25
    keep: PretrainKeep = "encoder"
    # the fraction of the native side the images are resampled to first (`DataConfig.resolution`): the
    # scale the fine-tuning run trains at, recorded in the file so that run starts there too
    resolution: float = 1.0
    seed: int = 0
    progress: bool = True
    # how the steps compute, as for training (`TrainConfig.precision`): "auto" measures the modes
    precision: TrainPrecision = "auto"
    memory_format: MemoryFormat = "auto"


@dataclass(frozen=True)
class DistillConfig:
    """Distillation (`unetkit.training.distill`): a teacher trained first on `teacher_share` of the
    budget (of `steps` without one), then the configured (fast) student on the rest, its loss
    (1 - weight) x the label loss + weight x T^2 x KL(teacher || student) at temperature T; the
    teacher's distribution per `targets`. `teacher_artifact`: a trained model artifact teaches instead
    (a k-fold ensemble, an InstanceNorm or wider model, one trained elsewhere): no teacher is trained,
    the student gets the whole budget, and "auto" means on."""

    mode: DistillMode = "auto"  # "auto": the plan decides (R17); without a plan, off (on with teacher_artifact)
    teacher: DistillTeacher = "instance"  # instance: the student's net with InstanceNorm; wider: 1.5x width
    teacher_artifact: str = ""  # a model artifact (.unetkit) that teaches; "" = train the `teacher` lever

    @property
    def asked(self) -> bool:
        """Distillation is the user's: asked for (mode on), or a teacher artifact given and not turned off
        ("auto" otherwise leaves it to the plan, R17; unplanned, off)."""
        return self.mode == "on" or (self.mode == "auto" and bool(self.teacher_artifact))
    temperature: float = 2.0
    weight: float = 0.5  # of the soft-target term; the labels' loss gets 1 - weight
    teacher_share: float = 0.5  # of the budget left when the teacher starts
    targets: DistillTargets = "cached"


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 2000  # optimizer steps; with a budget, the planned number within it
    budget_seconds: float = 0.0  # 0 = no wall-clock budget
    val_every: int = 200  # steps between validations
    early_stop_patience: int = 0  # validations without improvement; 0 disables
    # how steps compute (`unetkit.training.modes`): autocast precision and memory format; "auto"
    # chooses by measurement on a CPU (the planner, or a short probe in fit), the fixed rule on a GPU
    precision: Precision = "auto"
    memory_format: MemoryFormat = "auto"
    device: str = "auto"
    seed: int = 0
    out_dir: str = "runs/unetkit"
    nproc: int = 1
    tensorboard: bool = False
    progress: bool = True
    resume: bool = False  # continue from out_dir/checkpoint-last.pt
    plan: dict[str, Any] = field(default_factory=dict)  # the auto-plan (unetkit.planning), stored in the artifact
    # at the end, choose the artifact's postprocessing on the validation split for this score
    # (`unetkit.inference.postprocess.tune_postprocess`); "off" keeps plain arg-max
    tune_postprocess: TunePostprocess = "off"
    # pooled Dice that search may give up for a better score (`tune_postprocess`'s `dice_guard`);
    # None: the metric's default (0.005 for rand, none for dice and iou)
    postprocess_dice_guard: float | None = None
    calibrate: bool = True  # at the end, fit temperature scaling on the validation split (before tuning)
    # at the end, whether inference averages the TTA views (`unetkit.tuning.tta`): "auto" where the
    # gain holds across the validation images, "on" always, "off" never (and nothing measured)
    tta: TtaMode = "auto"
    # at the end, for a model trained at reduced resolution (`data.resolution` < 1), whether inference
    # also predicts each image at a lower and at the native resolution and averages the three
    # (`unetkit.tuning.scales`): "auto" where the gain holds across the validation images, "on", "off"
    multiscale: TtaMode = "auto"
    ensemble_folds: int = 1  # >1: k-fold ensembling (R12): one member per fold of the training split
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # start from trained weights (R15)
    distill: DistillConfig = field(default_factory=DistillConfig)  # a teacher distilled into this model (R17)
    track: str = ""  # experiment tracking: "" off, "mlflow" or "mlflow:URI" (unetkit.training.tracking)


# ---------------------------------------------------------------- inference, export, serving


@dataclass(frozen=True)
class TileConfig:
    """Overlap-tile inference. `tile_size` () means: the artifact's patch size.

    These defaults are the only ones: a model's own tiling (an exported model's plan, an artifact's
    patch size) starts from them, and a caller's choice (`TileChoice`) overrides only what it sets.
    """

    tile_size: tuple[int, ...] = ()
    overlap: float = 0.25
    blend: Literal["gaussian", "constant"] = "gaussian"
    sigma_scale: float = 0.125  # Gaussian sigma as a fraction of the tile size
    batch_size: int = 4
    padding: Literal["reflect", "constant", "replicate"] = "reflect"
    tta: bool = False  # average flips and rot90
    # the TTA views (`TtaViews`): "dihedral" (the 8 flips/rotations of the square), "flips" (4: half the
    # forward passes, most of the gain) or "mirror" (as is + left-right), the only ones a model trained
    # upright (augment.flip_vertical off: sky above road) saw
    tta_views: TtaViews = "dihedral"
    # the views' mean is recalibrated as softmax(log(mean) / T) with this T (fitted when TTA is measured:
    # the mean of calibrated predictions that disagree is less confident than it is right); TTA on only
    tta_temperature: float = 1.0
    activation: Literal["softmax", "none"] = "softmax"  # "none": predictor returns probabilities
    # the model sees images at this fraction of their native side (an artifact trained so: its own
    # `resolution`): each image is resampled, predicted, and its probabilities resized to the native grid
    resolution: float = 1.0
    # multi-scale inference: predict at each of these fractions of the native side (each in (0, 1])
    # and average the probabilities on the native grid; () = `resolution` alone
    resolutions: tuple[float, ...] = ()
    # ... whose mean is recalibrated as softmax(log(mean) / T) with this T (fitted with the scales: the
    # mean of calibrated predictions is less confident than it is right)
    resolutions_temperature: float = 1.0


# The tiling a caller asks of a model (resolved by `unetkit.inference.files.tile_config_for`):
# a mapping of only the TileConfig fields the user set (the rest come from the model: an exported
# model's plan, an artifact's patch size, else TileConfig's defaults); a complete TileConfig (every
# field chosen, an empty tile size leaving the size to the model); or None: the model's own tiling.
TileChoice = Mapping[str, Any] | TileConfig | None

PredictEngine = Literal["local", "ray"]  # where `unetkit predict` runs: this process, or a Ray cluster
StreamFormat = Literal["tif", "zarr"]  # the outputs of a streamed (gigapixel) input: tiled BigTIFF or zarr
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own variable: the cluster `predict --engine ray` joins


@dataclass(frozen=True)
class OutputConfig:
    """What `unetkit predict` writes for each input (`unetkit.inference.files`).

    An input too large to predict in memory (more pixels than `data.io`'s decoding limit, or an
    in-memory footprint above `max_memory` bytes) is streamed when its format allows it (a tiled or
    striped TIFF / OME-TIFF, a zarr array): its mask, and with `probabilities` its `(H, W, K)`
    float16 probabilities, are written as a tiled BigTIFF or a zarr store (`stream_format`), with
    the source's GeoTIFF tags. Colour masks, overlays, GeoJSON and COCO need the whole label map in
    memory and are written for in-memory inputs only."""

    colour: bool = False
    probabilities: bool = False
    overlays: bool = False
    geojson: bool = False
    coco: bool = False
    stream_format: StreamFormat = "tif"
    max_memory: int | None = None


@dataclass(frozen=True)
class PostprocessConfig:
    """Clean-up of a predicted label map (`unetkit.inference.postprocess`); stored in the artifact.

    Per-class tuples are indexed by class index: `()` means off for every class, 0/False off for
    that class. Per foreground class the ops run in this order: watershed split, opening, closing,
    hole filling, small-component removal, keep-largest. `unetkit tune-postprocess` picks them on
    validation data, and training does so at its end (`TrainConfig.tune_postprocess`).
    """

    threshold: float | None = None  # binary models: class 1 where p(class 1) >= threshold; None: arg-max
    # objects touching through a thin background (cells and membranes): grow seeds (components of
    # p(class) >= this probability; 0 = off) over 1 - p(class) by watershed; the class becomes every
    # basin except the lines where basins meet, plus the background within `watershed_band` px of a line
    watershed: tuple[float, ...] = ()
    watershed_band: tuple[int, ...] = ()  # predicted background kept this close (px) to a dividing line
    watershed_min_seed: tuple[int, ...] = ()  # seeds of fewer pixels are dropped (their pixels join a neighbour)
    opening: tuple[int, ...] = ()  # disk radius in pixels
    closing: tuple[int, ...] = ()  # disk radius in pixels
    fill_holes: tuple[bool, ...] = ()  # fill background enclosed by the class
    min_size: tuple[int, ...] = ()  # remove 8-connected components with fewer pixels
    keep_largest: tuple[bool, ...] = ()  # keep only the largest component

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"postprocess.threshold: expected a probability in (0, 1), got {self.threshold}")
        if any(not 0.0 <= v < 1.0 for v in self.watershed):
            raise ConfigError(f"postprocess.watershed: seed probabilities must be in [0, 1) (0 = off), got {list(self.watershed)}")
        for name in ("opening", "closing", "min_size", "watershed_band", "watershed_min_seed"):
            if any(v < 0 for v in getattr(self, name)):
                raise ConfigError(f"postprocess.{name}: values must be >= 0, got {list(getattr(self, name))}")


# a reduced-precision model (bf16, int8) must give fp32's label to at least this fraction of the
# pixels it is checked on (`inference.gate`, the int8 export's gate)
MIN_AGREEMENT = 0.995


@dataclass(frozen=True)
class ExportConfig:
    format: ExportFormat = "onnx"  # openvino: an IR model.xml + model.bin (unetkit[openvino])
    opset: int = 17
    int8: bool = False
    int8_gate: float = 0.005  # refuse int8 when validation Dice/mIoU drops more than this
    int8_agreement: float = MIN_AGREEMENT  # ... or when fewer validation pixels keep fp32's label
    calibration_images: int = 16
    parity_tolerance: float = 1e-4


DRIFT_THRESHOLD = 0.2  # PSI above which a drift score means drift; why 0.2: unetkit.monitor.drift


@dataclass(frozen=True)
class ServeConfig:
    """`unetkit serve`: settings from flags, a JSON/YAML file or UNETKIT_SERVE_* variables."""

    artifact: str = ""  # the primary model artifact
    registry: str = ""  # instead: serve what this model registry (path or URL) holds in `stage`, following it
    stage: ServedStage = "production"
    model_name: str = ""  # the registry's model to serve (needed when several have a version in `stage`)
    registry_poll_seconds: float = 5.0  # how often the registry is checked for a new version in `stage`
    host: str = "127.0.0.1"
    port: int = 8000
    backend: Backend = "torch"
    # the views TTA averages when it runs (the model's choice or a request's `tta`): "model", those its
    # training showed it; "flips" halves a dihedral model's TTA forward passes (no view it was not trained on)
    tta_views: ServedTtaViews = "model"
    tile_overlap: float = TileConfig.overlap  # tiles of one request overlap this much (TileConfig owns the default)
    max_batch_size: int = 8  # tiles per forward pass, packed across requests
    max_wait_ms: float = 5.0  # how long a partial batch waits for tiles of other requests
    max_queue: int = 256  # tiles waiting for the model; beyond: 503 with Retry-After
    max_inflight: int = 32  # segment requests being processed at once; beyond: 503
    max_inflight_pixels: int = 16_000_000  # image pixels decoded/segmented at once (bounds memory)
    queue_timeout_seconds: float = 30.0  # how long a request may wait for that budget; then 503
    retry_after_seconds: int = 1
    max_body_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 16_000_000  # one image; at most max_inflight_pixels, or it would run beyond that budget
    token: str = ""  # bearer token; empty disables auth (prefer token_file or UNETKIT_SERVE_TOKEN)
    token_file: str = ""  # hashed tokens with scopes, one per line (see serve/auth.py); re-read when it changes
    canary_artifact: str = ""
    canary_percent: float = 0.0
    shadow: bool = False  # the canary artifact only runs on copies of requests, for comparison
    seed: int = 0  # traffic-split and sampling RNG
    sample_dir: str = ""
    sample_rate: float = 0.0
    sample_max_bytes: int = 256 * 1024 * 1024
    drain_seconds: float = 20.0  # graceful shutdown: how long in-flight requests may finish
    log_level: str = "info"
    drift_window: int = 200  # drift gauges: the last N served images are compared with the baseline
    drift_min_images: int = 20  # no drift score until the window holds this many images
    drift_every: int = 10  # recompute the score every N images
    drift_threshold: float = DRIFT_THRESHOLD
    # signed artifacts (unetkit.signing): refuse what was not signed by a trusted key, or not the pinned file
    trusted_keys: str = ""  # folder of trusted Ed25519 public keys (*.pub) or one .pub file
    require_signature: bool = False  # refuse unsigned artifacts (needs trusted_keys); without it only signed ones are checked
    sha256: str = ""  # pin: serve `artifact` only if the file's sha256 is this (not with a registry: it pins by sha256 itself)
    # hardening: what an untrusted client may cost (docs/serving.md, "Threat model and hardening")
    docs: bool = False  # serve /docs, /redoc and /openapi.json (off: the API description is not public)
    public_metrics: bool = False  # /metrics without a token, for scrapers that cannot send one
    header_timeout_seconds: float = 10.0  # a connection must send a request's headers within this; then closed
    max_header_bytes: int = 64 * 1024  # request line + headers of one request; beyond: 431 and closed
    keepalive_timeout_seconds: int = 5  # an idle keep-alive connection is closed after this
    max_connections: int = 512  # open connections; a request beyond gets 503 (uvicorn limit_concurrency)
    body_timeout_seconds: float = 60.0  # the whole request body must arrive within this; then 408
    request_timeout_seconds: float = 120.0  # body, queueing and inference of one request; then 503
    max_inflight_body_bytes: int = 256 * 1024 * 1024  # request bodies held in memory at once; beyond: 503
    max_output_values: int = 2_000_000  # RLE runs + polygon vertices one JSON answer may hold; beyond: 413
    sample_max_age_days: float = 30.0  # samples older than this are deleted


@dataclass(frozen=True)
class RankConfig:
    """`unetkit rank`: how unlabelled images are scored and ordered (`unetkit.active`).

    Every per-pixel measure lies in [0, 1]; `aggregate` turns a map into one number per image:
    "mean" over all pixels, "top" the mean of the `top_fraction` most uncertain pixels, or
    "foreground" the mean over pixels whose non-background probability is >= `foreground_min_prob`.
    """

    by: RankScore = "combined"
    aggregate: RankAggregate = "mean"
    top_fraction: float = 0.05
    background: int = 0  # the class index "foreground" leaves out
    foreground_min_prob: float = 0.1
    tta: bool = True  # predict the TTA views (the scorer's TileConfig.tta_views): disagreement, averaged predictions
    dedup_bits: int = 16  # near-duplicate: difference hashes (256 bits) at most this many bits apart; 0: off
    recursive: bool = False

    def __post_init__(self) -> None:
        if self.by not in RANK_SCORES:
            raise ConfigError(f"rank.by: '{self.by}' is not a score; expected one of {', '.join(RANK_SCORES)}")
        if self.aggregate not in RANK_AGGREGATES:
            raise ConfigError(f"rank.aggregate: '{self.aggregate}' is not an aggregate; expected one of {', '.join(RANK_AGGREGATES)}")
        if self.by == "tta" and not self.tta:
            raise ConfigError("rank.by: 'tta' needs the TTA views; turn tta on (--tta) or rank by entropy, margin or combined")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError(f"rank.top_fraction: expected a fraction in (0, 1], got {self.top_fraction}")
        if not 0.0 <= self.foreground_min_prob <= 1.0:
            raise ConfigError(f"rank.foreground_min_prob: expected a probability in [0, 1], got {self.foreground_min_prob}")
        if not 0 <= self.dedup_bits <= 256:
            raise ConfigError(f"rank.dedup_bits: expected 0 (off) to 256 bits, got {self.dedup_bits}")


# ---------------------------------------------------------------- strict conversion


def from_dict(cls: type[C], data: Any, path: str = "") -> C:
    """Build dataclass `cls` from plain values, refusing unknown keys and wrong types."""
    return _convert(cls, data, path or cls.__name__)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-ready values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def load_json(cls: type[C], path: str | Path) -> C:
    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    return from_dict(cls, raw, str(p))


def replace(config: C, **changes: Any) -> C:
    """`dataclasses.replace` that accepts dotted keys: replace(cfg, **{"optim.lr": 1e-3})."""
    nested: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    for key in [*flat, *nested]:
        if key not in names:
            raise ConfigError(f"{type(config).__name__}: unknown key '{key}'; expected one of {sorted(names)}")
    for head, sub in nested.items():
        flat[head] = replace(getattr(config, head), **sub)
    merged = to_dict(config) | {k: (to_dict(v) if dataclasses.is_dataclass(v) else v) for k, v in flat.items()}
    return from_dict(type(config), merged)


def parse_duration(text: str | float | int) -> float:
    """'90s', '30m', '2h', '1h30m', '45' (seconds) -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or "".join(a + b for a, b in parts) != s.replace(" ", ""):
        raise ConfigError(f"budget '{text}': expected a duration such as 90s, 30m, 2h or 1h30m")
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(n) * unit[u] for n, u in parts)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(tp: Any, value: Any, path: str) -> Any:
    if isinstance(tp, str):  # unresolved forward reference
        tp = eval(tp, vars(typing) | globals())  # noqa: S307 - our own annotations only
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and type(value) is tp:
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"{path}: unknown key '{unknown[0]}'; expected one of {sorted(fields)}")
        kwargs = {k: _convert(hints[k], v, f"{path}.{k}") for k, v in value.items()}
        return tp(**kwargs)
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: expected one of {list(allowed)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _convert(arg, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if errors else f"{path}: invalid value {value!r}")
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is Any:
        return value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")
