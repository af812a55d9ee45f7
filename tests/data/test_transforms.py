import dataclasses

import pytest
import torch

from unetkit.config import AugmentConfig
from unetkit.data.transforms import Augmenter

GEOMETRY_ONLY = AugmentConfig(brightness=0, contrast=0, gamma=0, noise_std=0, p=1.0)


def _blocks(n: int = 6, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[:, 4:20, 6:30] = 1
    labels[:, 26:44, 14:40] = 2
    labels[:, 30:34, 2:10] = 3
    return labels[:, None].float().repeat(1, 2, 1, 1), labels  # the image encodes the label


def _agreement(images: torch.Tensor, labels: torch.Tensor, exact_only: bool = False) -> float:
    """Fraction of labelled pixels whose image value encodes their label; `exact_only`: among pixels
    whose value is a whole number (not a bilinear blend of two labels)."""
    inside = labels != 255
    if exact_only:
        inside &= (images[:, 0] - images[:, 0].round()).abs() < 0.01
    return (images[:, 0].round().long() == labels)[inside].float().mean().item()


@pytest.mark.parametrize("elastic", [0.0, 1.0])
def test_soft_target_channels_are_warped_with_the_image_but_not_recoloured(elastic: float) -> None:
    images, labels = _blocks()
    image = images[:, :1] * 0.25
    both = torch.cat([image, image], 1)  # channel 1: a "target" equal to the image
    config = dataclasses.replace(GEOMETRY_ONLY, elastic_alpha=elastic, brightness=0.3, contrast=0.3, noise_std=0.1)
    out, out_labels = Augmenter(config, seed=3, image_channels=1)(both, labels)
    # photometric draws come after the geometry's: the same seed without them warps identically
    geometry, geometry_labels = Augmenter(dataclasses.replace(GEOMETRY_ONLY, elastic_alpha=elastic), seed=3)(
        image, labels)
    assert torch.equal(out_labels, geometry_labels)
    assert torch.allclose(out[:, 1:], geometry, atol=1e-6)  # warped bilinearly like the image, no recolouring
    assert not torch.allclose(out[:, :1], geometry, atol=1e-3)  # the image itself was recoloured
    whole, _ = Augmenter(config, seed=3)(both, labels)  # without image_channels every channel is the image
    assert not torch.allclose(whole[:, 1:], geometry, atol=1e-3)


@pytest.mark.parametrize("elastic", [0.0, 1.0])
def test_images_and_labels_stay_aligned(elastic: float) -> None:
    images, labels = _blocks()
    out_images, out_labels = Augmenter(dataclasses.replace(GEOMETRY_ONLY, elastic_alpha=elastic), seed=1)(
        images, labels
    )
    assert out_labels.dtype == labels.dtype and out_images.shape == images.shape
    assert not torch.equal(out_labels, labels)  # something happened
    assert _agreement(out_images, out_labels) > 0.9  # mismatches only on interpolated edges
    assert _agreement(out_images, out_labels, exact_only=True) > 0.995
    assert set(out_labels.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_flips_and_rot90_are_exact() -> None:
    config = dataclasses.replace(GEOMETRY_ONLY, rotate_degrees=0, scale=(1.0, 1.0))
    images, labels = _blocks(16)
    out_images, out_labels = Augmenter(config, seed=0)(images, labels)
    assert torch.equal(out_images[:, 0].round().long(), out_labels) and (out_labels != 255).all()
    assert len({tuple(lab.flatten().tolist()[:200]) for lab in out_labels}) > 3  # several orientations


def test_upright_data_is_flipped_left_right_only() -> None:
    config = dataclasses.replace(GEOMETRY_ONLY, rotate_degrees=0, scale=(1.0, 1.0), rot90=False, flip_vertical=False)
    images, labels = _blocks(32)
    _, out_labels = Augmenter(config, seed=0)(images, labels)
    mirrored = torch.flip(labels, dims=[-1])
    kept = [torch.equal(out, lab) for out, lab in zip(out_labels, labels, strict=True)]
    flipped = [torch.equal(out, lab) for out, lab in zip(out_labels, mirrored, strict=True)]
    assert all(k or f for k, f in zip(kept, flipped, strict=True))  # never upside down
    assert any(kept) and any(flipped)


def test_pixels_from_outside_the_image_are_ignored() -> None:
    config = dataclasses.replace(GEOMETRY_ONLY, flip=False, rot90=False, rotate_degrees=45, scale=(0.6, 0.6))
    images, labels = _blocks(2)
    out_images, out_labels = Augmenter(config, seed=0)(images + 1, labels)
    outside = out_labels == 255
    assert outside[:, 0, 0].all() and outside.float().mean() > 0.3
    assert (out_images[:, 0][outside] < 0.5).float().mean() > 0.95  # zero padding where labels are ignored


def test_photometric_changes_only_the_image() -> None:
    config = AugmentConfig(flip=False, rot90=False, rotate_degrees=0, scale=(1.0, 1.0), blur_sigma=1.0, p=1.0)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
    out_images, out_labels = Augmenter(config, seed=0)(images, labels)
    assert torch.equal(out_labels, labels) and not torch.allclose(out_images, images)
    assert torch.isfinite(out_images).all()


def test_deterministic_per_seed_and_resumable() -> None:
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
    a, b = Augmenter(AugmentConfig(), seed=5), Augmenter(AugmentConfig(), seed=5)
    for _ in range(2):
        (ia, la), (ib, lb) = a(images, labels), b(images, labels)
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    state = a.state_dict()
    expected = a(images, labels)
    c = Augmenter(AugmentConfig(), seed=99)
    c.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(c(images, labels), expected, strict=True))
    assert not torch.equal(Augmenter(AugmentConfig(), seed=6)(images, labels)[0], a(images, labels)[0])


def test_disabled_is_the_identity() -> None:
    images, labels = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))
    out = Augmenter(AugmentConfig(enabled=False))(images, labels)
    assert out[0] is images and out[1] is labels


