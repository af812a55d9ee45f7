"""Self-supervised pretraining: corruptions, the restoration loss, a tiny run per objective, refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetkit.config import PretrainConfig
from unetkit.errors import ConfigError, DataError
from unetkit.models.unet_encoder import read_unet_encoder
from unetkit.training.contrastive import dense_info_nce, pair_batch, recolour, texture
from unetkit.training.pretrain import corrupt, pretrain, restoration_loss


def tiny(images: Path, out: Path, **changes) -> PretrainConfig:
    return replace(PretrainConfig(images=str(images), out=str(out), steps=40, base_width=4, depth=2,
                                  patch_size=(32, 32), batch_size=4, lr=3e-3, mask_patch=8, progress=False), **changes)


def test_mim_masks_squares_at_the_ratio_and_denoise_adds_noise() -> None:
    x = torch.randn(8, 3, 64, 64)
    g = torch.Generator().manual_seed(0)
    cfg = PretrainConfig(mask_ratio=0.4, mask_patch=16)
    masked, weight = corrupt(x, cfg, g)
    assert weight.shape == (8, 1, 64, 64) and 0.25 < float(weight.mean()) < 0.55
    assert torch.all(masked[weight.expand_as(x) > 0] == 0) and torch.equal(masked[weight.expand_as(x) == 0],
                                                                          x[weight.expand_as(x) == 0])
    blocks = weight[:, 0].reshape(8, 4, 16, 4, 16)  # whole 16-px squares
    assert torch.all(blocks.amax((2, 4)) == blocks.amin((2, 4)))
    noisy, ones = corrupt(x, replace(cfg, objective="denoise", noise_std=0.5), g)
    assert torch.all(ones == 1) and 0.4 < float((noisy - x).std()) < 0.6


def test_contrastive_pairs_are_two_crops_of_one_region_at_the_offsets_they_give() -> None:
    rng = np.random.default_rng(0)
    images = [rng.normal(size=(2, 40, 50)).astype(np.float32), rng.normal(size=(2, 36, 36)).astype(np.float32)]
    a, b, offsets = pair_batch(images, (32, 32), 16, 8, rng)
    assert a.shape == b.shape == (16, 2, 32, 32) and offsets.shape == (16, 2)
    assert int(offsets.abs().max()) <= 8 and bool((offsets != 0).any())
    for k in range(16):  # b's pixel (y, x) is a's (y + dy, x + dx) wherever both crops hold it
        dy, dx = offsets[k].tolist()
        ys, xs = slice(max(0, -dy), 32 - max(0, dy)), slice(max(0, -dx), 32 - max(0, dx))
        shifted = a[k][:, ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx]
        assert torch.equal(b[k][:, ys, xs], shifted)
    g = torch.Generator().manual_seed(0)
    recoloured = recolour(a, g)
    assert recoloured.shape == a.shape and not torch.equal(recoloured, a)


def test_dense_info_nce_rewards_matching_pixels_and_punishes_swapped_ones() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 16, 24, 24, generator=g)
    none = torch.zeros(4, 2, dtype=torch.long)
    matched = float(dense_info_nce(z, z, none, 32, 0.1, torch.Generator().manual_seed(1)))
    unrelated = float(dense_info_nce(z, torch.randn(4, 16, 24, 24, generator=g), none, 32, 0.1,
                                     torch.Generator().manual_seed(1)))
    assert matched < 0.5 < np.log(4 * 32) - 1 < unrelated
    # the offsets are honoured: b shifted by (3, -2) against a matches only at that offset
    shifted = torch.roll(z, shifts=(-3, 2), dims=(2, 3))  # shifted[y, x] = z[y + 3, x - 2]
    at = torch.tensor([[3, -2]] * 4)
    assert float(dense_info_nce(z, shifted, at, 32, 0.1, torch.Generator().manual_seed(2))) < 0.5
    assert float(dense_info_nce(z, shifted, none, 32, 0.1, torch.Generator().manual_seed(2))) > 2.0


def test_texture_weighted_sampling_asks_about_the_textured_pixels() -> None:
    flat = torch.zeros(2, 3, 24, 24)
    assert float(texture(flat).abs().max()) < 1e-6
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 24, 24, generator=g)
    garbled = torch.randn(2, 16, 24, 24, generator=g)
    garbled[:, :, 8:16, 8:16] = z[:, :, 8:16, 8:16]  # the views agree only inside the square
    image = torch.zeros(2, 1, 24, 24)
    image[:, :, 10:14, 10:14] = torch.randn(2, 1, 4, 4, generator=g)  # texture only inside it
    weights = texture(image)
    assert float(weights[:, 11, 11].min()) > 0 and float(weights[:, 0, 0].max()) == 0
    none = torch.zeros(2, 2, dtype=torch.long)
    textured = float(dense_info_nce(z, garbled, none, 16, 0.1, torch.Generator().manual_seed(3), weights=weights))
    uniform = float(dense_info_nce(z, garbled, none, 16, 0.1, torch.Generator().manual_seed(3)))
    assert textured < 1.0 < uniform


def test_restoration_loss_counts_only_the_weighted_pixels() -> None:
    target = torch.zeros(1, 2, 4, 4)
    output = torch.zeros(1, 2, 4, 4)
    output[..., :2, :] = 3.0  # wrong only in the top half
    top = torch.zeros(1, 1, 4, 4)
    top[..., :2, :] = 1.0
    assert float(restoration_loss(output, target, top)) == pytest.approx(9.0)
    assert float(restoration_loss(output, target, 1 - top)) == 0.0


@pytest.mark.parametrize("objective", ["mim", "denoise", "contrastive"])
def test_pretraining_learns_and_writes_the_encoder(shapes_data: Path, tmp_path: Path, objective: str) -> None:
    out = pretrain(tiny(shapes_data / "images", tmp_path / "enc.safetensors", objective=objective))
    tensors, meta = read_unet_encoder(out)
    assert tensors and all(k.startswith(("encoder.", "downs.", "bottom.")) for k in tensors)
    record = meta["pretraining"]
    assert record["objective"] == objective and record["steps"] == 40 and record["images"] == 6
    assert record["loss_last"] < record["loss_first"]  # it learned to restore (or to match the views)
    assert meta["architecture"]["in_channels"] == 3 and len(meta["normalization"]["mean"]) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_keep_network_writes_the_decoder_too(shapes_data: Path, tmp_path: Path) -> None:
    out = pretrain(tiny(shapes_data / "images", tmp_path / "net.safetensors", objective="contrastive", keep="network"))
    tensors, meta = read_unet_encoder(out)
    assert meta["parts"] == ["encoder", "decoder"]
    assert any(k.startswith("decoder.") for k in tensors) and not any(k.startswith("head.") for k in tensors)


def test_pretraining_computes_in_the_mode_given_or_measured(shapes_data: Path, tmp_path: Path) -> None:
    out = pretrain(tiny(shapes_data / "images", tmp_path / "cl.safetensors", precision="fp32",
                        memory_format="channels_last"))
    tensors, meta = read_unet_encoder(out)
    record = meta["pretraining"]
    assert record["mode"] == "fp32+cl" and record["loss_last"] < record["loss_first"]
    plain = read_unet_encoder(pretrain(tiny(shapes_data / "images", tmp_path / "plain.safetensors",
                                            precision="fp32", memory_format="contiguous")))[0]
    assert {k: v.shape for k, v in tensors.items()} == {k: v.shape for k, v in plain.items()}  # stored as usual
    assert all(v.is_contiguous() for v in tensors.values())
    # "auto" with a budget measures the modes, as training does, and records the one it took
    timed = pretrain(tiny(shapes_data / "images", tmp_path / "auto.safetensors", budget_seconds=4.0, steps=1))
    assert read_unet_encoder(timed)[1]["pretraining"]["mode"] in ("fp32", "fp32+cl", "bf16", "bf16+cl")


def test_a_budget_bounds_the_run(shapes_data: Path, tmp_path: Path) -> None:
    import time

    t0 = time.perf_counter()
    out = pretrain(tiny(shapes_data / "images", tmp_path / "enc.safetensors", budget_seconds=3.0, steps=1))
    assert time.perf_counter() - t0 < 6.0
    assert read_unet_encoder(out)[1]["pretraining"]["steps"] > 1  # `steps` is for runs without a budget


def test_refuses_an_empty_folder_mixed_channels_and_bad_settings(shapes_data: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        pretrain(tiny(tmp_path / "empty", tmp_path / "enc.safetensors"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, mode in enumerate(("RGB", "L")):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).convert(mode).save(mixed / f"{i}.png")
    with pytest.raises(DataError, match="channel counts"):
        pretrain(tiny(mixed, tmp_path / "enc.safetensors"))
    with pytest.raises(ConfigError, match="mask_ratio"):
        pretrain(tiny(shapes_data / "images", tmp_path / "enc.safetensors", mask_ratio=1.5))
    with pytest.raises(ConfigError, match="contrastive_temperature > 0"):
        pretrain(tiny(shapes_data / "images", tmp_path / "enc.safetensors", objective="contrastive",
                      contrastive_temperature=0.0))
    with pytest.raises(ConfigError, match=r"pretrain.keep: expected one of \['encoder', 'network'\], got 'head'"):
        pretrain(tiny(shapes_data / "images", tmp_path / "enc.safetensors", keep="head"))
    assert not (tmp_path / "enc.safetensors").exists()


def test_pretraining_at_reduced_resolution_samples_resampled_images_and_records_it(shapes_data: Path, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    import unetkit.training.pretrain as module

    seen: list[tuple[int, ...]] = []
    real = module.CropSampler

    def spy(pictures, *args, **kwargs):
        seen.extend(p.shape for p in pictures)
        return real(pictures, *args, **kwargs)

    monkeypatch.setattr(module, "CropSampler", spy)
    native = [p.shape for p in module.load_images(module.image_list(shapes_data / "images"))]
    out = pretrain(tiny(shapes_data / "images", tmp_path / "half.safetensors", resolution=0.5, patch_size=(16, 16)))
    assert seen == [(c, round(h / 2), round(w / 2)) for c, h, w in native]
    assert read_unet_encoder(out)[1]["pretraining"]["resolution"] == 0.5
    with pytest.raises(ConfigError, match="pretrain.resolution"):
        pretrain(tiny(shapes_data / "images", tmp_path / "bad.safetensors", resolution=1.5))
    assert not (tmp_path / "bad.safetensors").exists()
