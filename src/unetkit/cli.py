"""The `unetkit` command line: each command a few lines over the library.

User errors (bad path, option or data) print one line on stderr and exit with status 2; every
exit status is listed in EXIT_CODES (shown by `unetkit --help`, docs/cli.md). Choice options take
their values from the closed sets `unetkit.config` owns (typer checks them at parse time), and an
option that a variable may set declares it (`envvar=`), so `--help` shows it.
Each command imports the stages it uses inside its body (lazy on purpose): `unetkit --help` and
shell completion must not load torch.

Defaults have one owner: an option that a config dataclass also sets takes its default from that
dataclass, and an option that overrides a model's own value (tiling: an exported model's plan, an
artifact's patch size) defaults to None, "not set", so only what the user typed overrides it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from unetkit import __version__
from unetkit.config import (
    CACHE_DIR_ENV,
    DRIFT_THRESHOLD,
    MLFLOW_EXPERIMENT_ENV,
    MLFLOW_URI_ENV,
    OTEL_ENDPOINT_ENVS,
    RAY_ADDRESS_ENV,
    REGISTRY_ENV,
    REGISTRY_STORE_ENV,
    SERVE_ENV_PREFIX,
    Backend,
    DataSplit,
    DistillMode,
    Encoder,
    ExportConfig,
    ExportFormat,
    InputNorm,
    ModelConfig,
    PostprocessMetric,
    PredictEngine,
    PretrainConfig,
    PretrainKeep,
    PretrainObjective,
    RankAggregate,
    RankConfig,
    RankScore,
    ServeConfig,
    ServedStage,
    ServedTtaViews,
    StreamFormat,
    TileConfig,
    TrainPrecision,
    TtaMode,
    TtaViews,
    TunePostprocess,
)
from unetkit.errors import ConfigError, GateRefused, UnetkitError, WorkersLost
from unetkit.registry.commands import RequireSignatureOpt, TrustedKeysOpt, registry_app

# Exit statuses: one meaning each, for scripts, CI and cron (docs/cli.md says the same).
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran and its check found a problem: `validate` bad files, `drift` drift
EXIT_USAGE = 2  # a usage or user error: unknown option or choice, bad path, bad data, bad config
EXIT_GATE_REFUSED = 3  # a quality gate refused the result: export --int8 accuracy drop, registry promotion
EXIT_WORKERS_LOST = 4  # a distributed run lost workers beyond its retries: named inputs not predicted; rerun to finish
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_CODES = {EXIT_OK: "success", EXIT_CHECK_FAILED: "a check found a problem (validate: bad files; drift: drift)",
              EXIT_USAGE: "usage or user error (bad option, choice, path, data or config), one line on stderr",
              EXIT_GATE_REFUSED: "a quality gate refused the result (export --int8 accuracy drop, "
                                 "registry add/promote worse than production)",
              EXIT_WORKERS_LOST: "predict --engine ray: workers died more often than the retries allow; the inputs named "
                                 "were not predicted, the others were (rerun the command to finish, finished ones are skipped)",
              EXIT_INTERRUPTED: "interrupted (Ctrl-C)"}
# Variables read by more than one command or outside any option (serve's own are on its options).
ENVIRONMENT = {REGISTRY_ENV: "registry database (registry commands' --registry)",
               REGISTRY_STORE_ENV: "registry artifact folder (registry commands' --store)",
               CACHE_DIR_ENV: "where --backend auto keeps its measurements (default ~/.cache/unetkit)",
               f"{SERVE_ENV_PREFIX}<FIELD>": "any ServeConfig field of `unetkit serve` (e.g. UNETKIT_SERVE_TOKEN)",
               MLFLOW_URI_ENV: "MLflow store of train --track mlflow and registry export --to mlflow",
               MLFLOW_EXPERIMENT_ENV: "MLflow experiment of those runs (default unetkit)",
               OTEL_ENDPOINT_ENVS[1]: "OTLP/HTTP collector: turns serve's OpenTelemetry traces on (and OTEL_*)"}
EPILOG = "\b\nExit status:\n" + "\n".join(f"  {code:<4}{text}" for code, text in EXIT_CODES.items()) + \
    "\n\n\b\nEnvironment:\n" + "\n".join(f"  {name:<28}{text}" for name, text in ENVIRONMENT.items()) + \
    "\n\nShell completion: unetkit --install-completion (bash, zsh, fish, PowerShell)."

app = typer.Typer(
    name="unetkit",
    help="From a folder of labelled images to a fast, calibrated U-Net segmentation model.\n\n"
    "Typical path: unetkit validate DATA -> unetkit train DATA --budget 30m -> "
    "unetkit evaluate MODEL DATA -> unetkit predict MODEL IMAGES --out DIR.",
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"unetkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass

BudgetOpt = Annotated[
    str | None,
    typer.Option("--budget", "--time-budget", help="Wall-clock training budget: 90s, 30m, 2h or 1h30m."),
]
# Options several commands share: one definition each, so their names and help stay the same.
ModelArg = Annotated[Path, typer.Argument(help="Model artifact (model.unetkit).")]
RunModelArg = Annotated[Path, typer.Argument(
    help="Model artifact (model.unetkit), or an exported model.onnx / model.int8.onnx / OpenVINO model.xml with its "
         "plan (.onnx.json / .xml.json) beside it.")]
TrainDataArg = Annotated[str, typer.Argument(help="Data folder, dataset description JSON or manifest.")]
KeysOpt = Annotated[str | None, typer.Option(help="Only these comma-separated sample keys.")]
BackendOpt = Annotated[Backend, typer.Option(
    help="Inference backend; auto measures the others on this machine once (cached in $UNETKIT_CACHE_DIR).")]
# Tiling options default to "not set": the model's own tiling (an exported model's plan, an
# artifact's patch size and TileConfig's defaults) holds for whatever the user leaves out.
TileOpt = Annotated[int | None, typer.Option(
    help="Tile size.  [default: from the model's plan, else the model's patch size].")]
OverlapOpt = Annotated[float | None, typer.Option(
    help=f"Tile overlap fraction.  [default: from the model's plan, else {TileConfig.overlap}].")]
TtaOpt = Annotated[bool | None, typer.Option(
    "--tta/--no-tta", help="Average flips and rotations (2-8x slower).  [default: the model's own choice: "
    "training turns it on where it helped the validation images; an exported model's plan records it].")]
TtaViewsOpt = Annotated[TtaViews | None, typer.Option(
    "--tta-views", help="Which views TTA averages (turns TTA on unless --no-tta): dihedral (8 flips/turns), flips "
    "(4: half the forward passes, most of the gain) or mirror (2); only views the model was trained on.  "
    "[default: the model's own: mirror for a model trained upright, else dihedral]")]
TrainTtaOpt = Annotated[TtaMode | None, typer.Option(
    "--tta", help="At the end of training, whether the model predicts with test-time augmentation (the mean of "
    "its flipped/rotated views, 2-8x the inference cost): auto turns it on only where the gain holds across "
    "the validation images (paired bootstrap, at least 3 images), on always, off never.  [default: auto]")]
ResolutionsOpt = Annotated[str | None, typer.Option(
    "--resolutions", metavar="R1,R2,...", help="Multi-scale inference: predict each image at these fractions of its "
    "native side, e.g. 0.5,0.75,1, and average the probabilities (one value: that resolution alone). Streamed "
    "(gigapixel) inputs take one.  [default: the model's own: training adopts 2/3 of its resolution, it and "
    "native where that helped the validation images, else its resolution alone]")]
TrainMultiscaleOpt = Annotated[TtaMode | None, typer.Option(
    "--multiscale", help="At the end of training a model at reduced resolution (--resolution < 1), whether it "
    "predicts each image also at 2/3 of that and at native resolution and averages them (about 3x the inference): "
    "auto only where the gain holds across the validation images, on always, off never.  [default: auto]")]
LabelledDataArg = Annotated[str, typer.Argument(help="Labelled validation data: folder, dataset description or manifest.")]
TunedModelArg = Annotated[Path, typer.Argument(help="Model artifact (updated in place unless --out); calibrate first.")]
ArchOpt = Annotated[str | None, typer.Option(help="Model preset, see `unetkit models`.")]
PatchOpt = Annotated[int | None, typer.Option(help="Square patch size.")]
BatchOpt = Annotated[int | None, typer.Option(help="Global batch size.")]
ResolutionOpt = Annotated[float | None, typer.Option(
    help="Train at this fraction of the images' native side (0.5: half; the patch is in resampled pixels). "
         "The artifact records it: validation, evaluate, predict and serve resample each image alike and "
         "return labels at its native size.  [default: 1; with --budget, rule R18 chooses 0.75 or 0.5 for "
         "natural scenes]")]
LrOpt = Annotated[float | None, typer.Option(help="Peak learning rate.")]
ValKeysOpt = Annotated[str | None, typer.Option(help="Comma-separated sample keys to validate on.")]
ValFractionOpt = Annotated[float | None, typer.Option(help="Fraction held out for validation.")]
PostprocessOpt = Annotated[TunePostprocess | None, typer.Option(
    "--postprocess", help="Tune the model's postprocessing on the validation split at the end of training for "
    "dice, iou or rand (objects: adapted Rand score, adds a watershed split), or off (plain arg-max). "
    "Default: planned with --budget (rand for touching objects, else dice), else off.")]
DiceGuardOpt = Annotated[float | None, typer.Option(
    "--dice-guard", min=0.0, help="For rand: pooled Dice the postprocessing search may give up for fewer split and "
    "merged objects (default 0.005). Looser guards trade membrane pixels for topology: on ISBI 2012, 0.02 lowered the "
    "held-out Rand error by ~0.01 and membrane F1 by ~0.1 (docs/benchmarks.md).")]
PrecisionOpt = Annotated[TrainPrecision | None, typer.Option(
    "--precision", help="Training precision: auto, fp32 or bf16. auto measures on this machine: the plan (or, "
    "without one, a short probe on runs of 1000+ steps) times fp32 and bf16 autocast, each NCHW and "
    "channels_last, and takes the fastest that trains healthily (finite, loss within 10 % of fp32's); a CPU "
    "without native bf16 keeps fp32. GPUs: auto = bf16 where supported, else fp16. Weights stay fp32.")]
DistillOpt = Annotated[DistillMode | None, typer.Option(
    "--distill", help="Distillation: train a more accurate teacher first (InstanceNorm; see distill.* in a config "
    "file), then this fast network learning from its soft targets and the labels; the artifact records both "
    "validation scores. auto: the plan decides (R17; it has kept it off: on DRIVE and CamVid students kept none "
    "of their teacher's lead), on with --distill-from. Default: auto.")]
DistillFromOpt = Annotated[Path | None, typer.Option(
    "--distill-from", metavar="MODEL", help="Distil this trained model artifact (e.g. a k-fold ensemble, an "
    "InstanceNorm or wider model) into the network trained here: nothing is trained for the teacher, the whole "
    "budget is the student's. It must predict DATA's classes, in order, from the same channels; its sha256 goes "
    "into the lineage. See docs/training.md, \"Distillation\".")]
EncoderOpt = Annotated[Encoder | None, typer.Option(
    "--encoder", help="The U-Net's encoder: unet (its own conv blocks, the default) or an ImageNet backbone "
    "(resnet18/34/50, efficientnet-b0..b3) under an smp-style decoder; see docs/training.md.")]
PretrainedOpt = Annotated[Path | None, typer.Option(
    "--pretrained", help="Encoder weights to start from, a local file: torchvision or timm ResNet/EfficientNet "
    "state dicts (.pth/.pt, read weights-only) or safetensors, or unetkit's own encoder layout (`encoder.*` keys, "
    "as `unetkit pretrain` writes: its architecture then comes from the file). ImageNet weights also set the input "
    "normalization to ImageNet's. The decoder and head are trained from scratch.")]
EnsembleOpt = Annotated[int | None, typer.Option(
    "--ensemble", help="k-fold ensembling: train K members, each on all but one fold of the training split and "
    "validated on that fold, and average their probabilities (K x the inference cost). 1 = one model. "
    "Default: planned with --budget (only once the largest model saturates), else 1.")]


InitOpt = Annotated[Path | None, typer.Option(
    "--init", help="Fine-tune: start from this trained model artifact (its architecture and weights; the head is "
    "re-initialized when DATA's classes differ). Its sha256 is recorded as the new model's parent.")]


Sha256Opt = Annotated[str | None, typer.Option(
    "--sha256", help="Use the artifact only if the file's sha256 is this (sha256sum MODEL).")]


def _load_run_model(model: Path, trusted_keys: str | None, require_signature: bool, sha256: str | None) -> Any:
    """An artifact (its pin and signature checked when asked for) or an exported model (refused with either)."""
    from unetkit.export.deployed import load_model
    from unetkit.signing import TrustPolicy

    return load_model(model, sha256=sha256, trust=TrustPolicy.load(trusted_keys, require_signature))


def _keys(text: str | None) -> list[str] | None:
    return [k.strip() for k in text.split(",") if k.strip()] if text else None


def _split_keys(spec: Any, name: str, data: str, keys: list[str] | None) -> list[str]:
    """The keys of the data set's split `name` (and of --keys, when both are given); a split the data
    set lacks is one line listing those it has."""
    splits = spec.split_map
    if name not in splits:
        have = ", ".join(f"{n} ({len(k)})" for n, k in splits.items()) or "none (score all with no --split, or --keys)"
        unlabelled = "".join(f"; {where} holds {n} unlabelled images (nothing to score)" for where, n in spec.unlabelled)
        raise UnetkitError(f"--split {name}: {data} has no {name} split; its splits: {have}{unlabelled}")
    chosen = [k for k in splits[name] if not keys or k in keys]
    if not chosen:
        raise UnetkitError(f"--split {name} and --keys share no sample")
    return chosen


def _tile_settings(tile: int | None, overlap: float | None, tta: bool | None = None,
                   tta_views: str | None = None, resolutions: str | None = None) -> dict[str, Any]:
    """The TileConfig fields the user set (see `unetkit.config.TileChoice`); the model decides the rest.
    Naming the views asks for TTA unless --no-tta says otherwise; one --resolutions value is that
    resolution alone."""
    if tta_views is not None and tta is None:
        tta = True
    settings = {"tile_size": (tile, tile) if tile else None, "overlap": overlap, "tta": tta, "tta_views": tta_views}
    if resolutions is not None:
        values = _resolutions(resolutions)
        settings |= {"resolution": values[0], "resolutions": ()} if len(values) == 1 else {"resolutions": values}
    return {name: value for name, value in settings.items() if value is not None}


def _resolutions(text: str) -> tuple[float, ...]:
    from unetkit.data.resample import check_resolution

    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--resolutions {text!r}: expected comma-separated fractions of the native side, "
                          "e.g. 0.5,0.75,1") from None
    if not values:
        raise ConfigError("--resolutions: expected at least one fraction of the native side, e.g. 0.75")
    return tuple(check_resolution(v, "--resolutions") for v in values)


def _echo_json(data: object, path: Path | None) -> None:
    text = json.dumps(data, indent=2, default=float)
    if path:
        from unetkit.data.io import write_text_atomic

        write_text_atomic(path, text + "\n")
        typer.echo(f"wrote {path}")


# ---------------------------------------------------------------- data


@app.command("init-dataset")
def init_dataset(
    data: Annotated[Path, typer.Argument(help="Data folder (images + masks, DRIVE's training/, CamVid's release with "
                                         "train.txt, Pascal VOC/CVAT, nnU-Net raw) or a manifest CSV/JSON.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the description (default DATA/unetkit-dataset.json, "
                                             "or beside a manifest).")] = None,
    names: Annotated[str | None, typer.Option(help="Class names in index order, comma-separated (after --ignore).")] = None,
    ignore: Annotated[list[str] | None, typer.Option(help="A mask value (or r,g,b colour) to ignore, e.g. a void "
                                                     "label; repeat for several.")] = None,
    colors: Annotated[str | None, typer.Option(help="Display colours in class order: #rrggbb,#rrggbb,...")] = None,
) -> None:
    """Inspect a data folder or manifest, detect its layout, splits and classes, write a dataset description JSON."""
    from unetkit.data.fingerprint import fingerprint
    from unetkit.data.pairing import pair_samples
    from unetkit.data.spec import SPEC_FILENAME, load_spec, parse_color, parse_value, save_spec, with_classes
    from unetkit.data.summary import dataset_summary, format_fingerprint

    spec = load_spec(data)
    spec = with_classes(
        spec,
        names=[n.strip() for n in names.split(",")] if names else None,
        ignore=[parse_value(v, "--ignore") for v in ignore or ()],
        colors=[parse_color(c, "--colors") for c in colors.split(",")] if colors else None,
    )
    samples = pair_samples(spec)
    typer.echo(dataset_summary(spec, samples))
    complete = [s for s in samples if s.complete]
    if complete:
        typer.echo(format_fingerprint(fingerprint(spec, complete)))
    target = out or (data if data.is_dir() else data.parent) / SPEC_FILENAME
    save_spec(spec, target)
    typer.echo(f"wrote {target} (edit class names, colours or patterns there)")


@app.command()
def validate(
    data: Annotated[Path, typer.Argument(help="Data folder, dataset description JSON or manifest CSV/JSON.")],
) -> None:
    """Check every image/mask pair and report each bad file with what is wrong."""
    from unetkit.data.pairing import pair_samples
    from unetkit.data.spec import load_spec
    from unetkit.data.validate import validate as run_validate

    spec = load_spec(data)
    if spec.layout or spec.splits:  # say how a published layout was read
        typer.echo(f"{spec.source}; {spec.describe_splits()}")
    report = run_validate(spec, pair_samples(spec))
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


# ---------------------------------------------------------------- models


@app.command()
def models(
    size: Annotated[int, typer.Option(help="Input size for the GFLOPs column.")] = 512,
    in_channels: Annotated[int, typer.Option(help="Input channels.")] = ModelConfig.in_channels,
    classes: Annotated[int, typer.Option(help="Output classes.")] = ModelConfig.out_channels,
) -> None:
    """List the U-Net family: name, parameters and GFLOPs at SIZE x SIZE."""
    from unetkit.models.factory import models_table

    rows = models_table(in_channels=in_channels, out_channels=classes, size=size)
    typer.echo(f"{'name':<20}{'params':>12}{f'GFLOPs@{size}':>16}  description")
    for r in rows:
        typer.echo(f"{r['name']:<20}{r['params'] / 1e6:>11.2f}M{r['gflops']:>16.1f}  {r.get('description', '')}")


# ---------------------------------------------------------------- training


@app.command()
def train(
    data: TrainDataArg,
    budget: BudgetOpt = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (ignored with --budget, which plans them).")] = None,
    config: Annotated[Path | None, typer.Option(help="TrainConfig JSON; flags override it.")] = None,
    arch: ArchOpt = None,
    patch: PatchOpt = None,
    batch: BatchOpt = None,
    resolution: ResolutionOpt = None,
    lr: LrOpt = None,
    val_keys: ValKeysOpt = None,
    val_fraction: ValFractionOpt = None,
    postprocess: PostprocessOpt = None,
    dice_guard: DiceGuardOpt = None,
    ensemble: EnsembleOpt = None,
    distill: DistillOpt = None,
    distill_from: DistillFromOpt = None,
    precision: PrecisionOpt = None,
    encoder: EncoderOpt = None,
    pretrained: PretrainedOpt = None,
    calibrate: Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", help="Fit temperature scaling on "
                                                   "the validation split at the end (default: on).")] = None,
    tta: TrainTtaOpt = None,
    multiscale: TrainMultiscaleOpt = None,
    out: Annotated[str | None, typer.Option(help="Run folder (checkpoints, log, model.unetkit).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    nproc: Annotated[int | None, typer.Option(help="Data-parallel processes on this node (torchrun, gloo on CPU).  "
                                              "[default: the --config file's, else 1]")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Train on the good files when validation finds bad ones.")] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    tensorboard: Annotated[bool, typer.Option(help="Also log to TensorBoard in the run folder.")] = False,
    track: Annotated[str | None, typer.Option(
        "--track", metavar="mlflow[:URI]",
        help="Also record the run in an experiment tracker: mlflow (URI default $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db here) or mlflow:URI (sqlite:///path.db, http://host:5000). Logs params, plan, "
        "validation metrics, the time-to-quality plot, the data fingerprint and the artifact. A store that "
        "cannot be written refuses the run before training (docs/observability.md).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    plan: Annotated[bool, typer.Option("--plan/--no-plan", help="With --budget: plan model, patch, batch, loss, "
                                       "augmentation and schedule from the data and this machine's speed "
                                       "(values you set explicitly are kept).")] = True,
    init: InitOpt = None,
    freeze_encoder_steps: Annotated[int | None, typer.Option(
        help="With --init/--pretrained: steps with the encoder frozen (the new head and decoder learn first).  "
             "[default: planned with --budget (R15), else 0]")] = None,
    encoder_lr_ratio: Annotated[float | None, typer.Option(
        help="With --init/--pretrained: the encoder's learning rate as a fraction of the decoder's "
             "(discriminative learning rates).  [default: planned with --budget (R15), else 1]")] = None,
    unlabelled: Annotated[Path | None, typer.Option(
        help="A folder of unlabelled images like DATA's. With --budget the plan may spend part of it on "
             "self-supervised pretraining on them (and DATA's training images) first, then fine-tune (R16).")] = None,
) -> None:
    """Train a U-Net on DATA and write a model artifact (OUT/model.unetkit).

    With --budget (and no --resume), the run is planned first: see `unetkit plan`. --init starts from a
    trained artifact (fine-tuning: new classes allowed, its sha256 recorded as the parent)."""
    from unetkit.training.setup import build_train_config, explicit_settings, flag_settings

    flags = dict(budget=budget, steps=steps, arch=arch, patch=patch, batch=batch, resolution=resolution, lr=lr, val_keys=val_keys,
                 val_fraction=val_fraction, out=out, resume=resume, nproc=nproc, skip_bad=skip_bad, seed=seed,
                 tensorboard=tensorboard, progress=False if quiet else None, postprocess=postprocess, calibrate=calibrate, tta=tta,
                 multiscale=multiscale,
                 dice_guard=dice_guard, ensemble=ensemble, distill=distill, distill_from=distill_from,
                 precision=precision, init=init,
                 pretrained=str(pretrained) if pretrained is not None else None, encoder=encoder,
                 freeze_encoder_steps=freeze_encoder_steps, encoder_lr_ratio=encoder_lr_ratio, track=track)
    cfg = build_train_config(data=data, config_file=config, **flags)
    if unlabelled is not None and (budget is None or not plan or resume):
        raise ConfigError("--unlabelled needs --budget (the plan decides whether pretraining pays) and no --resume")
    if cfg.track:  # refuse an unwritable tracking store before planning and training
        from unetkit.training.tracking import open_tracker

        open_tracker(cfg.track)
    if budget is not None and plan and not resume:
        from unetkit.planning.auto import plan_training, pretrain_first
        from unetkit.planning.plan import format_plan

        cfg, made = plan_training(cfg, explicit_settings(config, flag_settings(data, **flags)), log=typer.echo,
                                  unlabelled=unlabelled)
        typer.echo(format_plan(made))
        cfg = pretrain_first(cfg, made, unlabelled, log=typer.echo)
    if cfg.nproc > 1:
        from unetkit.training.distributed import launch

        path = launch(cfg, cfg.nproc)
    else:
        from unetkit.training.fit import fit

        path = fit(cfg)
    typer.echo(f"model artifact: {path}")


@app.command()
def pretrain(
    images: Annotated[Path, typer.Argument(help="A folder of unlabelled images (not recursive).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Encoder weights file to write (.safetensors).")] = Path(
        PretrainConfig.out),
    budget: BudgetOpt = None,
    steps: Annotated[int, typer.Option(help="Steps when no --budget is given.")] = PretrainConfig.steps,
    objective: Annotated[PretrainObjective, typer.Option(
        help="mim: restore masked squares (masked-image modelling); denoise: remove Gaussian noise; "
             "contrastive: tell each pixel of two recoloured, shifted crops of a region from the others (dense InfoNCE).")] = PretrainConfig.objective,
    width: Annotated[int, typer.Option(help="U-Net base width: the fine-tuning run's (`unetkit plan` shows it).")] = PretrainConfig.base_width,
    depth: Annotated[int, typer.Option(help="U-Net depth (down-sampling steps): the fine-tuning run's.")] = PretrainConfig.depth,
    norm: Annotated[str, typer.Option(help="Normalization layers: batch, group, instance or none.")] = PretrainConfig.norm,
    input_norm: Annotated[InputNorm, typer.Option(
        help="image: standardize each input by its own mean/std per channel, as the fine-tuning run will "
             "(its config's model.input_norm); none: the data set's normalization only.")] = PretrainConfig.input_norm,
    patch: Annotated[int, typer.Option(help="Square crop size.")] = PretrainConfig.patch_size[0],
    batch: Annotated[int, typer.Option(help="Crops per step (contrastive: half as many regions, two crops of each).")] = PretrainConfig.batch_size,
    resolution: Annotated[float, typer.Option(
        help="Resample the images to this fraction of their side first: the fine-tuning run's --resolution "
             "(`unetkit plan` shows it: 0.75 or 0.5 for scenes it trains at reduced size).")] = PretrainConfig.resolution,
    keep: Annotated[PretrainKeep, typer.Option(
        help="What to write: the encoder's weights, or (network) the encoder's and the decoder's, all but the head, "
             "which fine-tuning then starts from too.")] = PretrainConfig.keep,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, cosine decay).")] = PretrainConfig.lr,
    seed: Annotated[int, typer.Option(help="Random seed.")] = PretrainConfig.seed,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Self-supervised pretraining of the U-Net encoder on unlabelled IMAGES (no labels needed); writes encoder
    weights that `unetkit train DATA --pretrained OUT` starts from. Pays when labelled images are few:
    see docs/training.md, "Self-supervised pretraining"."""
    from unetkit.config import from_dict, parse_duration
    from unetkit.training.pretrain import pretrain as run_pretrain

    cfg = from_dict(PretrainConfig, {"images": str(images), "out": str(out), "objective": objective,
                                     "budget_seconds": parse_duration(budget) if budget else 0.0, "steps": steps,
                                     "base_width": width, "depth": depth, "norm": norm, "input_norm": input_norm,
                                     "patch_size": [patch, patch], "batch_size": batch, "resolution": resolution, "keep": keep, "lr": lr, "seed": seed, "progress": not quiet}, "pretrain")
    run_pretrain(cfg, log=typer.echo)


