"""The command line: user errors are one line on stderr with a non-zero exit, never a traceback."""

import dataclasses
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


def test_unlabelled_images_without_a_budget_are_one_line(tmp_path):
    proc = run_cli("train", str(tmp_path), "--unlabelled", str(tmp_path), "--out", str(tmp_path / "run"))
    assert_one_line_error(proc, "--unlabelled needs --budget")
    assert not (tmp_path / "run").exists()


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


# ---- conventions: version, choices, environment variables, exit codes, completion


def test_version_prints_the_version():
    from unetkit import __version__

    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"unetkit {__version__}"


def test_a_mistyped_backend_fails_at_parse_time_listing_the_valid_values(tmp_path):
    from unetkit.config import BACKENDS

    proc = run_cli("predict", str(tmp_path / "missing.unetkit"), str(tmp_path), "--backend", "onx")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'onx' is not one of " + ", ".join(f"'{b}'" for b in BACKENDS) in proc.stderr, proc.stderr
    assert "model artifact not found" not in proc.stderr  # refused before the command ran


@pytest.mark.parametrize("command, option, choices", [
    (["rank"], "--by", "RANK_SCORES"), (["rank"], "--aggregate", "RANK_AGGREGATES"),
    (["export"], "--format", "ExportFormat"), (["train"], "--precision", "TrainPrecision"),
    (["train"], "--postprocess", "TunePostprocess"), (["serve"], "--stage", "ServedStage"),
    (["registry", "add"], "--stage", "AddStage"), (["registry", "list"], "--stage", "REGISTRY_STAGES"),
    (["pretrain"], "--objective", "PRETRAIN_OBJECTIVES"), (["pretrain"], "--keep", "PRETRAIN_KEEPS"),
    (["pretrain"], "--input-norm", "InputNorm"),
    (["predict"], "--tta-views", "TTA_VIEWS"), (["evaluate"], "--tta-views", "TtaViews"),
    (["rank"], "--tta-views", "TtaViews"), (["export"], "--tta-views", "TtaViews"),
    (["serve"], "--tta-views", "ServedTtaViews"),
])
def test_choice_options_list_the_closed_set_config_owns(command, option, choices):
    from pathlib import Path
    from typing import get_args

    from typer.testing import CliRunner

    import unetkit.config as config
    from unetkit.cli import app

    values = getattr(config, choices)
    values = values if isinstance(values, tuple) else get_args(values)
    text = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300"}).output
    assert f"{option} <{'|'.join(values)}>" in text, text
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert f"| {', '.join(values)}" in docs, f"docs/cli.md's table of choices lacks {option}: {', '.join(values)}"


def test_help_lists_every_exit_code_and_variable_and_docs_say_the_same():
    from pathlib import Path

    from unetkit.cli import ENVIRONMENT, EXIT_CODES

    text = run_cli("--help").stdout
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    for code in EXIT_CODES:
        assert f"\n    {code} " in text and f"| {code} |" in docs, code
    for name in ENVIRONMENT:
        assert name in text and name in docs, name


def test_environment_variables_show_in_help_and_are_honoured(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from unetkit.cli import app
    from unetkit.serve import server

    runner = CliRunner()
    assert "UNETKIT_SERVE_PORT" in runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "300"}).output
    assert "UNETKIT_REGISTRY]" in runner.invoke(app, ["registry", "list", "--help"], env={"COLUMNS": "300"}).output
    started = []
    monkeypatch.setattr(server, "run_server", started.append)
    config = tmp_path / "serve.json"
    config.write_text('{"port": 9002, "host": "0.0.0.0"}')
    for env, flags, port in [({}, [], 9002), ({"UNETKIT_SERVE_PORT": "9001"}, [], 9001),
                             ({"UNETKIT_SERVE_PORT": "9001"}, ["--port", "9003"], 9003)]:
        result = runner.invoke(app, ["serve", "m.unetkit", "--config", str(config), *flags], env=env)
        assert result.exit_code == 0, result.output
        assert (started[-1].port, started[-1].host) == (port, "0.0.0.0")  # flags > env > file > defaults
    bad = runner.invoke(app, ["serve", "m.unetkit"], env={"UNETKIT_SERVE_STAGE": "prod"})
    assert bad.exit_code == 2 and "'prod' is not one of 'staging', 'production'" in bad.output


def test_completion_lists_choices_without_loading_torch():
    code = ("import os, sys; os.environ.update(_UNETKIT_COMPLETE='complete_bash', COMP_WORDS='unetkit predict m x "
            "--backend o', COMP_CWORD='5'); import unetkit.cli as cli\n"
            "try:\n    cli.app(prog_name='unetkit')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["onnx", "openvino", "openvino-bf16"], proc.stdout + proc.stderr
    assert proc.stderr.strip() == "False"
    # --show-completion detects the shell from the parent processes: run it from bash (the `; true`
    # keeps bash from exec-ing python in its place), as a user at a prompt would
    shown = subprocess.run(["bash", "-c", f"'{sys.executable}' -m unetkit --show-completion; true"],
                           capture_output=True, text=True, timeout=120)
    assert "_UNETKIT_COMPLETE" in shown.stdout or "complete" in shown.stdout, shown.stdout + shown.stderr


def _tiny_config(tmp_path):
    import json

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"model": {"base_width": 4, "depth": 2}, "augment": {"enabled": False},
                               "val_every": 2, "precision": "fp32", "memory_format": "contiguous"}))
    return cfg


