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