@app.command("plan")
def plan_command(
    data: TrainDataArg,
    budget: BudgetOpt = "30m",
    config: Annotated[Path | None, typer.Option(help="TrainConfig JSON; its values are kept as set.")] = None,
    arch: ArchOpt = None,
    patch: PatchOpt = None,
    batch: BatchOpt = None,
    resolution: ResolutionOpt = None,
    lr: LrOpt = None,
    val_keys: ValKeysOpt = None,
    val_fraction: ValFractionOpt = None,
    postprocess: PostprocessOpt = None,
    ensemble: EnsembleOpt = None,
    distill: DistillOpt = None,
    distill_from: DistillFromOpt = None,
    precision: PrecisionOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the plan as JSON here.")] = None,
) -> None:
    """Show the plan `unetkit train DATA --budget B` would follow (data fingerprint + a short
    calibration run on this machine), each choice with its reason; trains nothing."""
    from unetkit.planning.auto import preview_plan
    from unetkit.planning.plan import format_plan
    from unetkit.training.setup import build_train_config, explicit_settings, flag_settings

    flags = dict(budget=budget, arch=arch, patch=patch, batch=batch, resolution=resolution, lr=lr, val_keys=val_keys,
                 val_fraction=val_fraction, progress=False, postprocess=postprocess, ensemble=ensemble,
                 distill=distill, distill_from=distill_from, precision=precision)
    cfg = build_train_config(data=data, config_file=config, **flags)
    made = preview_plan(cfg, explicit_settings(config, flag_settings(data, **flags)), log=typer.echo)
    typer.echo(format_plan(made))
    _echo_json(made.to_dict(), json_out)


