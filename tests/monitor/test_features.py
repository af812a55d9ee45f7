"""Per-image features: bins, cell statistics, sharpness, output statistics (against numpy/scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from unetkit.monitor import features as F


def test_bins_have_under_and_overflow():
    edges = np.array([0.0, 1.0, 2.0])
    values = np.array([-5, 0, 0.5, 1, 1.999, 2, 7])
    assert F.bin_index(values, edges).tolist() == [0, 1, 1, 2, 2, 3, 3]
    assert F.bin_fractions(values, edges).tolist() == pytest.approx([1 / 7, 2 / 7, 2 / 7, 2 / 7])
    assert F.bin_fractions(np.array([]), edges).tolist() == [0, 0, 0, 0]


def test_cell_statistics_match_numpy_on_blocks(rng):
    plane = rng.normal(100, 20, (40, 60)).astype(np.float32)
    blocks = plane.reshape(4, 10, 4, 15).transpose(0, 2, 1, 3).reshape(16, -1)  # 4x4 cells, row-major
    assert F.cell_means(plane, 4) == pytest.approx(blocks.mean(axis=1), rel=1e-6)
    assert F.cell_variances(plane, 4) == pytest.approx(blocks.var(axis=1), rel=1e-5)
    uneven = rng.normal(0, 1, (7, 5))
    assert F.cell_means(uneven, 4).size == 16 and F.cell_means(uneven[:2], 4).size == 2 * 4  # cells never empty


def test_image_statistics(rng):
    image = rng.uniform(0, 255, (3, 32, 48)).astype(np.float32)
    stats = F.image_statistics(image, grid=1)
    luma = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    assert stats["brightness"] == pytest.approx([luma.mean()], rel=1e-5)
    assert stats["contrast"] == pytest.approx([luma.std()], rel=1e-4)
    assert stats["sharpness"] == pytest.approx([ndimage.laplace(luma).var()], rel=1e-4)
    assert stats["height"].tolist() == [32] and stats["width"].tolist() == [48] and stats["aspect"].tolist() == [1.5]
    assert F.image_statistics(image)["brightness"].shape == (16,)
    blurred = ndimage.gaussian_filter(image, (0, 2, 2))
    assert F.image_statistics(blurred)["sharpness"].mean() < 0.1 * F.image_statistics(image)["sharpness"].mean()
    gray = image[:1]
    assert F.image_statistics(gray, 1)["brightness"] == pytest.approx([gray.mean()], rel=1e-5)


def test_intensity_histograms_use_the_baseline_range(rng):
    images = [rng.uniform(10, 200, (2, 20, 20)).astype(np.float32) for _ in range(3)]
    edges = F.intensity_range(images, bins=8)
    assert len(edges) == 2 and len(edges[0]) == 9
    assert edges[0][0] == pytest.approx(min(im[0].min() for im in images))
    inside = F.intensity_histograms(images[0], edges)
    assert inside["intensity.c0"][0] == 0 and inside["intensity.c0"][-1] == 0 and inside["intensity.c0"].sum() == pytest.approx(1)
    brighter = F.intensity_histograms(images[0] + 100, edges)["intensity.c1"]
    assert brighter[-1] > 0.4  # shifted pixels land in the overflow bin
    with pytest.raises(ValueError, match="1 channel"):
        F.intensity_histograms(images[0][:1], edges)


def test_output_statistics_on_a_known_label_map():
    labels = np.zeros((8, 8), np.uint8)
    labels[0, 0] = labels[0, 2] = 1  # two separate dots in the top-left cell
    labels[5:8, 5:8] = 1  # one square in the bottom-right cell
    labels[4, 0:4] = 2
    probs = np.full((3, 8, 8), 0.1, np.float32)
    probs[0] = 0.8
    out = F.output_statistics(probs, labels, ("bg", "dot", "bar"), grid=2)
    assert out["fraction.dot"].tolist() == pytest.approx([2 / 16, 0, 0, 9 / 16])
    assert out["fraction.bar"].tolist() == pytest.approx([0, 0, 4 / 16, 0])
    assert out["components.dot"].tolist() == [2, 0, 0, 1]
    assert out["components.bar"].tolist() == [0, 0, 1, 0]
    assert "components.bg" not in out
    assert out["confidence"].sum() == pytest.approx(1) and out["entropy"].sum() == pytest.approx(1)
    uniform = F.output_statistics(np.full((3, 8, 8), 1 / 3, np.float32), labels, ("bg", "dot", "bar"))
    assert uniform["entropy"][-2] == pytest.approx(1)  # maximal entropy: the last bin inside [0, 1]
    assert uniform["confidence"][1] == pytest.approx(1)  # confidence 1/K: the first bin inside the range
    with pytest.raises(ValueError, match="expected 2"):
        F.output_statistics(probs, labels, ("bg", "dot"))
