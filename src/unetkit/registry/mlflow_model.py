"""`unetkit registry export NAME:VERSION --to mlflow[:URI]`: a registry version as an MLflow model.

The artifact (the registry's verified blob, unchanged) becomes an MLflow *pyfunc* model whose
`predict` runs unetkit's own tiled predictor, so a team whose tools read MLflow's model registry
(`models:/NAME/VERSION`, `mlflow models serve`, `mlflow.pyfunc.load_model`) gets the same labels as
`unetkit predict`, postprocessing and calibration included.

- input: a float32 array `(N, C, H, W)` in the image's raw units (0-255 for 8-bit), or one `(C, H, W)` image;
- output: `(N, H, W)` uint8 label maps, or with `params={"output": "probabilities"}` `(N, K, H, W)` float32;
  `params={"tta": True}` averages the 8 flips/rotations;
- `model_config={"backend": ...}` at load chooses the inference backend (default torch).

The model is built by `mlflow_entry.py` (MLflow's "models from code": no pickle to trust at load time;
the loading environment needs unetkit installed). The MLflow model version is tagged with where it came from (`unetkit.registry_ref`, `unetkit.sha256`,
`unetkit.stage`), and its run holds the version's metrics. URI: as `--track` (see
`unetkit.training.mlflow_tracking.resolve_uri`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from unetkit import __version__
from unetkit.artifact import load_artifact
from unetkit.config import MLFLOW_EXPERIMENT_ENV
from unetkit.errors import ConfigError
from unetkit.inference.backends import make_predictor
from unetkit.inference.files import labels_from_probabilities, tile_config_for
from unetkit.inference.predict import predict_tiled
from unetkit.registry.records import VersionRecord
from unetkit.training.mlflow_tracking import (
    DEFAULT_EXPERIMENT,
    experiment_id,
    failure_reason,
    import_mlflow,
    quick_http,
    resolve_uri,
)

import_mlflow()  # ConfigError naming the extra when mlflow is missing
import mlflow  # noqa: E402 - after the check above
import mlflow.pyfunc  # noqa: E402

ARTIFACT_KEY = "unetkit_artifact"  # the artifact's name among the MLflow model's artifacts
ENTRY = Path(__file__).with_name("mlflow_entry.py")  # what MLflow runs to build the model (no pickle)
OUTPUTS = ("labels", "probabilities")
DEFAULT_BACKEND = "torch"  # no measuring at load ("auto" times every backend once per machine)


class UnetkitPyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow model: a unetkit artifact behind unetkit's tiled predictor."""

    def load_context(self, context: Any) -> None:
        config = dict(getattr(context, "model_config", None) or {})
        self.artifact = load_artifact(context.artifacts[ARTIFACT_KEY])
        self.predictor = make_predictor(self.artifact, config.get("backend", DEFAULT_BACKEND))
        self.tile = tile_config_for(self.artifact)

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read a schema from them
        params = params or {}
        output = params.get("output", "labels")
        if output not in OUTPUTS:
            raise ValueError(f"params.output {output!r}: expected one of {', '.join(OUTPUTS)}")
        images = np.asarray(model_input, dtype=np.float32)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4:
            raise ValueError(f"input of shape {images.shape}: expected (N, C, H, W) or (C, H, W) float32 images")
        tile = replace(self.tile, tta=bool(params.get("tta", False)))
        probs = [predict_tiled(self.predictor, image, tile, max_pixels=image.shape[1] * image.shape[2]) for image in images]
        if output == "probabilities":
            return np.stack(probs)
        return np.stack([labels_from_probabilities(p, self.artifact) for p in probs])


@dataclass(frozen=True)
class MlflowExport:
    name: str  # the registered model's name in MLflow
    version: str  # its new version there
    model_uri: str  # models:/NAME/VERSION
    run_id: str
    tracking_uri: str


def export_version(record: VersionRecord, blob: Path, uri: str = "", name: str | None = None) -> MlflowExport:
    """Register the artifact at `blob` (registry version `record`) as a new version of the MLflow
    registered model `name` (default the unetkit model's name) in the store at `uri`."""
    uri = resolve_uri(uri)
    name = name or record.name
    from mlflow.models import ModelSignature  # lazy: optional extra (mlflow)
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    channels = int(record.meta.get("architecture", {}).get("in_channels") or -1)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, channels, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
        params=ParamSchema([ParamSpec("output", "string", "labels"), ParamSpec("tta", "boolean", False)]))
    try:
        with quick_http():
            client = mlflow.MlflowClient(tracking_uri=uri)
            experiment = experiment_id(client, uri, os.environ.get(MLFLOW_EXPERIMENT_ENV) or DEFAULT_EXPERIMENT)
    except Exception as e:  # noqa: BLE001 - every failure here is "cannot export there"
        raise ConfigError(f"--to mlflow:{uri}: cannot write to this MLflow store ({failure_reason(e)})") from None
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=experiment, run_name=f"registry-export-{record.name}-{record.version}") as run:
            metrics = {k: float(v) for k, v in record.metrics.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
            mlflow.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()})
            mlflow.set_tags({"unetkit.registry_ref": record.ref, "unetkit.sha256": record.sha256,
                             "unetkit.stage": record.stage})
            with warnings.catch_warnings():  # MLflow's advice on type hints: the signature below says it all
                warnings.simplefilter("ignore", UserWarning)
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(ENTRY), artifacts={ARTIFACT_KEY: str(blob)},
                    signature=signature, registered_model_name=name, pip_requirements=[f"unetkit=={__version__}"],
                    metadata={"unetkit_ref": record.ref, "unetkit_sha256": record.sha256},
                    model_config={"backend": DEFAULT_BACKEND})  # declared, so a loader may override it
        version = str(info.registered_model_version)
        for key, value in {"unetkit.registry_ref": record.ref, "unetkit.sha256": record.sha256,
                           "unetkit.stage": record.stage}.items():
            client.set_model_version_tag(name, version, key, value)
        return MlflowExport(name, version, f"models:/{name}/{version}", run.info.run_id, uri)
    finally:
        mlflow.set_tracking_uri(previous)
