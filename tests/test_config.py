import pytest

from unetkit.config import TrainConfig, from_dict, parse_duration, replace, to_dict
from unetkit.errors import ConfigError


def test_round_trip_keeps_every_value():
    cfg = from_dict(TrainConfig, {"optim": {"lr": 0.01}, "data": {"patch_size": [64, 96]}})
    assert from_dict(TrainConfig, to_dict(cfg)) == cfg
    assert cfg.data.patch_size == (64, 96)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"optim": {"lrr": 1}}, r"TrainConfig.optim: unknown key 'lrr'"),
        ({"model": {"norm": "bn"}}, r"model.norm: expected one of"),
        ({"steps": "many"}, r"steps: expected an integer"),
        ({"data": {"patch_size": [1]}}, r"patch_size: expected 2 values"),
        ({"precision": "bfloat16"}, r"precision: expected one of"),
        ({"memory_format": "nhwc"}, r"memory_format: expected one of"),
        ({"amp": "auto"}, r"unknown key 'amp'"),
        ({"optim": {"lr": "fast"}}, r"optim.lr: expected a number"),
        ({"augment": {"p": 1.5}}, r"augment.p: expected a probability in \[0, 1\], got 1.5"),
        ({"augment": {"p_geometric": -0.1}},
         r"augment.p_geometric: expected a probability in \[0, 1\], got -0.1"),
        ({"loss": {"lovasz_sample": 0}},
         r"loss.lovasz_sample: expected a fraction of the pixels in \(0, 1\], got 0"),
    ],
)
def test_strict_loading_names_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(TrainConfig, bad)


def test_replace_with_dotted_keys():
    cfg = replace(TrainConfig(), **{"optim.lr": 0.5, "steps": 3})
    assert cfg.optim.lr == 0.5 and cfg.steps == 3
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        replace(cfg, nope=1)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("45", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "30x", "m30", ""])
def test_parse_duration_refuses_garbage(text):
    with pytest.raises(ConfigError, match="expected a duration"):
        parse_duration(text)