def test_init_from_an_artifact_for_other_channels_is_one_line_and_writes_nothing(tmp_path):
    from PIL import Image

    from unetkit.artifact import ArtifactMeta, save_artifact
    from unetkit.config import ModelConfig
    from unetkit.data.synthetic import make_synthetic_dataset
    from unetkit.models import build_model

    cfg = ModelConfig(in_channels=3, out_channels=2, base_width=4, depth=2)
    parent = save_artifact(tmp_path / "rgb.unetkit", build_model(cfg),
                           ArtifactMeta(model=cfg, class_names=("a", "b"), mean=(0.0,) * 3, std=(1.0,) * 3,
                                        patch_size=(32, 32)))
    data = make_synthetic_dataset(tmp_path / "data", n_images=4, size=(32, 32), seed=0)
    for p in (data / "images").iterdir():
        Image.open(p).convert("L").save(p)
    proc = run_cli("train", str(data), "--init", str(parent), "--steps", "2", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "rgb.unetkit: the model takes 3 input channel(s), the data's images have 1")
    assert not (tmp_path / "run").exists()


def test_pretrain_then_train_from_the_encoder_records_it(tmp_path):
    from unetkit.artifact import read_meta
    from unetkit.data.io import file_sha256
    from unetkit.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_images=4, size=(32, 32), seed=0)
    enc = tmp_path / "enc.safetensors"
    pre = run_cli("pretrain", str(data / "images"), "--steps", "3", "--width", "4", "--depth", "2", "--patch", "32",
                  "--batch", "2", "-o", str(enc), "--quiet")
    assert pre.returncode == 0, pre.stderr
    assert "3 steps" in pre.stdout and enc.is_file()
    out = tmp_path / "run"
    proc = run_cli("train", str(data), "--pretrained", str(enc), "--config", str(_tiny_config(tmp_path)), "--steps",
                   "2", "--patch", "32", "--batch", "2", "--freeze-encoder-steps", "1", "--encoder-lr-ratio", "0.5",
                   "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    meta = read_meta(out / "model.unetkit")
    assert meta.lineage["pretrained_sha256"] == file_sha256(enc)
    assert meta.train_config["finetune"]["freeze_encoder_steps"] == 1
    bad = run_cli("pretrain", str(data / "images"), "--objective", "jigsaw", "-o", str(tmp_path / "x.safetensors"))
    assert bad.returncode == 2 and not (tmp_path / "x.safetensors").exists()


def test_distill_from_an_artifact_trains_the_student_alone_and_refuses_bad_teachers(tmp_path):
    import json

    from unetkit.artifact import load_artifact, read_meta, save_artifact
    from unetkit.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_images=6, size=(32, 32), seed=0)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"model": {"base_width": 4, "depth": 2}, "augment": {"enabled": False},
                               "val_every": 2, "calibrate": False, "tune_postprocess": "off"}))
    common = ("--config", str(cfg), "--steps", "2", "--patch", "32", "--batch", "2", "--quiet")
    assert run_cli("train", str(data), *common, "--out", str(tmp_path / "teacher")).returncode == 0
    teacher = tmp_path / "teacher" / "model.unetkit"
    shown = [arg for arg in common if arg != "--quiet"]  # progress on: the run names its teacher
    proc = run_cli("train", str(data), *shown, "--distill-from", str(teacher), "--out", str(tmp_path / "student"))
    assert proc.returncode == 0, proc.stderr
    assert f"distillation: {teacher} (unet w4 d2 batch) predicts the" in proc.stdout
    meta = read_meta(tmp_path / "student" / "model.unetkit")
    assert meta.metrics["distillation"]["teacher"]["artifact"] == str(teacher)
    assert meta.lineage["teacher_sha256"] and not (tmp_path / "student" / "teacher").exists()

    off = run_cli("train", str(data), *common, "--distill", "off", "--distill-from", str(teacher),
                  "--out", str(tmp_path / "never"))
    assert off.returncode == 2
    assert_one_line_error(off, "distillation is off (--distill off); drop one of the two")
    other = read_meta(teacher)  # the teacher of another task: its classes renamed
    renamed = tuple(f"{name}-elsewhere" for name in other.class_names)
    save_artifact(tmp_path / "other.unetkit", load_artifact(teacher).state_dict,
                  dataclasses.replace(other, class_names=renamed))
    wrong = run_cli("train", str(data), *common, "--distill-from", str(tmp_path / "other.unetkit"),
                    "--out", str(tmp_path / "never"))
    assert wrong.returncode == 2
    assert_one_line_error(wrong, "a teacher must predict the student's classes, in order")
    assert not (tmp_path / "never").exists()
