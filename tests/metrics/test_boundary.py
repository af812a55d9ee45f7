"""Boundary IoU (hand-computed, official-code reference) and HD95/ASSD against MONAI."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from unetkit.metrics import boundary as B


def blobs(rng, shape=(40, 48), threshold=0.4, sigma=2.5):
    return ndimage.gaussian_filter(rng.normal(size=shape), sigma) > threshold * 0.1


def monai_hd95_assd(pred, true, spacing=None):
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p = torch.from_numpy(np.asarray(pred, bool))[None, None].float()
    g = torch.from_numpy(np.asarray(true, bool))[None, None].float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=spacing)
    return float(hd[0, 0]), float(asd[0, 0])


# ---------------------------------------------------------------- Boundary IoU


def squares():
    g = np.zeros((6, 6), bool)
    g[1:5, 1:5] = True  # 4x4 square
    p = np.zeros((6, 6), bool)
    p[1:5, 2:6] = True  # the same square shifted right by one, touching the right image border
    return p, g


def test_boundary_iou_hand_computed():
    p, g = squares()
    # width 1: each boundary is the square's ring of 12 pixels (inner 2x2 excluded).
    # Gb: rows 1,4 cols 1..4 and rows 2,3 cols {1,4}; Pb: rows 1,4 cols 2..5 and rows 2,3 cols {2,5}.
    # Intersection: rows 1,4 cols 2..4 -> 6 pixels; union 12 + 12 - 6 = 18 -> 1/3
    assert B.boundary_iou_counts(p, g, 1) == (6, 18)
    assert B.boundary_iou(p, g, width=1) == pytest.approx(1 / 3)
    # width 2 covers the whole 4x4 squares: Boundary IoU = mask IoU = 12 / 20
    assert B.boundary_iou(p, g, width=2) == pytest.approx(3 / 5)
    # fraction of the diagonal: 0.02 * sqrt(72) = 0.17 -> at least 1 pixel; 0.25 * 8.49 -> 2 pixels
    assert B.boundary_width((6, 6)) == 1 and B.boundary_width((6, 6), fraction=0.25) == 2
    assert B.boundary_iou(p, g, fraction=0.25) == pytest.approx(3 / 5)


def official_boundary(mask, width):
    """Cheng et al.'s `mask_to_boundary`: erode the zero-padded mask `width` times with a 3x3 square."""
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, np.ones((3, 3)), iterations=width)[1:-1, 1:-1]
    return mask & ~eroded


@pytest.mark.parametrize("width", [1, 2, 5])
def test_boundary_region_matches_official_erosion(rng, width):
    for _ in range(3):
        m = blobs(rng)
        assert np.array_equal(B.boundary_region(m, width), official_boundary(m, width))


def test_boundary_iou_edge_cases():
    empty = np.zeros((5, 5), bool)
    full = np.ones((5, 5), bool)
    assert math.isnan(B.boundary_iou(empty, empty))
    assert B.boundary_iou(full, empty) == 0.0 and B.boundary_iou(full, full) == 1.0
    # valid mask: the right half is ignored, so only the left half of the ring counts
    p, g = squares()
    valid = np.zeros((6, 6), bool)
    valid[:, :3] = True
    # restricted masks: G cols 1..2, P col 2 (rows 1..4); their boundaries within the valid region:
    # Gb = G (width-1 ring of a 4x2 block with the cut at col 3 counting as background) = 8 pixels,
    # Pb = 4 pixels, all inside Gb -> 4 / 8
    assert B.boundary_iou(p, g, width=1, valid=valid) == pytest.approx(0.5)


# ---------------------------------------------------------------- surface distances


