"""k-fold ensembling: folds, members, the ensemble artifact, budget and resume."""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unetkit.errors import ConfigError
from unetkit.training.checkpoint import load_checkpoint
from unetkit.training.ensemble import MEMBER_FINAL, fold_keys
from unetkit.training.fit import fit
from unetkit.training.runlog import read_log


@pytest.fixture(scope="module")
def ten_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from unetkit.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("ten"), n_images=10, size=(48, 48), seed=1)


def test_folds_are_disjoint_cover_the_keys_and_do_not_depend_on_their_order() -> None:
    keys = [f"k{i:02d}" for i in range(11)]
    folds = fold_keys(keys, 3, seed=0)
    assert sorted(sum(folds, [])) == keys
    assert sorted(len(f) for f in folds) == [3, 4, 4]
    assert fold_keys(list(reversed(keys)), 3, seed=0) == folds
    assert fold_keys(keys, 3, seed=1) != folds


def test_ensemble_artifact_averages_members_trained_on_their_folds(tiny_config, ten_images: Path) -> None:
    from unetkit.artifact import load_artifact
    from unetkit.models import build_model

    cfg = tiny_config("ens", data=ten_images, ensemble_folds=2, calibrate=False, tune_postprocess="off")
    path = fit(cfg)
    art = load_artifact(path)
    out = Path(cfg.out_dir)
    assert art.meta.model.ensemble == 2
    assert {k.split(".")[1] for k in art.state_dict} == {"0", "1"}

    # every member validated on its own fold of the training split; none saw the validation split
    val_keys = set(art.meta.metrics["calibration"]["keys"]) if "calibration" in art.meta.metrics else None
    members = art.meta.lineage["members"]
    folds = [set(m["fold"]) for m in members]
    assert folds[0].isdisjoint(folds[1]) and len(folds[0] | folds[1]) == 7  # 10 images, 3 for validation
    for i, m in enumerate(members):
        start = next(e for e in read_log(out / f"member-{i}" / "metrics.jsonl") if e["event"] == "start")
        assert (start["train_images"], start["val_images"]) == (7 - len(folds[i]), len(folds[i]))
        assert m["steps"] == cfg.steps
    assert val_keys is None  # calibrate=False: nothing fitted on the validation split
    assert {h["member"] for h in art.meta.history} == {0, 1}
    assert "mean_dice_foreground" in art.meta.metrics  # the ensemble scored on the validation split

    # the artifact's probabilities are the members' mean probabilities
    x = torch.rand(2, 3, 48, 48) * 255
    with torch.no_grad():
        got = art.pipeline_module(probabilities=True)(x)
        probs = []
        for i in range(2):
            member = build_model(dataclasses.replace(art.meta.model, ensemble=1))
            member.load_state_dict(load_checkpoint(out / f"member-{i}" / MEMBER_FINAL)["model"])
            member.eval()
            probs.append(torch.softmax(member((x - torch.tensor(art.meta.mean).view(1, -1, 1, 1))
                                              / torch.tensor(art.meta.std).view(1, -1, 1, 1)), dim=1))
    torch.testing.assert_close(got, (probs[0] + probs[1]) / 2, atol=1e-5, rtol=0)
    assert not torch.allclose(probs[0], probs[1], atol=1e-3)  # two different members


def test_ensemble_is_calibrated_and_tuned_as_one_model(tiny_config, ten_images: Path) -> None:
    from unetkit.artifact import load_artifact

    art = load_artifact(fit(tiny_config("ens-cal", data=ten_images, ensemble_folds=2, tune_postprocess="dice")))
    assert art.meta.metrics["calibration"]["keys"] == art.meta.metrics["postprocess_tuning"]["keys"]
    assert len(art.meta.metrics["calibration"]["keys"]) == 3
    members = {k for m in art.meta.lineage["members"] for k in m["fold"]}
    assert members.isdisjoint(art.meta.metrics["calibration"]["keys"])
    assert art.meta.drift_baseline


def test_too_few_training_images_for_the_folds_is_a_config_error(tiny_config) -> None:
    with pytest.raises(ConfigError, match=r"ensemble_folds: 3 folds need at least 6 training images.*got 4"):
        fit(tiny_config(ensemble_folds=3))


def test_ensemble_fits_the_budget(tiny_config, ten_images: Path) -> None:
    budget = 10.0
    cfg = tiny_config("ens-budget", data=ten_images, ensemble_folds=2, steps=100_000, budget_seconds=budget,
                      val_every=50)
    t0 = time.perf_counter()
    fit(cfg)
    elapsed = time.perf_counter() - t0
    assert 0.85 * budget <= elapsed <= 1.1 * budget, elapsed
    members = [e for e in read_log(Path(cfg.out_dir) / "metrics.jsonl") if e["event"] == "member"]
    assert len(members) == 2 and all(m["steps"] < 100_000 for m in members)
    assert abs(members[0]["seconds"] - members[1]["seconds"]) < 0.25 * budget  # equal shares


def test_resume_skips_finished_members(tiny_config, ten_images: Path) -> None:
    from unetkit.artifact import load_artifact

    def interrupt_second_member(event: dict) -> None:
        if event["event"] == "val" and event["step"] == 6 and (Path(cfg.out_dir) / "member-0" / MEMBER_FINAL).is_file():
            signal.raise_signal(signal.SIGINT)

    cfg = tiny_config("ens-resume", data=ten_images, ensemble_folds=2, calibrate=False)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, callbacks=[interrupt_second_member])
    assert not (Path(cfg.out_dir) / "model.unetkit").exists()
    first = load_checkpoint(Path(cfg.out_dir) / "member-0" / MEMBER_FINAL)["model"]
    art = load_artifact(fit(tiny_config("ens-resume", data=ten_images, ensemble_folds=2, calibrate=False,
                                        resume=True)))
    starts = [e for e in read_log(Path(cfg.out_dir) / "member-0" / "metrics.jsonl") if e["event"] == "start"]
    assert len(starts) == 1  # member 0 was not trained again
    resumed = [e for e in read_log(Path(cfg.out_dir) / "member-1" / "metrics.jsonl") if e["event"] == "start"]
    assert [e["resumed"] for e in resumed] == [False, True]
    for name, value in first.items():
        torch.testing.assert_close(art.state_dict[f"members.0.{name}"], value)
    assert np.isfinite(art.meta.metrics["mean_dice_foreground"])