# ---------------------------------------------------------------- inference and evaluation


@app.command()
def predict(
    model: RunModelArg,
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("predictions"),
    colour: Annotated[bool, typer.Option("--colour/--index", help="Colour PNG masks instead of class-index PNGs.")] = False,
    probabilities: Annotated[bool, typer.Option(help="Also write float32 probability TIFFs (K,H,W).")] = False,
    overlay: Annotated[bool, typer.Option(help="Also write overlays of the mask on the image.")] = False,
    geojson: Annotated[bool, typer.Option(help="Also write component polygons as GeoJSON (map coordinates for GeoTIFFs).")] = False,
    coco: Annotated[bool, typer.Option(help="Also write OUT/coco.json with COCO RLE annotations per class.")] = False,
    tile: TileOpt = None,
    overlap: OverlapOpt = None,
    tta: TtaOpt = None,
    tta_views: TtaViewsOpt = None,
    resolutions: ResolutionsOpt = None,
    backend: BackendOpt = "auto",
    trusted_keys: TrustedKeysOpt = None,
    require_signature: RequireSignatureOpt = False,
    sha256: Sha256Opt = None,
    max_memory: Annotated[str | None, typer.Option(
        help="Memory for one image, e.g. 2G or 512M: a larger tiled TIFF / OME-TIFF / zarr input is streamed, a larger "
             "PNG/JPEG is refused.  [default: no limit; inputs over 100,000,000 pixels are streamed]")] = None,
    stream_format: Annotated[StreamFormat, typer.Option(
        help="Outputs of streamed (gigapixel) inputs: tiled BigTIFF (GeoTIFF tags kept) or a zarr store.")] = "tif",
    engine: Annotated[PredictEngine, typer.Option(
        help="local: this process; ray: a pool of workers on a Ray cluster (pip install 'unetkit[ray]'), "
             "see docs/distributed.md.")] = "local",
    address: Annotated[str | None, typer.Option(
        envvar=RAY_ADDRESS_ENV, help="--engine ray: the cluster's head, HOST:PORT (`ray start --head` prints it) or "
                                     "'auto'.  [default: start Ray on this machine]")] = None,
    workers: Annotated[int | None, typer.Option(
        min=1, help="--engine ray: model-holding workers.  [default: the cluster's CPUs / --threads]")] = None,
    threads: Annotated[int, typer.Option(min=1, help="--engine ray: CPU threads per worker.")] = 1,
) -> None:
    """Segment images of any size (overlap-tile with Gaussian blending).

    Inputs too large for memory (over 100,000,000 pixels, or over --max-memory) are streamed when
    they are tiled or striped TIFF / OME-TIFF or zarr: read a band at a time, written as
    NAME_mask.tif (tiled BigTIFF, GeoTIFF tags kept) or .zarr, with a progress bar in pixels/s.
    With an exported .onnx model the tiling comes from its plan; --tile, --overlap and --tta,
    when given, override it. --engine ray spreads the inputs (and the stripes of streamed ones)
    over a Ray cluster and writes the same files."""
    from unetkit.config import OutputConfig

    tile_settings = _tile_settings(tile, overlap, tta, tta_views, resolutions)
    limit = _bytes(max_memory, "--max-memory") if max_memory else None
    loaded = _load_run_model(model, trusted_keys, require_signature, sha256)
    outputs = OutputConfig(colour=colour, probabilities=probabilities, overlays=overlay, geojson=geojson, coco=coco,
                           stream_format=stream_format, max_memory=limit)
    if engine == "ray":
        from unetkit.inference.distributed import predict_files_ray
        from unetkit.inference.files import run_notes

        report = predict_files_ray(loaded, inputs, out, tile_settings, outputs=outputs, backend=backend,
                                   address=address, workers=workers, threads=threads)
        typer.echo(report.summary(), err=True)
        for note in run_notes(report.results, outputs, loaded):
            typer.echo(note, err=True)
        report.raise_for_failures()
        typer.echo(f"wrote {len(report.written)} files to {out}/")
        return
    from unetkit.inference.files import predict_files

    written = predict_files(loaded, inputs, out, tile_settings, colour=colour, probabilities=probabilities,
                            overlays=overlay, geojson=geojson, coco=coco, stream_format=stream_format,
                            max_memory=limit, backend=backend, on_note=lambda note: typer.echo(note, err=True))
    typer.echo(f"wrote {len(written)} files to {out}/")


