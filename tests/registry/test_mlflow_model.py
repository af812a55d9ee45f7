"""`unetkit registry export NAME:VERSION --to mlflow:URI`: the version registered in a real MLflow
store (SQLite) as a pyfunc whose predictions are unetkit's own."""

from __future__ import annotations

import json

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'unetkit[mlflow]')")

from typer.testing import CliRunner  # noqa: E402

from tests.registry.test_commands import run  # noqa: E402
from tests.serve.samples import synthetic_image  # noqa: E402
from unetkit.artifact import load_artifact  # noqa: E402
from unetkit.cli import app  # noqa: E402
from unetkit.inference.backends import make_predictor  # noqa: E402
from unetkit.inference.files import labels_from_probabilities, tile_config_for  # noqa: E402
from unetkit.inference.predict import predict_tiled  # noqa: E402
from unetkit.registry.registry import Registry  # noqa: E402


def test_export_registers_a_pyfunc_that_predicts_like_unetkit(tmp_path, artifacts, mlflow_uri) -> None:
    reg_path = tmp_path / "reg" / "registry.db"
    with Registry.open(reg_path) as reg:
        reg.add(artifacts["base"])
        reg.add(artifacts["better"])
    result = CliRunner().invoke(app, ["registry", "export", "tiny:2", "--to", f"mlflow:{mlflow_uri}",
                                      "--registry", str(reg_path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # MLflow's own log lines go to stderr
    assert out["model_uri"] == "models:/tiny/1" and out["registry_ref"] == "tiny:2"

    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    version = client.get_model_version("tiny", "1")
    assert version.tags["unetkit.registry_ref"] == "tiny:2" and version.tags["unetkit.sha256"] == out["sha256"]
    run = client.get_run(out["run_id"])
    assert run.data.metrics["mean_iou"] == pytest.approx(0.72)

    mlflow.set_tracking_uri(mlflow_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/tiny/1")
    finally:
        mlflow.set_tracking_uri("")
    # an image larger than the 64-px patch: tiled, as unetkit predicts it
    image = synthetic_image(150, 130, seed=3)
    artifact = load_artifact(artifacts["better"])
    probs = predict_tiled(make_predictor(artifact, "torch"), image, tile_config_for(artifact))
    labels = model.predict(image[None])
    assert labels.shape == (1, 150, 130) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[0], labels_from_probabilities(probs, artifact))
    served = model.predict(image[None], params={"output": "probabilities"})
    np.testing.assert_allclose(served[0], probs, atol=1e-6)


def test_export_to_an_unknown_tracker_is_one_line(tmp_path, artifacts) -> None:
    reg_path = tmp_path / "reg" / "registry.db"
    with Registry.open(reg_path) as reg:
        reg.add(artifacts["base"])
    proc = run("registry", "export", "tiny:1", "--to", "wandb", "--registry", str(reg_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: --to 'wandb': expected NAME or NAME:URI with NAME one of mlflow " \
        "(e.g. mlflow or mlflow:sqlite:///mlflow.db)"