COLOUR_ONLY = dataclasses.replace(GEOMETRY_ONLY, flip=False, rot90=False, rotate_degrees=0, scale=(1.0, 1.0))


def test_saturation_scales_each_pixels_colour_about_its_grey_and_keeps_grey_pixels():
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(6, 16, 16, dtype=torch.long)
    out, _ = Augmenter(dataclasses.replace(COLOUR_ONLY, saturation=0.5), seed=0)(images, labels)
    grey, out_grey = images.mean(1, keepdim=True), out.mean(1, keepdim=True)
    assert torch.allclose(out_grey, grey, atol=1e-5)  # the channel mean is untouched
    colour = images - grey
    coloured = colour.abs() > 0.05  # a ratio over a pixel with almost no colour is rounding noise
    ratios = [y[keep] / x[keep] for x, y, keep in zip(colour, out - out_grey, coloured, strict=True)]
    factors = torch.stack([r.median() for r in ratios])
    for r, f in zip(ratios, factors, strict=True):  # one factor per image, over all its coloured pixels
        assert torch.allclose(r, f.expand_as(r), atol=1e-3)
    assert (factors >= 0.5 - 1e-4).all() and (factors <= 1.5 + 1e-4).all()
    assert len(set(factors.round(decimals=3).tolist())) > 3
    flat = images[:, :1].repeat(1, 3, 1, 1)  # grey pixels have no colour to scale
    assert torch.allclose(Augmenter(dataclasses.replace(COLOUR_ONLY, saturation=0.5), seed=0)(flat, labels)[0], flat)


def test_channel_shift_moves_each_channel_by_its_own_constant():
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(6, 16, 16, dtype=torch.long)
    out, _ = Augmenter(dataclasses.replace(COLOUR_ONLY, channel_shift=0.2), seed=1)(images, labels)
    shift = (out - images).flatten(2)
    assert torch.allclose(shift, shift[..., :1].expand_as(shift), atol=1e-5)  # constant over each channel
    assert shift.abs().max() <= 0.2 + 1e-5
    assert (shift[:, 0, 0] != shift[:, 1, 0]).any()  # channels move differently: a colour cast


