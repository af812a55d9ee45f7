"""Fine-tuning: fit from a trained artifact (--init) or pretrained encoder weights; freezing, discriminative
LRs, new classes, lineage, and the refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetkit.artifact import load_artifact
from unetkit.config import FinetuneConfig
from unetkit.data.io import file_sha256
from unetkit.errors import ArtifactError, ConfigError
from unetkit.models import build_model
from unetkit.models.unet_encoder import encoder_state, is_encoder_key, network_state, save_unet_encoder
from unetkit.training.finetune import apply_start, read_start, start_model
from unetkit.training.fit import fit
from unetkit.training.runlog import read_log


@pytest.fixture(scope="module")
def parent(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained 4-class artifact (the tiny config, 12 steps)."""
    from tests.training.conftest import _base

    return fit(_base(shapes_data, tmp_path_factory.mktemp("parent")))


def _parameters(state: dict[str, torch.Tensor], model_cfg) -> dict[str, torch.Tensor]:
    names = {n for n, _ in build_model(model_cfg).named_parameters()}
    return {k: v for k, v in state.items() if k in names}


def _converted(src: Path, dst: Path, *, gray: bool = False, binary: bool = False) -> Path:
    """A copy of the shapes data with gray images and/or masks of two classes (0, 255)."""
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True)
        for p in sorted((src / sub).iterdir()):
            im = Image.open(p)
            if sub == "images" and gray:
                im = im.convert("L")
            if sub == "masks" and binary:
                im = Image.fromarray(np.where(np.asarray(im) > 0, 255, 0).astype(np.uint8), mode="L")
            im.save(dst / sub / p.name)
    return dst


def test_init_keeps_the_head_freezes_the_encoder_and_records_the_parent(parent: Path, tiny_config) -> None:
    cfg = tiny_config("child", finetune=FinetuneConfig(init=str(parent), freeze_encoder_steps=100),
                      model=replace(tiny_config().model, base_width=8))  # the parent's architecture wins
    child = load_artifact(fit(cfg))
    before = load_artifact(parent)
    assert child.meta.model == before.meta.model  # architecture from the parent
    assert child.meta.lineage["parent_sha256"] == file_sha256(parent)
    assert child.meta.lineage["start"]["head"] == "kept"
    params_before = _parameters(before.state_dict, before.meta.model)
    params_after = _parameters(child.state_dict, child.meta.model)
    enc = [k for k in params_before if is_encoder_key(k)]
    dec = [k for k in params_before if not is_encoder_key(k)]
    assert enc and dec
    assert all(torch.equal(params_before[k], params_after[k]) for k in enc)  # frozen for every step
    assert any(not torch.equal(params_before[k], params_after[k]) for k in dec)  # the decoder trained
    start = read_log(Path(cfg.out_dir) / "metrics.jsonl")[0]
    assert start["start"]["copied"] == "all" and start["start"]["sha256"] == file_sha256(parent)


def test_init_with_new_classes_reinitializes_the_head(parent: Path, tiny_config, shapes_data: Path,
                                                      tmp_path: Path) -> None:
    data = _converted(shapes_data, tmp_path / "binary", binary=True)
    cfg = tiny_config("child", data=data, steps=6, val_every=3,
                      finetune=FinetuneConfig(init=str(parent), encoder_lr_ratio=0.1))
    child = load_artifact(fit(cfg))
    before = load_artifact(parent)
    assert child.meta.model.out_channels == 2 and before.meta.model.out_channels == 4
    assert child.meta.lineage["start"]["head"] == "re-initialized"
    log = read_log(Path(cfg.out_dir) / "metrics.jsonl")
    assert log[0]["start"]["copied"] == "all but the head"
    # no freezing: the encoder moved, at a tenth of the LR
    enc = [k for k in _parameters(before.state_dict, before.meta.model) if is_encoder_key(k)]
    assert any(not torch.equal(before.state_dict[k], child.state_dict[k]) for k in enc)


def test_init_refuses_other_input_channels_and_writes_nothing(parent: Path, tiny_config, shapes_data: Path,
                                                               tmp_path: Path) -> None:
    data = _converted(shapes_data, tmp_path / "gray", gray=True)
    cfg = tiny_config("never", data=data, finetune=FinetuneConfig(init=str(parent)))
    with pytest.raises(ConfigError, match=r"--init .*3 input channel\(s\), the data's images have 1"):
        fit(cfg)
    assert not Path(cfg.out_dir).exists()


def test_init_refuses_a_missing_or_non_artifact_file(tiny_config, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        fit(tiny_config("never", finetune=FinetuneConfig(init=str(tmp_path / "none.unetkit"))))
    junk = tmp_path / "junk.unetkit"
    junk.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="junk.unetkit"):
        fit(tiny_config("never", finetune=FinetuneConfig(init=str(junk))))
    with pytest.raises(ConfigError, match="not both"):
        fit(tiny_config("never", finetune=FinetuneConfig(init=str(junk), pretrained=str(junk))))
    assert not (tmp_path / "never").exists()