def _bytes(text: str, option: str) -> int:
    """'2G', '512M', '1.5GiB', '1000000' -> bytes (K, M, G, T are powers of 1024)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise UnetkitError(f"{option} '{text}': expected a size such as 2G, 512M or 1000000 (bytes)")
    return int(float(match[1]) * 1024 ** " kmgt".index(match[2] or " "))


@app.command()
def evaluate(
    model: RunModelArg,
    data: Annotated[str, typer.Argument(help="Labelled data: folder, dataset description or manifest.")],
    keys: KeysOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all metrics as JSON here.")] = None,
    tile: TileOpt = None,
    overlap: OverlapOpt = None,
    tta: TtaOpt = None,
    tta_views: TtaViewsOpt = None,
    resolutions: ResolutionsOpt = None,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
    worst: Annotated[int, typer.Option(help="Worst images shown in the report.")] = 4,
    distances: Annotated[bool, typer.Option(help="Boundary IoU, HD95, ASSD (slower).")] = True,
    topology: Annotated[bool, typer.Option(help="clDice and adapted Rand error (slower).")] = True,
    backend: BackendOpt = "auto",
    split: Annotated[DataSplit | None, typer.Option(help="Only the data set's own split (folders, list files, a "
                                                    "manifest's split column, dataset.json, VOC ImageSets, COCO file "
                                                    "names, Label Studio data.split); a split the data set lacks is "
                                                    "an error listing those it has.")] = None,
) -> None:
    """Every metric on labelled data (ROI honoured): IoU, Dice, precision, recall, boundary, distance,
    topology, AUC/AP, calibration; micro and macro; optionally an HTML report. An exported .onnx
    model is scored as deployed (fp32 or int8), tiled as its plan says."""
    from unetkit.evaluation.evaluate import evaluate_model
    from unetkit.evaluation.report import WorstImages, write_report
    from unetkit.evaluation.table import format_table
    from unetkit.export.deployed import load_model

    tile_settings = _tile_settings(tile, overlap, tta, tta_views, resolutions)
    collector = WorstImages(worst) if report else None
    chosen = _keys(keys)
    if split:
        from unetkit.data.spec import load_spec

        chosen = _split_keys(load_spec(data), split, data, chosen)
    loaded = load_model(model)
    result = evaluate_model(loaded, data, tile_settings, keys=chosen, backend=backend,
                            distances=distances, topology=topology, on_image=collector)
    typer.echo(format_table(result))
    _echo_json(result, json_out)
    if report and collector is not None:
        write_report(report, result, collector.images(), colors=loaded.meta.colors())
        typer.echo(f"wrote {report}")


@app.command("evaluate-folder")
def evaluate_folder(
    predictions: Annotated[Path, typer.Argument(help="Folder of predicted label maps (class-index PNG/TIFF, e.g. "
                                                "what `unetkit predict --index` wrote).")],
    labels: Annotated[Path, typer.Argument(help="Folder of ground-truth label maps, paired with PREDICTIONS by "
                                           "file name (key).")],
    names: Annotated[str | None, typer.Option(help="Comma-separated class names, background first.  "
                                              "[default: from --dataset, else class 0..K-1 for the largest index found]")] = None,
    ignore_index: Annotated[int, typer.Option(help="Label value not scored (void).")] = 255,
    dataset: Annotated[Path | None, typer.Option(
        help="Dataset description JSON (unetkit init-dataset): class names, and label values or colours decoded "
        "as in training (then --ignore-index is its ignore values).")] = None,
    nsd_tolerance: Annotated[float, typer.Option(help="Normalized surface Dice tolerance in pixels (0: off).")] = 2.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write all metrics as JSON here.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write a self-contained HTML report here.")] = None,
    worst: Annotated[int, typer.Option(help="Worst images shown in the report.")] = 4,
    distances: Annotated[bool, typer.Option(help="Boundary IoU, HD95, ASSD (slower).")] = True,
    topology: Annotated[bool, typer.Option(help="clDice and adapted Rand error (slower).")] = True,
) -> None:
    """Score saved predictions against labels without a model (like nnU-Net's evaluate-folder): the metrics
    and report of `unetkit evaluate` that need only label maps, plus normalized surface Dice (NSD)."""
    from unetkit.evaluation.folder import evaluate_folder as score_folder
    from unetkit.evaluation.report import WorstImages, write_report
    from unetkit.evaluation.table import format_table

    if nsd_tolerance < 0:
        raise UnetkitError(f"--nsd-tolerance {nsd_tolerance:g}: expected a number of pixels >= 0 (0: off)")
    collector = WorstImages(worst) if report else None
    result = score_folder(predictions, labels, class_names=_keys(names), ignore_index=ignore_index, dataset=dataset,
                          nsd_tolerance=nsd_tolerance or None, distances=distances, topology=topology,
                          on_image=collector)
    typer.echo(format_table(result))
    if nsd_tolerance:
        typer.echo(f"NSD at {nsd_tolerance:g} px: share of both boundaries within {nsd_tolerance:g} px of the other")
    _echo_json(result, json_out)
    if report and collector is not None:
        write_report(report, result, collector.images(), ignore_index=ignore_index)
        typer.echo(f"wrote {report}")


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(help="Model artifact (updated in place unless --out).")],
    data: LabelledDataArg,
    keys: KeysOpt = None,
    vector: Annotated[bool, typer.Option(help="Per-class vector scaling instead of one temperature.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the calibrated model here; MODEL stays as it is.")] = None,
    pixels: Annotated[int, typer.Option(help="Valid pixels sampled for fitting (spread over the images).")] = 1_000_000,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary as JSON here.")] = None,
    backend: BackendOpt = "auto",
) -> None:
    """Fit temperature scaling on validation data and store it in the model; predictions use it from then on.

    Stored only when it holds on new images: refitted leaving each fold of images out, the held-out
    NLL must improve with a paired-bootstrap lower bound above zero over at least 3 images; else the
    raw logits stay and the summary says why."""
    from unetkit.tuning.calibration import calibrate_model

    s = calibrate_model(model, data, keys=_keys(keys), vector=vector, out=out,
                        max_pixels=pixels, backend=backend)
    typer.echo(f"{s['method']} scaling on {s['pixels']:,} pixels of {s['images']} images: temperature {s['temperature']:.4f}")
    typer.echo(f"ECE {s['ece_before']:.4f} -> {s['ece_after']:.4f}   NLL {s['nll_before']:.4f} -> {s['nll_after']:.4f}")
    typer.echo(f"gate: {s['gate']['reason']}")
    typer.echo(f"wrote {s['artifact']}")
    _echo_json(s, json_out)


@app.command("tune-postprocess")
def tune_postprocess(
    model: TunedModelArg,
    data: LabelledDataArg,
    metric: Annotated[PostprocessMetric, typer.Option(help="dice or iou (pooled over images, foreground classes), or rand "
                                        "(1 - adapted Rand error of each class's components: objects; adds a watershed split).")] = "dice",
    keys: KeysOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the tuned model here; MODEL stays as it is.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary and every step as JSON here.")] = None,
    backend: BackendOpt = "auto",
    dice_guard: DiceGuardOpt = None,
) -> None:
    """Try threshold, opening/closing, hole filling, small-component removal, keep-largest (and, for
    rand, the watershed split of touching objects) on validation data; keep only what strictly
    improves METRIC; store the choice only when its gain holds out of fold across images (paired
    bootstrap lower bound above zero, at least 3 images), else plain arg-max stays. Training does
    this itself at its end."""
    from unetkit.tuning.postprocess import tune_model_postprocess

    s = tune_model_postprocess(model, data, keys=_keys(keys), metric=metric, out=out, backend=backend,
                               dice_guard=dice_guard)
    for step in s["steps"]:
        mark = "kept" if step["kept"] else "    "
        typer.echo(f"{mark} {step['op']:<15}class {step['class']:>2}  {step['value']!s:<6} {step['before']:.4f} -> {step['after']:.4f}")
    typer.echo(f"gate: {s['gate']['reason']}")
    typer.echo(f"{metric} {s['before']:.4f} -> {s['after']:.4f} with {s['postprocess'] or 'no postprocessing (arg-max)'}")
    typer.echo(f"wrote {s['artifact']}")
    _echo_json(s, json_out)


@app.command("tune-tta")
def tune_tta(
    model: TunedModelArg,
    data: LabelledDataArg,
    metric: Annotated[PostprocessMetric, typer.Option(help="dice or iou (pooled over images, foreground classes), or "
                                                      "rand (1 - adapted Rand error of each class's components).")] = "dice",
    keys: KeysOpt = None,
    out: Annotated[Path | None, typer.Option(help="Write the model here; MODEL stays as it is.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary as JSON here.")] = None,
    backend: BackendOpt = "auto",
) -> None:
    """Decide whether MODEL predicts with test-time augmentation (the mean of its flipped/rotated views):
    on only when the gain in METRIC over the plain prediction holds across the images (paired bootstrap
    lower bound above zero, at least 3 images); else off. The views' mean is recalibrated with a temperature
    fitted on the same images (kept only where it holds out of fold), stored for --tta even when off.
    Then, for a model trained at reduced resolution,
    multi-scale inference the same way (2/3 of its resolution, it and native, averaged). Predict, evaluate,
    export and serve follow the choices unless told otherwise (--tta/--no-tta, --resolutions). Training does
    this itself at its end."""
    from unetkit.tuning.tta import tune_model_tta

    s = tune_model_tta(model, data, keys=_keys(keys), metric=metric, out=out, backend=backend)
    typer.echo(f"{metric}: plain {s[metric + '_plain']:.4f}, TTA ({s['views']} views) {s[metric + '_tta']:.4f} on "
               f"{s['images']} images; ECE {s['ece_plain']:.4f} -> {s['ece_tta_mean']:.4f}, recalibrated with T "
               f"{s['temperature']:.3f}: {s['ece_tta']:.4f}")
    typer.echo(f"gate: {s['gate']['reason']}")
    m = s["multiscale"]
    if m["candidates"] and "images" in m:
        typer.echo(f"multi-scale ({', '.join(f'{r:.3g}' for r in m['candidates'])}): {metric} {m[metric + '_single']:.4f} "
                   f"-> {m[metric + '_multi']:.4f}; gate: {m['gate']['reason']}")
    typer.echo(f"TTA {'on' if s['tta'] else 'off'}, multi-scale {'on' if m['resolutions'] else 'off'}; wrote {s['artifact']}")
    _echo_json(s, json_out)


@app.command("export")
def export_command(
    model: ModelArg,
    format: Annotated[ExportFormat, typer.Option("--format", help="Export format: onnx, or openvino (an IR MODEL.xml + MODEL.bin).")] = ExportConfig.format,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output file (default: MODEL.onnx / MODEL.int8.onnx / MODEL.xml / MODEL.int8.xml).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Static int8 quantization, gated on validation accuracy (needs --data): "
                                       "ONNX Runtime's QDQ graph (MODEL.int8.onnx), or with --format openvino OpenVINO's "
                                       "own (NNCF) as an IR MODEL.int8.xml.")] = False,
    data: Annotated[str | None, typer.Option(help="Labelled data: training images calibrate, validation images gate.")] = None,
    keys: Annotated[str | None, typer.Option(help="Calibration keys (default: the artifact's training split).")] = None,
    val_keys: Annotated[str | None, typer.Option(help="Validation keys (default: the artifact's validation split).")] = None,
    gate: Annotated[float, typer.Option(help="Largest allowed drop in foreground Dice / mIoU.")] = ExportConfig.int8_gate,
    agreement: Annotated[float, typer.Option(
        "--min-agreement", help="Smallest allowed fraction of validation pixels that keep fp32's label.")] = ExportConfig.int8_agreement,
    tile: Annotated[int | None, typer.Option(help="Tile size recorded in the plan.  [default: the model's patch size].")] = None,
    overlap: Annotated[float | None, typer.Option(
        help=f"Tile overlap fraction recorded in the plan.  [default: {TileConfig.overlap}].")] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="Record test-time augmentation on or off in the plan, which every runtime that "
        "reads it follows.  [default: the model's own choice]")] = None,
    tta_views: Annotated[TtaViews | None, typer.Option(
        "--tta-views", help="The views TTA averages, recorded in the plan (turns TTA on unless --no-tta): dihedral "
        "(8), flips (4) or mirror (2); only views the model was trained on.  [default: the model's own]")] = None,
    resolutions: ResolutionsOpt = None,
) -> None:
    """Write an ONNX model of the whole per-tile pipeline plus MODEL.onnx.json (the inference plan);
    parity-checked against PyTorch (--format openvino: an OpenVINO IR MODEL.xml + MODEL.bin + MODEL.xml.json).
    With --int8: quantized (calibrated on training images), refused when validation accuracy drops or
    labels change on more validation pixels than --min-agreement allows."""
    tile_settings = _tile_settings(tile, overlap, tta, tta_views, resolutions)
    config = ExportConfig(format=format, int8=int8, int8_gate=gate, int8_agreement=agreement)
    if not int8:
        from unetkit.export.onnx import export_artifact
        from unetkit.export.openvino import export_openvino

        result = (export_openvino if format == "openvino" else export_artifact)(model, out, config, tile_settings)
        typer.echo(f"wrote {result.model_path} and {result.plan_path} (parity: max |dp| {result.max_abs_diff:.2e} "
                   f"on {result.tiles_checked} tiles)")
        return
    if not data:
        raise UnetkitError("--int8 needs --data: training images calibrate it, validation images gate it")
    from unetkit.export.quantize import Int8GateError, quantize_artifact

    try:
        report = quantize_artifact(model, data, out, config, keys=_keys(keys), val_keys=_keys(val_keys),
                                   tile=tile_settings, progress=sys.stderr.isatty())
    except Int8GateError as e:
        typer.echo(e.report.table())
        raise GateRefused(str(e).splitlines()[0]) from None
    typer.echo(report.table())
    typer.echo(f"wrote {report.written}")


# ---------------------------------------------------------------- active learning


@app.command()
def rank(
    model: RunModelArg,
    folder: Annotated[Path, typer.Argument(help="Folder of unlabelled images.")],
    by: Annotated[RankScore, typer.Option(help="Sort by entropy, margin, tta or combined (mean percentile rank of the three).")] = RankConfig.by,
    aggregate: Annotated[RankAggregate, typer.Option(help=f"Per-image value: mean, top (the {RankConfig.top_fraction:.0%} most "
                                           "uncertain pixels) or foreground.")] = RankConfig.aggregate,
    top_k: Annotated[int | None, typer.Option("--top-k", help="How many images to export and list.")] = None,
    export: Annotated[Path | None, typer.Option(help="New folder for the top-k images with pre-annotations (masks, COCO, CVAT, Label Studio).")] = None,
    csv: Annotated[Path, typer.Option("--csv", help="Where to write the ranking CSV.")] = Path("ranking.csv"),
    tta: Annotated[bool, typer.Option(help="Predict the model's TTA views (8 flips/turns; 2 for a model trained upright): "
                                      "TTA disagreement and averaged predictions (2-8x slower).")] = RankConfig.tta,
    tta_views: Annotated[TtaViews | None, typer.Option(
        "--tta-views", help="Which views --tta predicts: dihedral (8), flips (4) or mirror (2); only views the model "
        "was trained on.  [default: the model's own]")] = None,
    recursive: Annotated[bool, typer.Option(help="Also rank the images in subfolders.")] = RankConfig.recursive,
    dedup_bits: Annotated[int, typer.Option(help="Skip near-copies of a higher-ranked image in the export: hashes at most this many of 256 bits apart (0: off).")] = RankConfig.dedup_bits,
    tile: TileOpt = None,
    overlap: OverlapOpt = None,
    backend: BackendOpt = "auto",
) -> None:
    """Rank unlabelled images by model uncertainty; export the top-k with pre-annotation masks."""
    from rich.console import Console

    from unetkit.active.export import check_export_dir, export_top
    from unetkit.active.rank import Scorer, list_images, rank_images, ranking_table, write_ranking_csv

    config = RankConfig(by=by, aggregate=aggregate, tta=tta, recursive=recursive, dedup_bits=dedup_bits)
    if export is not None and top_k is None:
        raise UnetkitError("--export needs --top-k K: how many of the most uncertain images to export")
    if top_k is not None and top_k < 1:
        raise UnetkitError(f"--top-k {top_k}: expected at least 1 image")
    if export is not None:
        check_export_dir(export)
    files = list_images(folder, recursive, exclude=export)
    scorer = Scorer.from_artifact(model, _tile_settings(tile, overlap, tta, tta_views), backend)
    ranking = rank_images(scorer, files, config, root=folder, progress=True)
    write_ranking_csv(ranking, csv)
    Console().print(ranking_table(ranking, top_k or 10))
    for message in ranking.failed:
        typer.echo(f"skipped {message}", err=True)
    per_image = ranking.seconds / len(ranking.images)
    typer.echo(f"wrote {csv} ({len(ranking.images)} images ranked, {len(ranking.failed)} skipped, {per_image:.2f} s/image)")
    if export is not None and top_k is not None:
        written = export_top(ranking, top_k, export, scorer)
        typer.echo(f"wrote {len(written)} files to {export}/")


@app.command()
def drift(
    model: RunModelArg,
    folder: Annotated[Path | None, typer.Argument(help="New images: a folder (recursive) or one file.")] = None,
    baseline_from: Annotated[str | None, typer.Option(
        "--baseline-from", help="First measure the baseline on this training data (data folder, dataset "
        "description, manifest or image folder) and store it in MODEL.")] = None,
    threshold: Annotated[float, typer.Option(help="PSI above which the score (max PSI over features) means drift.")] = DRIFT_THRESHOLD,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    outputs: Annotated[bool, typer.Option("--outputs/--no-outputs", help="Also compare the model's outputs "
                                          "(class fractions, components, confidence, entropy); runs inference.")] = True,
    backend: BackendOpt = "auto",
) -> None:
    """Compare new images with the model's drift baseline: PSI and KS per feature, one score.

    Exit status: 0 no drift, 1 drift detected (score > threshold), 2 user error; usable in CI or
    cron. Training stores the baseline; --baseline-from adds one to an older model. An exported
    model (.onnx / .xml) is compared with the baseline its plan carries (the artifact's, copied by
    export), its outputs computed by its own runtime."""
    from rich.console import Console

    from unetkit.export.deployed import is_exported, load_model
    from unetkit.monitor.measure import add_baseline, check_drift

    if baseline_from is None and folder is None:
        raise UnetkitError("drift: give FOLDER (new images) to compare, or --baseline-from DATA to store a baseline")
    if baseline_from is not None and is_exported(model):
        raise UnetkitError(f"{model}: --baseline-from stores the baseline in a model artifact (.unetkit); run it on the "
                           "artifact this model was exported from and export again")
    if baseline_from is not None:
        add_baseline(model, baseline_from, backend=backend, log=typer.echo)
        typer.echo(f"wrote the drift baseline into {model}")
    if folder is None:
        return
    report, errors = check_drift(load_model(model), folder, threshold=threshold, outputs=outputs, backend=backend)
    for error in errors:
        typer.echo(f"warning: skipped {error}", err=True)
    console = Console(highlight=False)
    console.print(report.table())
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(f"score {report.score:.3f} (max PSI over {len(report.features)} features) vs threshold {threshold:g}")
    console.print(("[bold red]" if report.drifted else "[bold green]") + report.verdict() + "[/]")
    _echo_json(report.to_dict(), json_out)
    if report.drifted:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command()
def info(
    model: RunModelArg,
    full: Annotated[bool, typer.Option("--full/--summary", help="Also print the drift baseline's stored "
                                       "feature histograms and every training-history entry.")] = False,
) -> None:
    """Print a model artifact's metadata, or an exported model's inference plan (verified), with this
    machine's backends: which can run, the automatic choices measured here, their parity gates and
    why a candidate was excluded."""
    from unetkit.config import to_dict
    from unetkit.export.deployed import DeployedModel, load_model
    from unetkit.inference.backends import backend_report

    loaded = load_model(model)
    if isinstance(loaded, DeployedModel):
        meta, sample, sha = dict(loaded.plan), loaded.sample(), loaded.model_sha256
    else:
        meta, sample, sha = to_dict(loaded.meta), loaded.meta.sample(), loaded.meta.weights_sha256
    if not full:  # the baseline's histograms, the per-step history and the sample's arrays are data, not facts to read
        baseline = meta.get("drift_baseline") or {}
        if "features" in baseline:
            meta["drift_baseline"] = {**baseline, "features": f"{len(baseline['features'])} features (--full shows them)"}
        if len(meta.get("history") or []) > 3:
            meta["history"] = [f"{len(meta['history'])} entries, last: {json.dumps(meta['history'][-1])} (--full shows all)"]
        if sample is not None:
            meta["validation_sample"] = {**sample.summary(), "bytes": meta["validation_sample"]["bytes"],
                                         "arrays": "--full shows them (base64 .npz)"}
    meta["backends_on_this_machine"] = backend_report(sha)
    typer.echo(json.dumps(meta, indent=2))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo-output"),
    seconds: Annotated[float, typer.Option(help="Training budget in seconds.")] = 60.0,
) -> None:
    """Train on a built-in synthetic data set for about a minute, predict, score, write overlays."""
    from unetkit.demo import run_demo

    run_demo(out, seconds)


def _serve_env(field: str) -> str:
    """The variable that sets ServeConfig.FIELD (`unetkit.config.SERVE_ENV_PREFIX`): typer reads it for the
    option and `--help` shows it; flags > variables > config file > defaults, as load_serve_config does."""
    assert field in ServeConfig.__dataclass_fields__, field
    return f"{SERVE_ENV_PREFIX}{field.upper()}"


@app.command()
def serve(
    model: Annotated[str | None, typer.Argument(help="Model artifact, or an exported model.onnx / OpenVINO model.xml with its plan beside it "
                                                "(or config 'artifact').",
                                                envvar=_serve_env("artifact"))] = None,
    host: Annotated[str | None, typer.Option(help=f"Interface to listen on (default {ServeConfig.host}).",
                                             envvar=_serve_env("host"))] = None,
    port: Annotated[int | None, typer.Option(help=f"TCP port (default {ServeConfig.port}).",
                                             envvar=_serve_env("port"))] = None,
    config: Annotated[Path | None, typer.Option(help="ServeConfig JSON/YAML; UNETKIT_SERVE_* variables and flags override it.")] = None,
    canary: Annotated[str | None, typer.Option(help="Candidate model (artifact or exported model) for a canary or shadow rollout.",
                                               envvar=_serve_env("canary_artifact"))] = None,
    canary_percent: Annotated[float | None, typer.Option(help="Share of requests the candidate answers (0-100).",
                                                         envvar=_serve_env("canary_percent"))] = None,
    shadow: Annotated[bool | None, typer.Option("--shadow", help="Run the candidate on copies of requests; compare only.",
                                                envvar=_serve_env("shadow"))] = None,
    token_file: Annotated[str | None, typer.Option(help="File holding the bearer tokens clients must send "
                                                   "(a single plain token: UNETKIT_SERVE_TOKEN).",
                                                   envvar=_serve_env("token_file"))] = None,
    registry: Annotated[str | None, typer.Option(help="Serve from this model registry (path or URL) instead of "
                                                 "ARTIFACT, and reload when --stage gets another version.",
                                                 envvar=_serve_env("registry"))] = None,
    stage: Annotated[ServedStage | None, typer.Option(help=f"With --registry: the stage to serve (default {ServeConfig.stage}).",
                                                      envvar=_serve_env("stage"))] = None,
    model_name: Annotated[str | None, typer.Option("--model", help="With --registry: which model (needed when "
                                                   "several have a version in the stage).",
                                                   envvar=_serve_env("model_name"))] = None,
    poll: Annotated[float | None, typer.Option(
        help=f"With --registry: seconds between checks for a new version (default {ServeConfig.registry_poll_seconds:g}).",
        envvar=_serve_env("registry_poll_seconds"))] = None,
    trusted_keys: Annotated[str | None, typer.Option(
        "--trusted-keys", help="Folder of trusted Ed25519 public keys (*.pub) or one .pub file: a signed artifact must "
        "be signed by one of them.", envvar=_serve_env("trusted_keys"))] = None,
    require_signature: Annotated[bool | None, typer.Option(
        "--require-signature", help="Refuse to serve a model not signed by a trusted key (needs --trusted-keys).",
        envvar=_serve_env("require_signature"))] = None,
    sha256: Annotated[str | None, typer.Option(
        "--sha256", help="Use the artifact only if the file's sha256 is this (sha256sum MODEL).",
        envvar=_serve_env("sha256"))] = None,
    tta_views: Annotated[ServedTtaViews | None, typer.Option(
        "--tta-views", help="Views TTA averages when it runs (the model's choice or a request's tta=true): model (those "
        "its training showed it), dihedral (8), flips (4: half the forward passes, most of the gain) or mirror (2)  "
        f"(default {ServeConfig.tta_views}).", envvar=_serve_env("tta_views"))] = None,
) -> None:
    """Serve a model over HTTP: /v1/segment, /v1/model, /metrics, /healthz, /readyz and a demo page at /.

    Every ServeConfig setting can also come from a UNETKIT_SERVE_<SETTING> variable (e.g.
    UNETKIT_SERVE_MAX_BATCH_SIZE=16, UNETKIT_SERVE_TOKEN); precedence: flags > variables > --config
    file > defaults."""
    from unetkit.serve.server import serve_command

    serve_command(model, config, host=host, port=port, canary_artifact=canary, canary_percent=canary_percent,
                  shadow=shadow, token_file=token_file, registry=registry, stage=stage, model_name=model_name,
                  registry_poll_seconds=poll, trusted_keys=trusted_keys, require_signature=require_signature,
                  sha256=sha256, tta_views=tta_views)


# ---------------------------------------------------------------- signed artifacts

keys_app = typer.Typer(name="keys", no_args_is_help=True, rich_markup_mode=None,
                       help="Ed25519 keys that sign model artifacts (unetkit sign, unetkit verify, --trusted-keys).")


@keys_app.command("generate")
def keys_generate(
    out: Annotated[Path, typer.Option("--out", help="Folder for NAME.key (private, mode 0600) and NAME.pub.")],
    name: Annotated[str, typer.Option(help="File name of the pair.")] = "unetkit",
) -> None:
    """Make a signing key pair. Keep NAME.key secret; give NAME.pub to whoever verifies (--trusted-keys)."""
    from unetkit.signing import generate_key

    made = generate_key(out, name)
    typer.echo(f"key {made.key_id}: private {made.private} (keep it secret), public {made.public}")


@app.command()
def sign(
    model: ModelArg,
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (NAME.key from `unetkit keys generate`).")],
) -> None:
    """Sign a model artifact in place: an Ed25519 signature over its weights and metadata (verified first)."""
    from unetkit.artifact import sign_artifact

    key_id = sign_artifact(model, key)
    typer.echo(f"signed {model} with key {key_id}")


@app.command()
def verify(
    model: ModelArg,
    trusted_keys: Annotated[str, typer.Option("--trusted-keys", help="Folder of trusted Ed25519 public keys (*.pub) "
                                              "or one .pub file.")],
    sha256: Sha256Opt = None,
) -> None:
    """Check that a model artifact is intact and signed by a trusted key (exit 2 and one line if not)."""
    from unetkit.artifact import load_artifact
    from unetkit.signing import TrustPolicy

    art = load_artifact(model, sha256=sha256, trust=TrustPolicy.load(trusted_keys, required=True))
    typer.echo(f"{model}: signed by trusted key {art.signer}; weights and metadata intact")


app.add_typer(keys_app)  # unetkit keys generate
app.add_typer(registry_app)  # unetkit registry add | list | show | promote | rollback | diff


def main() -> None:
    try:
        app()
    except GateRefused as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(EXIT_GATE_REFUSED)
    except WorkersLost as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(EXIT_WORKERS_LOST)
    except UnetkitError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