def test_surface_distances_hand_computed():
    p = np.zeros((6, 6), bool)
    g = np.zeros((6, 6), bool)
    g[0, 0] = True
    p[3, 4] = True  # 3-4-5 triangle
    assert B.hausdorff_distance(p, g) == pytest.approx(5.0)
    assert B.average_surface_distance(p, g) == pytest.approx(5.0)
    # spacing (2, 1): dy = 6, dx = 4
    assert B.hausdorff_distance(p, g, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(52))
    # squares shifted by one: every edge pixel is 0 or 1 away; P95 of a mix of 0/1 distances
    ps, gs = squares()
    d_pred, d_true = B.surface_distances(ps, gs)
    # P's edge (12 pixels): rows 1,4 cols 2..4 lie on G's edge (0); col 5 rows 1..4 are 1 from G's
    # col 4; col 2 rows 2,3 are 1 from G's col 1 -> six 0s and six 1s. By symmetry the same for G.
    assert sorted(d_pred.tolist()) == [0.0] * 6 + [1.0] * 6
    assert sorted(d_true.tolist()) == [0.0] * 6 + [1.0] * 6
    # ASSD = 12 / 24; P95 of six 0s and six 1s (linear interpolation) = 1
    assert B.average_surface_distance(ps, gs) == pytest.approx(0.5)
    assert B.hausdorff_distance(ps, gs) == pytest.approx(1.0)


def test_empty_policy_and_monai_agree():
    empty = np.zeros((8, 8), bool)
    one = np.zeros((8, 8), bool)
    one[3, 3] = True
    assert math.isnan(B.hausdorff_distance(empty, empty)) and math.isnan(
        B.average_surface_distance(empty, empty)
    )
    assert B.hausdorff_distance(one, empty) == math.inf and B.hausdorff_distance(empty, one) == math.inf
    assert B.average_surface_distance(empty, one) == math.inf
    hd, asd = monai_hd95_assd(empty, empty)
    assert math.isnan(hd) and math.isnan(asd)
    # exactly one mask empty: MONAI gives inf for ASSD but NaN for the HD95 (torch.quantile on an
    # all-inf tensor, MONAI issue #9095) - a missed structure would drop out of its averages. We keep
    # inf for both; this assertion flags the day MONAI changes.
    for a, b in ((one, empty), (empty, one)):
        hd, asd = monai_hd95_assd(a, b)
        assert asd == math.inf and math.isnan(hd)
        assert B.hausdorff_distance(a, b) == math.inf


def edge_cases():
    full = np.ones((10, 12), bool)
    single = np.zeros((10, 12), bool)
    single[4, 7] = True
    corner = np.zeros((10, 12), bool)
    corner[:3, :3] = True
    line = np.zeros((10, 12), bool)
    line[2:9, 5] = True
    return [(full, corner), (single, corner), (single, single), (full, full), (line, corner), (line, full)]


def test_hd95_assd_match_monai_on_random_and_edge_cases(rng):
    cases = [(blobs(rng), blobs(rng)) for _ in range(6)] + edge_cases()
    for p, g in cases:
        hd, asd = monai_hd95_assd(p, g)
        assert B.hausdorff_distance(p, g) == pytest.approx(hd, rel=1e-5, abs=1e-5)
        assert B.average_surface_distance(p, g) == pytest.approx(asd, rel=1e-5, abs=1e-5)


def test_anisotropic_spacing_and_3d_match_monai(rng):
    p, g = blobs(rng), blobs(rng)
    hd, asd = monai_hd95_assd(p, g, spacing=(0.5, 2.0))
    assert B.hausdorff_distance(p, g, spacing=(0.5, 2.0)) == pytest.approx(hd, rel=1e-5)
    assert B.average_surface_distance(p, g, spacing=(0.5, 2.0)) == pytest.approx(asd, rel=1e-5)
    p3, g3 = blobs(rng, (14, 16, 18), sigma=2.0), blobs(rng, (14, 16, 18), sigma=2.0)
    hd, asd = monai_hd95_assd(p3, g3)
    assert B.hausdorff_distance(p3, g3) == pytest.approx(hd, rel=1e-5)
    assert B.average_surface_distance(p3, g3) == pytest.approx(asd, rel=1e-5)


def test_pooled_percentile_differs_from_monai_convention():
    # medpy's hd95 pools both directions before the percentile; we (like MONAI) take the max of
    # the two directed percentiles, which is never smaller.
    rng = np.random.default_rng(3)
    p, g = blobs(rng), blobs(rng)
    d_pred, d_true = B.surface_distances(p, g)
    pooled = np.percentile(np.concatenate([d_pred, d_true]), 95)
    assert B.hausdorff_from_distances(d_pred, d_true) >= pooled