def test_pretrained_encoder_start(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("child", steps=4, val_every=2, finetune=FinetuneConfig(freeze_encoder_steps=100))
    source = build_model(replace(cfg.model, in_channels=3, out_channels=3))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)  # not the seed's init: copying must be visible
    enc_file = save_unet_encoder(tmp_path / "enc.safetensors", encoder_state(source), source.cfg,
                                 (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), {"objective": "test"})
    child = load_artifact(fit(replace(cfg, finetune=replace(cfg.finetune, pretrained=str(enc_file)))))
    assert child.meta.lineage["pretrained_sha256"] == file_sha256(enc_file)
    names = {n for n, _ in source.named_parameters()}
    for key, value in encoder_state(source).items():
        if key in names:
            assert torch.equal(child.state_dict[key], value), key  # frozen throughout: still the file's


def test_a_pretrained_network_file_starts_the_decoder_too_and_fixes_its_architecture(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("child", steps=4, val_every=2)
    source = build_model(replace(cfg.model, in_channels=3, out_channels=3, upsample="bilinear"))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.01)
    net_file = save_unet_encoder(tmp_path / "net.safetensors", network_state(source), source.cfg,
                                 (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), {"objective": "test"})
    start = read_start(FinetuneConfig(pretrained=str(net_file)))
    assert start.info["parts"] == ["encoder", "decoder"]
    run_model = start_model(start, replace(cfg.model, upsample="transpose", out_channels=4))
    assert run_model.upsample == "bilinear" and run_model.out_channels == 4  # the file's decoder, the data's head
    model = build_model(run_model)
    assert apply_start(model, start, ("a", "b", "c", "d")) == {"copied": "encoder and decoder"}
    for key, value in network_state(source).items():
        assert torch.equal(model.state_dict()[key], value), key
    child = load_artifact(fit(replace(cfg, finetune=replace(cfg.finetune, pretrained=str(net_file)))))
    assert child.meta.model.upsample == "bilinear"
    assert child.meta.lineage["start"]["parts"] == ["encoder", "decoder"]


def test_value_named_classes_keep_the_head_only_when_the_largest_class_is_the_same(tmp_path: Path) -> None:
    from unetkit.config import ModelConfig
    from unetkit.training.finetune import Start

    def fingerprint(*fractions: float) -> dict:
        return {"classes": [{"name": n, "index": i, "pixel_fraction": f}
                            for i, (n, f) in enumerate(zip(("class_0", "class_255"), fractions, strict=True))]}

    # an ISBI-like parent: class 0 (membrane) is the minority
    membranes = Start("init", tmp_path / "p.unetkit", ModelConfig(), ("class_0", "class_255"), "ab", largest=1)
    assert not membranes.keeps_head(("class_0", "class_255"), fingerprint(0.87, 0.13))  # DRIVE-like: class 0 is most
    assert membranes.keeps_head(("class_0", "class_255"), fingerprint(0.3, 0.7))  # the next round of the same data
    assert membranes.keeps_head(("class_0", "class_255"))  # nothing known of the data: names decide
    lineage = membranes.lineage(("class_0", "class_255"), fingerprint(0.87, 0.13))["start"]
    assert lineage["head"] == "re-initialized" and "largest class (class_255)" in lineage["head_reason"]
    # classes the user named mean what they say, whatever their share of the pixels
    named = Start("init", tmp_path / "p.unetkit", ModelConfig(), ("class_0", "vessel"), "ab", largest=1)
    assert named.keeps_head(("class_0", "vessel"), fingerprint(0.87, 0.13))
    assert "head_reason" not in named.lineage(("class_0", "vessel"), fingerprint(0.87, 0.13))["start"]


def test_an_artifact_start_carries_the_resolution_it_was_trained_at(parent: Path, tiny_config, tmp_path: Path,
                                                                   capsys) -> None:
    from unetkit.artifact import update_artifact

    half = tmp_path / "half.unetkit"
    half.write_bytes(parent.read_bytes())
    update_artifact(half, resolution=0.5)
    assert read_start(FinetuneConfig(init=str(half))).resolution == 0.5
    assert read_start(FinetuneConfig(init=str(parent))).resolution == 1.0
    # unplanned, the config is taken as set, and the run says the scales differ
    child = load_artifact(fit(tiny_config("child", steps=2, val_every=2, finetune=FinetuneConfig(init=str(half)))))
    assert child.meta.resolution == 1.0
    assert "was trained at 0.5x the native side, this run trains at 1x" in capsys.readouterr().out