def test_colour_jitter_leaves_one_channel_images_and_the_random_stream_alone():
    images, labels = torch.randn(4, 1, 16, 16), torch.randint(0, 2, (4, 16, 16))
    plain = Augmenter(AugmentConfig(), seed=2)
    coloured = Augmenter(AugmentConfig(saturation=0.5, channel_shift=0.2), seed=2)
    for _ in range(2):  # no draws for a grey image: the next batch's augmentation is the same too
        assert all(torch.equal(a, b) for a, b in zip(plain(images, labels), coloured(images, labels), strict=True))


def test_p_geometric_sets_the_chance_of_rotation_and_scale_apart_from_the_photometric_ops():
    images, labels = _blocks(8)
    geometric = dataclasses.replace(COLOUR_ONLY, rotate_degrees=30, scale=(0.5, 2.0))
    bright = dataclasses.replace(geometric, brightness=0.5)

    def run(config: AugmentConfig, **change: float) -> tuple[torch.Tensor, torch.Tensor]:
        return Augmenter(dataclasses.replace(config, **change), seed=3)(images, labels)

    def each_moved(out_labels: torch.Tensor) -> bool:
        return all(not torch.equal(a, b) for a, b in zip(out_labels, labels, strict=True))

    rotated = run(bright, p=0.0, p_geometric=1.0)
    assert each_moved(rotated[1])  # every sample rotated or scaled although `p` is 0 ...
    plain = run(geometric, p=0.0, p_geometric=1.0)
    assert all(torch.equal(a, b) for a, b in zip(rotated, plain, strict=True))  # ... and none brightened
    out, kept = run(bright, p=1.0, p_geometric=0.0)
    assert torch.equal(kept, labels)  # no geometry although `p` is 1 ...
    assert ((out - images).flatten(1).abs().amax(1) > 1e-3).all()  # ... and every sample brightened
    assert torch.equal(run(bright, p=0.0)[1], labels)  # None: `p` drives the geometry too
    assert each_moved(run(bright, p=1.0)[1])


def test_a_patch_warped_out_of_its_context_window_shows_real_pixels_not_padding() -> None:
    from unetkit.data.transforms import context_window

    config = dataclasses.replace(GEOMETRY_ONLY, rotate_degrees=30, scale=(0.5, 2.0), p_geometric=1.0)
    patch = (24, 40)
    window = context_window(config, patch)
    assert window[0] > 2 * patch[0] and window[1] > 2 * patch[1]  # zoomed out 2x and turned up to 30°
    assert (window[0] - patch[0]) % 2 == 0 and (window[1] - patch[1]) % 2 == 0
    for lossless in (dataclasses.replace(config, rotate_degrees=0, scale=(1.0, 1.3)),
                     dataclasses.replace(config, p_geometric=0.0), dataclasses.replace(config, enabled=False)):
        assert context_window(lossless, patch) == patch  # flips, rot90 and zoom-in need no margin
    labels = torch.ones(16, *window, dtype=torch.long)  # every window pixel is a labelled image pixel
    images = labels[:, None].float()
    out, out_labels = Augmenter(config, seed=2)(images, labels, patch)
    assert out.shape == (16, 1, *patch) and out_labels.shape == (16, *patch)
    assert (out_labels == 1).all()  # no corner or border came from outside the window
    # the same draws on the patch alone (the old way) pad the zoomed-out and rotated ones with ignore
    _, alone = Augmenter(config, seed=2)(images[..., :patch[0], :patch[1]], labels[..., :patch[0], :patch[1]])
    assert (alone == 255).float().mean() > 0.05


def test_without_geometry_the_output_is_the_windows_centre() -> None:
    images, labels = _blocks(size=48)
    config = dataclasses.replace(GEOMETRY_ONLY, flip=False, rot90=False, rotate_degrees=0, scale=(1.0, 1.0))
    out, out_labels = Augmenter(config, seed=0)(images, labels, (20, 30))
    assert torch.equal(out, images[:, :, 14:34, 9:39]) and torch.equal(out_labels, labels[:, 14:34, 9:39])
    off, off_labels = Augmenter(dataclasses.replace(config, enabled=False))(images, labels, (20, 30))
    assert torch.equal(off, out) and torch.equal(off_labels, out_labels)
    with pytest.raises(ValueError, match="at most the input's"):
        Augmenter(config)(images, labels, (50, 30))
