"""fit(config): artifact, JSONL log, resume equivalence, early stopping, budget, bad data."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetkit.config import LossConfig, ModelConfig
from unetkit.errors import ConfigError, DataError
from unetkit.training.checkpoint import BEST, LAST, load_checkpoint
from unetkit.training.fit import fit
from unetkit.training.runlog import read_log


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(Path(run_dir) / LAST)["model"]


def test_fit_writes_artifact_checkpoints_and_log(tiny_config, capsys) -> None:
    from unetkit.artifact import load_artifact

    cfg = tiny_config()
    events: list[dict] = []
    path = fit(cfg, callbacks=[events.append])
    assert capsys.readouterr().out == ""  # progress=False: quiet
    art = load_artifact(path)
    meta = art.meta
    assert path == Path(cfg.out_dir) / "model.unetkit"
    assert len(meta.class_names) == 4 and meta.class_names[0] == "background"
    assert meta.model.in_channels == 3 and meta.model.out_channels == 4  # resolved from the data
    assert len(meta.mean) == 3 and all(s > 0 for s in meta.std)
    assert meta.patch_size == (32, 32)
    assert meta.train_config["steps"] == 12 and meta.train_config["model"]["out_channels"] == 4
    assert [h["step"] for h in meta.history] == [6, 12]
    assert "mean_dice_foreground" in meta.metrics and meta.metrics["step"] in (6, 12)
    assert meta.fingerprint and meta.data_spec["classes"][1]["name"] == meta.class_names[1]
    assert (Path(cfg.out_dir) / LAST).is_file() and (Path(cfg.out_dir) / BEST).is_file()
    assert not list(Path(cfg.out_dir).glob("*.tmp"))  # atomic writes leave nothing behind

    log = read_log(Path(cfg.out_dir) / "metrics.jsonl")
    assert log == events  # callbacks see exactly what the log holds
    kinds = [e["event"] for e in log]
    assert kinds[0] == "start" and kinds[-1] == "end" and "stop" in kinds
    train = [e for e in log if e["event"] == "train"]
    assert [e["step"] for e in train] == [1, 10, 12]
    for e in train:
        assert {"time", "lr", "loss", "loss_ce", "loss_dice", "grad_norm"} <= set(e)
        assert np.isfinite(e["loss"]) and e["lr"] > 0
    assert [e["time"] for e in log] == sorted(e["time"] for e in log)
    val = [e for e in log if e["event"] == "val"]
    assert [e["step"] for e in val] == [6, 12]
    assert {"mean_iou", "mean_dice_foreground", f"dice/{meta.class_names[1]}", f"iou/{meta.class_names[3]}", "best", "best_step"} <= set(val[0])
    assert next(e for e in log if e["event"] == "stop")["reason"] == "steps"


def test_fit_tunes_postprocessing_on_the_validation_split_and_stores_it(tiny_config) -> None:
    from unetkit.artifact import load_artifact
    from unetkit.evaluation.labelled import iter_probabilities, load_labelled
    from unetkit.inference.postprocess import apply_postprocess
    from unetkit.tuning.postprocess import score_labels

    cfg = tiny_config(tune_postprocess="iou")
    art = load_artifact(fit(cfg))
    record = art.meta.metrics["postprocess_tuning"]
    assert record["metric"] == "iou" and record["postprocess"] == art.meta.postprocess
    assert record["after"] >= record["before"] and record["images"] == len(record["keys"]) >= 1
    # the record is what the saved model and its postprocessing score on those validation images
    _, samples = load_labelled(art, cfg.data.data, record["keys"], progress=False)
    pairs = list(iter_probabilities(art, samples, progress=False))
    labels = [apply_postprocess(p, art.meta.postprocess) for _, p in pairs]
    score = score_labels(labels, [s.labels for s, _ in pairs], art.meta.num_classes, "iou", art.meta.ignore_index)
    assert score == pytest.approx(record["after"], abs=1e-6)
    # calibrated first, on the same images: the tuning saw the calibrated probabilities
    cal = art.meta.metrics["calibration"]
    assert cal["keys"] == record["keys"] and art.meta.temperature == pytest.approx(cal["temperature"])
    assert art.meta.temperature != 1.0 and cal["nll_after"] <= cal["nll_before"] + 1e-9
    off = load_artifact(fit(tiny_config("off", tune_postprocess="off", calibrate=False)))
    assert "postprocess_tuning" not in off.meta.metrics and off.meta.postprocess == {}
    assert "calibration" not in off.meta.metrics and off.meta.temperature == 1.0


def test_postprocess_tuning_holds_a_bounded_spread_of_the_validation_images(tiny_config, monkeypatch) -> None:
    from unetkit.artifact import load_artifact
    from unetkit.training import fit as fit_module

    monkeypatch.setattr(fit_module, "MAX_TUNE_IMAGES", 1)
    art = load_artifact(fit(tiny_config(tune_postprocess="dice", calibrate=False)))
    record = art.meta.metrics["postprocess_tuning"]
    assert record["images"] == 1 and len(record["keys"]) == 1


def test_checkpoint_is_weights_only_loadable(tiny_config) -> None:
    cfg = tiny_config(steps=3, val_every=100)
    fit(cfg)
    raw = torch.load(Path(cfg.out_dir) / LAST, weights_only=True)  # no arbitrary unpickling needed
    assert raw["state"]["step"] == 3 and raw["state"]["total_steps"] == 3
    assert isinstance(raw["rng"]["torch"], torch.Tensor) and "sampler" in raw["rng"]


def test_resume_reproduces_an_uninterrupted_run(tiny_config) -> None:
    from unetkit.config import AugmentConfig

    augment = AugmentConfig(enabled=True, rotate_degrees=10.0, noise_std=0.05)  # uses the torch RNG
    straight = tiny_config("straight", augment=augment)
    fit(straight)

    def interrupt_at_first_validation(event: dict) -> None:
        if event["event"] == "val" and event["step"] == 6:
            signal.raise_signal(signal.SIGINT)  # handled: stop at the step boundary, checkpoint, raise

    split = tiny_config("split", augment=augment)
    with pytest.raises(KeyboardInterrupt):
        fit(split, callbacks=[interrupt_at_first_validation])
    assert load_checkpoint(Path(split.out_dir) / LAST)["state"]["step"] == 6
    fit(tiny_config("split", augment=augment, resume=True))

    a, b = _weights(straight.out_dir), _weights(split.out_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)
    events = [e["event"] for e in read_log(Path(split.out_dir) / "metrics.jsonl")]
    assert events.count("start") == 2 and "stop" in events


def test_resume_refuses_a_different_model(tiny_config) -> None:
    fit(tiny_config(steps=2, val_every=100))
    with pytest.raises(ConfigError, match="model.base_width"):
        fit(tiny_config(steps=4, resume=True, model=ModelConfig(base_width=8, depth=2)))


def test_resume_without_checkpoint_says_so(tiny_config) -> None:
    from unetkit.errors import ArtifactError

    with pytest.raises(ArtifactError, match="checkpoint-last.pt: checkpoint not found"):
        fit(tiny_config(resume=True))


def test_early_stopping_after_patience_validations(tiny_config) -> None:
    # a learning rate too small to change anything: the metric never improves after the first validation
    from unetkit.config import OptimConfig

    cfg = tiny_config(steps=200, val_every=1, early_stop_patience=2,
                      optim=OptimConfig(lr=1e-12, warmup_steps=0, schedule="constant"),
                      model=ModelConfig(base_width=4, depth=2, norm="group"))
    fit(cfg)
    log = read_log(Path(cfg.out_dir) / "metrics.jsonl")
    stop = next(e for e in log if e["event"] == "stop")
    assert stop == {**stop, "reason": "early_stop", "step": 3}
    assert [e["step"] for e in log if e["event"] == "val"] == [1, 2, 3]


def test_budget_stops_in_time_with_a_fitted_schedule(tiny_config) -> None:
    from unetkit.artifact import load_artifact

    budget = 8.0
    cfg = tiny_config(steps=100_000, budget_seconds=budget, val_every=50)
    t0 = time.perf_counter()
    path = fit(cfg)
    elapsed = time.perf_counter() - t0
    assert 0.9 * budget <= elapsed <= 1.1 * budget, elapsed
    assert load_artifact(path).meta.metrics
    state = load_checkpoint(Path(cfg.out_dir) / LAST)["state"]
    assert state["budget_decided"] and state["total_steps"] < 100_000
    assert state["total_steps"] - state["step"] <= max(2, 0.02 * state["total_steps"])  # ran (nearly) the plan
    log = read_log(Path(cfg.out_dir) / "metrics.jsonl")
    plans = [e for e in log if e["event"] == "budget"]  # first plan, then refreshed as speed varies
    assert plans and plans[-1]["total_steps"] == state["total_steps"]
    lrs = [e["lr"] for e in log if e["event"] == "train"]
    assert lrs[-1] < 0.05 * cfg.optim.lr  # the schedule decayed to its end inside the budget


def test_refuses_bad_data_naming_the_file(tiny_config, shapes_data: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes_data, data)
    bad = sorted((data / "masks").iterdir())[0]
    Image.open(bad).resize((20, 20)).save(bad)  # a mask whose size does not match its image
    with pytest.raises(DataError, match=bad.name):
        fit(tiny_config(data=data))
    cfg = tiny_config("skip", data=data, steps=2, val_every=100)
    path = fit(replace(cfg, data=replace(cfg.data, skip_bad=True)))  # trains on the good files
    assert path.is_file()


def test_tensorboard_missing_names_the_extra(tiny_config) -> None:
    try:
        import tensorboard  # noqa: F401

        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match=r"pip install unetkit\[tensorboard\]"):
        fit(tiny_config(steps=1, tensorboard=True))


def test_distributed_batch_must_divide(tiny_config) -> None:
    from unetkit.training.distributed import DistEnv, rank_share

    assert rank_share(8, DistEnv(1, 2, 1)) == slice(4, 8)
    with pytest.raises(ConfigError, match="data.batch_size: 6 is not divisible by the 4"):
        rank_share(6, DistEnv(0, 4, 0))


def test_loss_config_reaches_the_log(tiny_config) -> None:
    cfg = tiny_config(steps=1, val_every=100, loss=LossConfig(ce=1.0, dice=0.0, focal=0.5))
    fit(cfg)
    train = [e for e in read_log(Path(cfg.out_dir) / "metrics.jsonl") if e["event"] == "train"]
    assert {"loss_ce", "loss_focal"} <= set(train[0]) and "loss_dice" not in train[0]
    assert json.loads(json.dumps(train[0])) == train[0]


def test_ema_weights_are_validated_selected_saved_and_resumed(tiny_config) -> None:
    from unetkit.artifact import load_artifact
    from unetkit.config import OptimConfig

    optim = OptimConfig(lr=3e-3, warmup_steps=2, ema_decay=0.9)
    straight = tiny_config("ema-straight", optim=optim, val_every=100)  # one validation, at the end
    art = load_artifact(fit(straight))
    last = load_checkpoint(Path(straight.out_dir) / LAST)
    best = load_checkpoint(Path(straight.out_dir) / BEST)
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert averaged.keys() == last["model"].keys()
    assert any(not torch.allclose(v, last["model"][k]) for k, v in averaged.items() if v.is_floating_point())
    for name, value in averaged.items():  # the best checkpoint and the artifact hold the average
        torch.testing.assert_close(best["model"][name], value, atol=0, rtol=0, msg=name)
        torch.testing.assert_close(art.state_dict[name], value, atol=0, rtol=0, msg=name)

    def interrupt(event: dict) -> None:
        if event["event"] == "val" and event["step"] == 6:
            signal.raise_signal(signal.SIGINT)

    split = tiny_config("ema-split", optim=optim)
    with pytest.raises(KeyboardInterrupt):
        fit(split, callbacks=[interrupt])
    fit(tiny_config("ema-split", optim=optim, resume=True))
    resumed = load_checkpoint(Path(split.out_dir) / LAST)["ema"]
    for name, value in last["ema"].items():  # resume continues the average exactly
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=0, msg=name)
