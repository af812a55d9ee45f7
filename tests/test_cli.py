"""The command line: user errors are one line on stderr with a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unetkit", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, match: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert match in lines[0], lines[0]


def engine_tilings(monkeypatch, *args: str) -> list:
    """Run `unetkit ARGS` in this process; the TileConfig of every image the engine tiled."""
    from typer.testing import CliRunner

    import unetkit.inference.predict as engine
    from unetkit.cli import app

    used: list = []
    real = engine.predict_tiled

    def spy(predictor, image, config, **kwargs):  # noqa: ANN001
        used.append(config)
        return real(predictor, image, config, **kwargs)

    with monkeypatch.context() as patched:
        # every module that imported the engine's function (the CLI's stages import at the top)
        for module in [m for name, m in sys.modules.items() if name.startswith("unetkit.")]:
            if getattr(module, "predict_tiled", None) is real:
                patched.setattr(module, "predict_tiled", spy)
        result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return used


def test_help_lists_every_command():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ["train", "predict", "evaluate", "validate", "init-dataset", "models", "demo", "info"]:
        assert command in proc.stdout


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "validate", "init-dataset", "models", "demo", "info"])
def test_each_command_explains_itself(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout and len(proc.stdout) > 200


def test_missing_model_is_one_line(tmp_path):
    proc = run_cli("info", str(tmp_path / "missing.unetkit"))
    assert_one_line_error(proc, "missing.unetkit: model artifact not found")


def test_bad_budget_is_one_line(tmp_path):
    proc = run_cli("train", str(tmp_path), "--budget", "soon")
    assert_one_line_error(proc, "expected a duration such as 90s")


def test_missing_data_folder_is_one_line(tmp_path):
    proc = run_cli("validate", str(tmp_path / "nowhere"))
    assert_one_line_error(proc, "nowhere")


def test_models_lists_the_family():
    proc = run_cli("models", "--size", "128")
    assert proc.returncode == 0, proc.stderr
    for name in ["unet", "attention-unet", "residual-unet", "mobile-unet", "transformer-unet", "unet++"]:
        assert name in proc.stdout


def test_train_with_ensemble_writes_one_artifact_that_predicts(tmp_path):
    import json

    from unetkit.artifact import read_meta
    from unetkit.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_images=8, size=(40, 40), seed=0)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"model": {"base_width": 4, "depth": 2}, "augment": {"enabled": False},
                               "val_every": 4, "progress": False}))
    out = tmp_path / "run"
    proc = run_cli("train", str(data), "--config", str(cfg), "--steps", "4", "--patch", "32", "--batch", "2",
                   "--ensemble", "2", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    meta = read_meta(out / "model.unetkit")
    assert meta.model.ensemble == 2 and len(meta.lineage["members"]) == 2
    pred = run_cli("predict", str(out / "model.unetkit"), str(data / "images"), "--out", str(tmp_path / "pred"))
    assert pred.returncode == 0, pred.stderr
    assert len(list((tmp_path / "pred").glob("*.png"))) >= 8


def test_ensemble_below_one_is_one_line(tmp_path):
    from unetkit.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_images=4, size=(32, 32), seed=0)
    proc = run_cli("train", str(data), "--steps", "1", "--ensemble", "0", "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "ensemble_folds: expected an integer >= 1")


def test_precision_outside_auto_fp32_bf16_fails_at_parse_time(tmp_path):
    proc = run_cli("train", str(tmp_path), "--steps", "1", "--precision", "fp16")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'fp16' is not one of 'auto', 'fp32', 'bf16'" in proc.stderr, proc.stderr


def test_precision_bf16_without_native_bf16_is_one_line_with_the_slowdown(tmp_path, monkeypatch, capsys):
    from unetkit import cli
    from unetkit.training import precision

    monkeypatch.setattr(precision, "native_bf16", lambda: False)  # a CPU without AVX512-BF16 / AMX
    monkeypatch.setattr(sys, "argv", ["unetkit", "train", str(tmp_path), "--steps", "1", "--precision", "bf16",
                                      "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no native bf16" in lines[0] and "available: fp32" in lines[0]
    assert "x the fp32 step time" in lines[0]
