"""Run an exported model (`model.onnx` or an OpenVINO IR `model.xml`, + its plan `model.onnx.json` /
`model.xml.json`) the way unetkit runs an artifact.

`DeployedModel` has what `unetkit predict`, `evaluate`, `serve`, `drift` and `rank` need of a model artifact:
`path`, `meta` (class names, colours, ignore index, postprocessing, data spec, calibration as the
plan records them), `tile_config(settings)` (the plan's tiling) and `make_predictor(backend)` (a
predictor on the file's `probabilities` output, so the activation is "none": ONNX Runtime for an
`.onnx` unless an OpenVINO backend is named, OpenVINO for an `.xml`, where "auto" measures f32
against bf16 behind the parity gate and caches the choice like an artifact's; "auto" on an int8
`.onnx` measures ONNX Runtime against OpenVINO running it, OpenVINO behind the int8 gate on the
plan's validation sample). All of it
comes from the two files alone, so the file that was deployed (fp32 or int8) is the one that runs
and is scored, through the same engine, postprocessing and output code as an artifact.

Opening refuses a missing plan (it says how to write one), a plan that records another graph's
sha256 (a swapped or modified pair; for an IR, also its `.bin`) and a plan whose input channels or
classes the graph does not have. `load_model(path)` opens either kind of model by the file's suffix.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unetkit.artifact import Artifact, ValidationSample, load_artifact
from unetkit.config import TileConfig, replace
from unetkit.data.io import file_sha256
from unetkit.errors import ArtifactError, ConfigError
from unetkit.export.plan import OUTPUT_NAMES, PLAN_VERSION, plan_path, read_plan, tile_config_from_plan
from unetkit.inference import backends
from unetkit.inference.gate import GateData, gate_sample
from unetkit.inference.openvino import PRECISIONS as OPENVINO_BACKENDS
from unetkit.inference.openvino import openvino_version
from unetkit.signing import TrustPolicy

EXPORT_HINT = "write both with `unetkit export MODEL.unetkit --format onnx` (add --int8 --data DATA for int8)"


@dataclass(frozen=True)
class DeployedMeta:
    """The part of `ArtifactMeta` that prediction, evaluation, serving, drift and ranking read, as the plan
    records it (same names)."""

    name: str
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    ignore_index: int
    postprocess: dict[str, Any]
    data_spec: dict[str, Any]  # how masks map to classes (empty in plans written before it was recorded)
    in_channels: int
    temperature: float  # applied inside the graph; reported by `unetkit evaluate`
    class_scale: tuple[float, ...]
    precision: str  # "fp32" or "int8"
    patch_size: tuple[int, ...] = ()  # the plan's tile size (what serving cuts requests into)
    class_bias: tuple[float, ...] = ()
    weights_sha256: str = ""  # of the artifact it was exported from (drift baselines name the weights they measured)
    drift_baseline: dict[str, Any] = field(default_factory=dict)  # the artifact's, copied into the plan by export
    created: str = ""  # when the artifact was trained
    tta: bool = False  # the plan's TTA choice (`ArtifactMeta.tta` when exported)
    tta_temperature: float = 1.0  # ... and its recalibration
    resolutions: tuple[float, ...] = ()  # the plan's multi-scale choice (`ArtifactMeta.resolutions`)
    resolutions_temperature: float = 1.0  # ... and its recalibration

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def colors(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.class_colors]  # type: ignore[misc]


@dataclass(frozen=True)
class DeployedModel:
    """An exported ONNX model and its inference plan, verified to belong together."""

    path: Path
    plan_path: Path
    plan: dict[str, Any]
    meta: DeployedMeta
    tile: TileConfig  # the plan's tiling, activation "none"

    @classmethod
    def load(cls, path: str | Path) -> DeployedModel:
        model = Path(path)
        if not model.exists():
            raise ArtifactError(f"{model}: exported model not found")
        if model.is_dir():
            raise ArtifactError(f"{model}: is a folder; expected an exported model file (e.g. model.onnx)")
        plan_file = plan_path(model)
        if not plan_file.is_file():
            raise ArtifactError(f"{model}: its inference plan {plan_file.name} is missing (unetkit needs both files); {EXPORT_HINT}")
        plan = read_plan(plan_file)
        recorded = plan.get("model_sha256")
        if recorded:
            actual = file_sha256(model)
            if actual != recorded:
                raise ArtifactError(
                    f"{model}: sha256 {actual[:12]}… does not match {recorded[:12]}… recorded in {plan_file}; "
                    f"the model and its plan are not a pair (one was replaced or modified); {EXPORT_HINT}")
        if plan.get("weights_file"):  # an OpenVINO IR: its .bin is part of the model
            weights = model.with_name(plan["weights_file"])
            if not weights.is_file():
                raise ArtifactError(f"{model}: its weights {weights.name} are missing; {EXPORT_HINT}")
            actual, recorded = file_sha256(weights), plan.get("weights_file_sha256", "")
            if actual != recorded:
                raise ArtifactError(
                    f"{weights}: sha256 {actual[:12]}… does not match {recorded[:12]}… recorded in {plan_file}; "
                    f"the weights and the plan are not a pair; {EXPORT_HINT}")
        return cls(model, plan_file, plan, _meta(plan, plan_file), _tiling(plan, plan_file))

    def tile_config(self, settings: Mapping[str, Any] | None = None) -> TileConfig:
        """The plan's tiling with `settings` (TileConfig field -> value: only what the user set, a
        tile size, overlap, TTA...) in its place; a value equal to a default overrides the plan like
        any other. The activation stays "none": the graph outputs probabilities."""
        settings = dict(settings or {})
        if settings.get("activation", "none") != "none":
            raise ConfigError(f"{self.path}: the exported graph outputs probabilities (activation 'none'); "
                              f"it cannot be run with activation '{settings['activation']}'")
        return replace(self.tile, **settings)

    def make_predictor(self, backend: str = "auto", *, threads: int | None = None) -> Any:
        """A predictor on the graph's `probabilities` output, checked against the plan's channels
        and classes: ONNX Runtime for an `.onnx` ("auto" or "onnx"; "openvino", "openvino-bf16"
        run it on OpenVINO, an int8 graph in int8; "auto" on an int8 graph measures ONNX Runtime
        against OpenVINO, OpenVINO behind the int8 parity gate), OpenVINO for an `.xml` ("auto"
        measures f32 and bf16, bf16 only behind the parity gate). Measured choices are cached."""
        is_ir = self.path.suffix.lower() == ".xml"
        allowed = ("auto", *OPENVINO_BACKENDS) if is_ir else ("auto", "onnx", *OPENVINO_BACKENDS)
        if backend not in allowed:
            engines = "OpenVINO" if is_ir else "ONNX Runtime or OpenVINO"
            raise ConfigError(f"{self.path}: an exported model runs on {engines} only (--backend {', '.join(allowed)}); "
                              f"backend '{backend}' needs the .unetkit artifact")
        backends.require_backend(backend)
        batch = max(1, int(self.tile.batch_size))
        if backend == "auto" and (is_ir or self.meta.precision == "int8"):
            backend = self._measured_backend(threads, batch)
        predictor = backends.file_predictor(self.path, backend, threads=threads, output=OUTPUT_NAMES[0], batch_size=batch)
        for what, graph, planned in (("input channels", predictor.in_channels, self.meta.in_channels),
                                     ("classes", predictor.out_channels, self.meta.num_classes)):
            if graph is not None and graph != planned:
                raise ArtifactError(f"{self.plan_path}: records {planned} {what} but {self.path} has {graph}; "
                                    f"the model and its plan are not a pair; {EXPORT_HINT}")
        predictor.in_channels = self.meta.in_channels
        predictor.tile_size = tuple(self.tile.tile_size)
        return predictor

    @property
    def model_sha256(self) -> str:
        """The graph file's sha256 (the plan's stamp, checked on loading; computed for plans without one)."""
        return self.plan.get("model_sha256") or file_sha256(self.path)

    def sample(self) -> ValidationSample | None:
        """The plan's validation sample (the artifact's labelled crops with fp32's labels), or None for
        plans of artifacts without one or written before samples were."""
        return ValidationSample.from_dict(self.plan.get("validation_sample") or {}, f"{self.plan_path}: validation_sample")

    def _measured_backend(self, threads: int | None, batch: int) -> str:
        """"auto" on an IR (OpenVINO f32 against bf16), an int8 IR (OpenVINO's f32 hint, as its export
        gated it, against the bf16 hint for the layers left in float) or an int8 ONNX (ONNX Runtime
        against OpenVINO, both int8): time both, gate the other on the plan's validation sample against
        fp32's labels and the truth (an f32 IR without a sample: against f32's labels on image-like
        tiles; an int8 model without one: the other is not chosen, there is no fp32 to gate it against)."""
        tile = tuple(int(v) for v in self.tile.tile_size)[:2]
        inp = self.plan["input"]
        sample = gate_sample(self.meta.in_channels, tile, batch, inp.get("mean") or (127.5,), inp.get("std") or (50.0,))
        data = GateData.from_sample(self.sample(), self.meta.class_names, self.meta.ignore_index)
        is_ir, int8 = self.path.suffix.lower() == ".xml", self.meta.precision == "int8"
        names = tuple(OPENVINO_BACKENDS) if is_ir else ("onnx", "openvino")
        # int8 (gated at export with the first engine): the first is the reference, the second is gated
        # against fp32's stored labels (OpenVINO for an ONNX; for an IR, bf16 in the layers left in float)
        precisions = {name: "int8" for name in names} if int8 else None
        gated = names[1] if int8 else ""
        excluded = {} if not gated or data is not None else {
            gated: "no validation sample in the plan: no fp32 labels to gate OpenVINO's int8 against "
                   "(re-export the int8 model with this unetkit)"}
        builders = {name: functools.partial(backends.file_predictor, self.path, name, threads=threads,
                                            output=OUTPUT_NAMES[0], batch_size=batch) for name in names}
        key = "|".join([self.model_sha256, backends.machine_id(), f"tile={tile}",
                        f"batch={batch}", f"threads={threads}", f"openvino={openvino_version()}",
                        backends.gate_key(self.plan.get("validation_sample"))])
        return backends.cached_choice(key, lambda: backends.measure_predictors(
            builders, sample, gate_data=data, precisions=precisions, excluded=excluded))["backend"]


EXPORTED_SUFFIXES = (".onnx", ".xml")


def is_exported(path: str | Path) -> bool:
    """Whether `path` names an exported model (`.onnx`, OpenVINO `.xml`) rather than an artifact."""
    return Path(path).suffix.lower() in EXPORTED_SUFFIXES


def load_model(path: str | Path, sha256: str | None = None, trust: TrustPolicy | None = None) -> Artifact | DeployedModel:
    """An exported `.onnx` or OpenVINO `.xml` model (with its plan beside it) or a `.unetkit` artifact, by suffix.

    `sha256` (a pin on the file's bytes) and `trust` (signatures) verify an artifact as
    `load_artifact` does; they cover artifacts only, so an exported model with either is refused
    (`ConfigError`) rather than run unverified."""
    if not is_exported(path):
        return load_artifact(path, sha256=sha256, trust=trust)
    if sha256 or trust is not None:
        raise ConfigError(f"{path}: signatures and sha256 pins cover model artifacts (.unetkit); verify the artifact "
                          "it was exported from, or pin the exported file outside unetkit")
    return DeployedModel.load(path)


def _meta(plan: dict[str, Any], where: Path) -> DeployedMeta:
    if not isinstance(plan.get("version"), int) or plan["version"] > PLAN_VERSION:
        raise ConfigError(f"{where}: inference plan version {plan.get('version')!r} is not one this unetkit reads "
                          f"(up to {PLAN_VERSION}); upgrade unetkit")
    try:
        classes = tuple(str(c) for c in plan["classes"])
        colors = tuple(tuple(int(v) for v in c) for c in plan["colors"])
        if len(colors) != len(classes) or any(len(c) != 3 for c in colors):
            raise ValueError("colors")
        calibration = plan.get("calibration", {})
        return DeployedMeta(
            name=str(plan.get("artifact", {}).get("name", where.stem)), class_names=classes,
            class_colors=colors, ignore_index=int(plan["ignore_index"]),  # type: ignore[arg-type]
            postprocess=dict(plan.get("postprocess") or {}), data_spec=dict(plan.get("data_spec") or {}),
            in_channels=int(plan["input"]["channels"]), temperature=float(calibration.get("temperature", 1.0)),
            class_scale=tuple(float(v) for v in calibration.get("class_scale", ())),
            precision=str(plan.get("precision", "fp32")),
            patch_size=tuple(int(v) for v in plan["tile"]["size"]),
            class_bias=tuple(float(v) for v in calibration.get("class_bias", ())),
            weights_sha256=str(plan.get("artifact", {}).get("weights_sha256", "")),
            drift_baseline=dict(plan.get("drift_baseline") or {}),
            created=str(plan.get("artifact", {}).get("created", "")),
            tta=bool(plan["tile"].get("tta", False)),
            tta_temperature=float(plan["tile"].get("tta_temperature", 1.0)),
            resolutions=tuple(float(r) for r in plan["tile"].get("resolutions", ())),
            resolutions_temperature=float(plan["tile"].get("resolutions_temperature", 1.0)),
        )
    except KeyError as e:
        raise ConfigError(f"{where}: the inference plan has no '{e.args[0]}' field; {EXPORT_HINT}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: invalid inference plan ({e}); expected 'classes' with one RGB 'colors' entry "
                          f"each, an integer 'ignore_index' and 'input.channels'") from None


def _tiling(plan: dict[str, Any], where: Path) -> TileConfig:
    try:
        return tile_config_from_plan(plan)
    except KeyError as e:
        raise ConfigError(f"{where}: the inference plan's 'tile' has no '{e.args[0]}' field; {EXPORT_HINT}") from None
    except TypeError as e:
        raise ConfigError(f"{where}: invalid 'tile' section in the inference plan ({e})") from None
