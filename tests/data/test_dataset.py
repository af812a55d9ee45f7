import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unetkit.data.dataset import LoadedSample, PatchSampler, load_samples
from unetkit.data.pairing import pair_samples
from unetkit.data.spec import detect_spec
from unetkit.errors import DataError


def test_roi_is_folded_into_the_labels(drive: Path) -> None:
    spec = detect_spec(drive)
    samples = pair_samples(spec)
    loaded = load_samples(samples, spec, progress=False)
    assert [s.key for s in loaded] == ["21", "22", "23", "24"]
    first = loaded[0]
    assert first.image.shape == (3, 40, 36) and first.image.dtype == np.float32
    assert first.labels.shape == (40, 36) and first.labels.dtype == np.uint8
    assert first.labels[0, 0] == 255 and first.labels[20, 18] in (0, 1)  # corner outside the FOV
    assert set(np.unique(first.labels)) <= {0, 1, 255}


def _blobs(n: int = 4, size: int = 64, seed: int = 0) -> list[LoadedSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        labels = np.zeros((size, size), np.uint8)
        labels[rng.integers(0, size), rng.integers(0, size)] = 2  # rare: one pixel per image
        labels[10:30, 10:30] = 1
        out.append(LoadedSample(str(i), rng.normal(size=(2, size, size)).astype(np.float32), labels))
    return out


def test_batches_have_the_contract_shapes_and_dtypes() -> None:
    images, labels = PatchSampler(_blobs(), (32, 24), 5, 0.3, 0).next_batch()
    assert images.shape == (5, 2, 32, 24) and images.dtype == torch.float32
    assert labels.shape == (5, 32, 24) and labels.dtype == torch.int64


def test_targets_are_cropped_with_each_patch_as_channels_after_the_image() -> None:
    data = _blobs()
    # a target that encodes where it came from: the one-hot labels (ignored pixels: none of them)
    targets = [np.stack([s.labels == k for k in range(3)]).astype(np.float16) for s in data]
    images, labels = PatchSampler(data, (32, 24), 6, 0.3, 0, targets=targets).next_batch()
    assert images.shape == (6, 2 + 3, 32, 24) and images.dtype == torch.float32
    assert torch.equal(images[:, 2:].argmax(1), labels)  # the same crop as the labels
    plain, _ = PatchSampler(data, (32, 24), 6, 0.3, 0).next_batch()
    assert torch.equal(images[:, :2], plain)  # the same draws: targets change no patch
    with pytest.raises(DataError, match="targets"):
        PatchSampler(data, (32, 24), 6, 0.3, 0, targets=[t[:, :-1] for t in targets])
    small = LoadedSample("s", np.ones((1, 3, 4), np.float32), np.zeros((3, 4), np.uint8))
    padded, _ = PatchSampler([small], (7, 8), 1, 0.0, 0, targets=[np.ones((2, 3, 4), np.float16)]).next_batch()
    assert float(padded[0, 1:].sum()) == 2 * 12  # zeros where the image was padded


def test_small_images_are_padded_reflect_and_ignore() -> None:
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    sample = LoadedSample("s", image, np.zeros((3, 4), np.uint8))
    images, labels = PatchSampler([sample], (7, 8), 1, 0.0, 0).next_batch()
    assert images.shape == (1, 1, 7, 8)
    assert (labels == 255).sum() == 7 * 8 - 12 and (labels == 0).sum() == 12
    assert set(images.unique().tolist()) <= set(range(12))  # reflected, not zero-filled by invention
    assert images[0, 0, 0, 0] == image[0, 2, 2]  # reflect: row -2 -> row 2, col -2 -> col 2


def _fraction_of_batches_with(sampler: PatchSampler, k: int, batches: int = 40) -> float:
    return float(
        np.mean([(sampler.next_batch()[1] == k).any(dim=(1, 2)).float().mean() for _ in range(batches)])
    )


def test_rare_class_oversampling_raises_the_rare_fraction() -> None:
    data = _blobs()
    plain = _fraction_of_batches_with(PatchSampler(data, (16, 16), 8, 0.0, 0, num_classes=3), 2)
    boosted_sampler = PatchSampler(data, (16, 16), 8, 0.5, 0, num_classes=3)
    assert boosted_sampler.rare_classes == [2]
    boosted = _fraction_of_batches_with(boosted_sampler, 2)
    assert plain < 0.2 and boosted > 0.45


def test_foreground_oversampling_when_no_class_is_rare() -> None:
    data = _blobs()
    sampler = PatchSampler(data, (8, 8), 8, 0.0, 0, num_classes=2, foreground_oversample=1.0)
    assert _fraction_of_batches_with(sampler, 1, 10) == 1.0


def test_same_seed_same_batches_and_exact_resume_from_json_state() -> None:
    a, b = PatchSampler(_blobs(), (16, 16), 4, 0.3, 7), PatchSampler(_blobs(), (16, 16), 4, 0.3, 7)
    for _ in range(3):
        (ia, la), (ib, lb) = a.next_batch(), b.next_batch()
        assert torch.equal(ia, ib) and torch.equal(la, lb)
    state = json.loads(json.dumps(a.state_dict()))
    expected = [a.next_batch() for _ in range(3)]
    resumed = PatchSampler(_blobs(), (16, 16), 4, 0.3, 123)
    resumed.load_state_dict(state)
    for images, labels in expected:
        ri, rl = resumed.next_batch()
        assert torch.equal(ri, images) and torch.equal(rl, labels)
    assert not torch.equal(PatchSampler(_blobs(), (16, 16), 4, 0.3, 8).next_batch()[0], expected[0][0])


def test_bad_sampler_arguments() -> None:
    with pytest.raises(DataError, match="no samples"):
        PatchSampler([], (8, 8), 1)
    with pytest.raises(DataError, match=r"rare_oversample \+ foreground_oversample = 1\.5"):
        PatchSampler(_blobs(), (8, 8), 1, 0.75, foreground_oversample=0.75)


def test_a_window_surrounds_each_patch_reflected_past_the_edges_and_ignored_there() -> None:
    data = _blobs(size=40)
    plain_images, plain_labels = PatchSampler(data, (16, 16), 8, 0.3, 5).next_batch()
    images, labels = PatchSampler(data, (16, 16), 8, 0.3, 5, window=(36, 26)).next_batch()
    assert images.shape == (8, 2, 36, 26) and labels.shape == (8, 36, 26)
    # the same draws: the patch is the window's exact centre
    assert torch.equal(images[:, :, 10:26, 5:21], plain_images) and torch.equal(labels[:, 10:26, 5:21], plain_labels)
    # a 36-high window around a 16-high patch of a 40-high image reaches past an edge in some draws:
    # its labels are ignored there and its pixels reflect the image's
    assert (labels == 255).any() and not (plain_labels == 255).any()
    assert set(images.unique().tolist()) <= set(np.concatenate([s.image.ravel() for s in data]).tolist())
    with pytest.raises(DataError, match="margin per side"):
        PatchSampler(data, (16, 16), 1, window=(17, 16))
