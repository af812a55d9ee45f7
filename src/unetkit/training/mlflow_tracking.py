"""`--track mlflow[:URI]`: a training run as an MLflow run (a `Tracker`, `unetkit.training.tracker`; chosen by `unetkit.training.tracking`).

What the run holds:
- params: the resolved TrainConfig, flattened (`optim.lr`, `model.base_width`, ...); the plan as
  `plan.json` (every choice with its reason) and the config as `config.json`;
- tags: `unetkit.data_sha256` (the data's content hash), the compute mode and device of the "start" event,
  the stop reason; the data fingerprint as the run's dataset input (digest = content hash, profile =
  sizes and channels) and in full as `fingerprint.json`;
- metrics: every "train" event (`train/loss`, `train/lr`, ...) and every validation (`val/mean_dice_foreground`, ...)
  at its step, the budget's step plan (`budget/total_steps`), and the artifact's final metrics (`final/...`);
- at the end: the artifact (`model/model.unetkit`), the run log (`log/metrics.jsonl`) and the
  time-to-quality plot (`plots/time_to_quality.png`: validation score against minutes, drawn from the
  run log, so a resumed run's earlier processes are in it).

URI: what `--track mlflow:URI` says, else $MLFLOW_TRACKING_URI, else MLflow's default `sqlite:///mlflow.db`
in the working folder. A new experiment on a local SQLite store keeps its artifacts beside the
database (`mlartifacts/`). The experiment is $MLFLOW_EXPERIMENT_NAME, else "unetkit".
`open` connects (without MLflow's minutes of HTTP retries) and refuses a store it cannot write.
A resumed run (`resume`) continues the MLflow run its folder records (`tracking.json`).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from unetkit.config import MLFLOW_EXPERIMENT_ENV, TrainConfig, to_dict
from unetkit.data.atomic import atomic_write
from unetkit.errors import ConfigError
from unetkit.evaluation.figures import time_to_quality_figure
from unetkit.training.loop import SELECTION_METRIC
from unetkit.training.runlog import read_log
from unetkit.training.tracker import Tracker

DEFAULT_EXPERIMENT = "unetkit"
RUN_FILE = "tracking.json"  # in the run folder: which MLflow run a resume continues
CONNECT_TIMEOUT_SECONDS = 10  # the check at open: one try, this long, not MLflow's default retries
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError("--track mlflow / --to mlflow need the mlflow package: pip install 'unetkit[mlflow]'") from None
    return mlflow


def resolve_uri(uri: str) -> str:
    """The tracking URI `uri` means: itself, else $MLFLOW_TRACKING_URI / MLflow's default (SQLite in the
    working folder); a relative SQLite path made absolute (a run's record should not depend on its cwd)."""
    mlflow = import_mlflow()
    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


@contextmanager
def quick_http():
    """MLflow's HTTP calls without its default retries (minutes against a dead server): for the check at open."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(CONNECT_TIMEOUT_SECONDS)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def experiment_id(client: Any, uri: str, name: str) -> str:
    """The experiment `name` (created when missing: on a local SQLite store with its artifacts beside
    the database); its artifact folder, when local, checked writable."""
    found = client.get_experiment_by_name(name)
    if found is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        return client.create_experiment(name, artifact_location=location)
    artifacts = urlparse(found.artifact_location)
    if artifacts.scheme in ("", "file"):
        folder = Path(artifacts.path)
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"artifact folder {folder} is not writable")
    return found.experiment_id


def failure_reason(error: BaseException) -> str:
    """Why an MLflow store could not be used, in a few words (MLflow's HTTP errors run to paragraphs)."""
    text = str(error).strip()
    if "NewConnectionError" in text or "Connection refused" in text:
        return "nothing answers there: connection refused"
    if "timed out" in text.lower() or "ReadTimeout" in text:
        return f"no answer within {CONNECT_TIMEOUT_SECONDS} s"
    return text.splitlines()[0][:300] if text else type(error).__name__


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, client: Any, uri: str, experiment: str, out_dir: str) -> None:
        self.client, self.uri, self.experiment_id, self.out_dir = client, uri, experiment, out_dir
        self.run_id = ""

    @classmethod
    def open(cls, uri: str, out_dir: str = "") -> MlflowTracker:
        """Connect to `uri` (see `resolve_uri`) and get or create the experiment; `ConfigError` naming the
        URI when the store cannot be reached or written."""
        mlflow = import_mlflow()
        uri = resolve_uri(uri)
        name = os.environ.get(MLFLOW_EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
        try:
            with quick_http():
                client = mlflow.MlflowClient(tracking_uri=uri)
                experiment = experiment_id(client, uri, name)
        except Exception as e:  # noqa: BLE001 - every failure here is "cannot track there"
            raise ConfigError(f"--track mlflow:{uri}: cannot write to this MLflow store ({failure_reason(e)}); give a "
                              "writable "
                              "URI (e.g. mlflow:sqlite:///runs/mlflow.db or a running server's http://host:5000) "
                              "or leave --track out") from None
        return cls(client, uri, experiment, out_dir)

    # ------------------------------------------------------------ the Tracker interface

    def start(self, config: TrainConfig, fingerprint: dict[str, Any]) -> None:
        resumed = self._resumed_run(config)
        if resumed:
            self.run_id = resumed
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(self.experiment_id, run_name=Path(config.out_dir).name or None,
                                     tags={"unetkit.out_dir": str(Path(config.out_dir).resolve()),
                                           "unetkit.data": config.data.data,
                                           "unetkit.data_sha256": str(fingerprint.get("content_sha256", ""))})
        self.run_id = run.info.run_id
        if self.out_dir:
            atomic_write(Path(self.out_dir) / RUN_FILE,
                         json.dumps({"mlflow_run_id": self.run_id, "tracking_uri": self.uri}).encode())
        self._log_params(config)
        self._log_dataset(config, fingerprint)
        settings = to_dict(config)
        self.client.log_dict(self.run_id, settings.pop("plan") or {}, "plan.json")
        self.client.log_dict(self.run_id, settings, "config.json")
        self.client.log_dict(self.run_id, fingerprint, "fingerprint.json")

    def event(self, event: dict[str, Any]) -> None:
        kind, step = event.get("event"), int(event.get("step") or 0)
        if kind in ("train", "val", "budget"):
            numbers = {f"{kind}/{_metric_name(k)}": float(v) for k, v in event.items()
                       if k not in ("event", "step", "time") and _is_number(v)}
            self._log_metrics(numbers, step)
        if kind == "start":
            from mlflow.entities import RunTag  # lazy: optional extra (mlflow)

            tags = [RunTag(f"unetkit.{k}", str(event[k])[:5000]) for k in ("mode", "mode_reason", "device", "world_size",
                                                                           "train_images", "val_images", "resumed")
                    if k in event]
            self.client.log_batch(self.run_id, tags=tags)
        elif kind == "stop":
            self.client.set_tag(self.run_id, "unetkit.stop_reason", str(event.get("reason", "")))
        elif kind == "end" and event.get("artifact"):
            self._log_end(Path(event["artifact"]))

    def close(self, status: str) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)

    # ------------------------------------------------------------ pieces

    def _resumed_run(self, config: TrainConfig) -> str:
        """The MLflow run a resumed training run continues (its folder's record, same store), else ""."""
        record = Path(self.out_dir) / RUN_FILE if self.out_dir else None
        if not config.resume or record is None or not record.is_file():
            return ""
        saved = json.loads(record.read_text())
        return saved.get("mlflow_run_id", "") if saved.get("tracking_uri") == self.uri else ""

    def _log_params(self, config: TrainConfig) -> None:
        from mlflow.entities import Param  # lazy: optional extra (mlflow)

        settings = to_dict(config)
        settings.pop("plan", None)
        params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in _flatten(settings).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _log_dataset(self, config: TrainConfig, fingerprint: dict[str, Any]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag  # lazy: optional extra (mlflow)

        profile = {k: fingerprint.get(k) for k in ("n_samples", "channels", "size", "labelled_fraction")}
        dataset = Dataset(name=Path(config.data.data).name or config.data.data,
                          digest=str(fingerprint.get("content_sha256", ""))[:36], source_type="local",
                          source=json.dumps({"uri": str(Path(config.data.data).resolve())}),
                          profile=json.dumps(profile, default=float))
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])

    def _log_metrics(self, numbers: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric  # lazy: optional extra (mlflow)

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in numbers.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def _log_end(self, artifact: Path) -> None:
        from unetkit.artifact import read_meta  # lazy: only the run's end reads the artifact back

        meta = read_meta(artifact)
        finals = {f"final/{_metric_name(k)}": float(v) for k, v in _flatten(meta.metrics).items() if _is_number(v)}
        self._log_metrics(finals, int(meta.metrics.get("step") or 0))
        self.client.set_tag(self.run_id, "unetkit.weights_sha256", meta.weights_sha256)
        self.client.log_artifact(self.run_id, str(artifact), "model")
        log = artifact.parent / "metrics.jsonl"
        if not log.is_file():
            return
        self.client.log_artifact(self.run_id, str(log), "log")
        # the whole run's validations, from its log: a resumed run's earlier processes included
        vals = [e for e in read_log(log) if e.get("event") == "val" and _is_number(e.get(SELECTION_METRIC))]
        if vals:
            points = [(float(e["time"]), float(e[SELECTION_METRIC])) for e in vals]
            kept = [p for p, e in zip(points, vals, strict=True) if e.get("best_step") == e.get("step")]
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / "time_to_quality.png"
                atomic_write(png, time_to_quality_figure(points, SELECTION_METRIC, kept[-1] if kept else None))
                self.client.log_artifact(self.run_id, str(png), "plots")


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _metric_name(key: str) -> str:
    return _UNSAFE.sub("_", str(key))
