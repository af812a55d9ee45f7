"""Polygon fill by pixel centres and the overlap rule, checked by geometry (and pycocotools when installed)."""

import numpy as np
import pytest

from unetkit.data.raster import VOID, overlay, paint, polygon_mask


def test_a_square_on_pixel_corners_covers_exactly_its_pixels():
    mask = polygon_mask(np.array([[2, 3], [12, 3], [12, 8], [2, 8]], float), 20, 20)
    expected = np.zeros((20, 20), bool)
    expected[3:8, 2:12] = True
    assert (mask == expected).all()


def test_a_concave_polygon_leaves_its_notch_empty_and_a_disc_has_the_area_of_a_circle():
    u_shape = np.array([[0, 0], [9, 0], [9, 9], [6, 9], [6, 3], [3, 3], [3, 9], [0, 9]], float)
    mask = polygon_mask(u_shape, 10, 10)
    assert mask[:3, :9].all() and not mask[:, 9].any() and not mask[9].any() and mask[3:9, :3].all() and mask[3:9, 6:9].all() and not mask[3:9, 3:6].any()
    angles = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    disc = polygon_mask(np.stack([50 + 30 * np.cos(angles), 50 + 30 * np.sin(angles)], 1), 100, 100)
    assert abs(disc.sum() - np.pi * 30**2) < 2 * np.pi * 30 * 0.1  # within a tenth of the perimeter


def test_points_outside_are_clipped_and_degenerate_polygons_are_empty():
    big = polygon_mask(np.array([[-5, -5], [50, -5], [50, 50], [-5, 50]], float), 8, 6)
    assert big.all()
    assert not polygon_mask(np.array([[1, 1], [5, 5]], float), 8, 8).any()
    assert not polygon_mask(np.array([[1, 1], [5, 1], [9, 1]], float), 8, 8).any()  # zero area


def distance_to_outline(points: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Distance of each point `xy` (M, 2) to the polygon's edges."""
    a, b = points, np.roll(points, -1, 0)
    ab = b - a
    t = np.clip(((xy[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    return np.linalg.norm(xy[:, None] - (a + t[..., None] * ab), axis=-1).min(1)


def test_polygons_agree_with_pycocotools_except_where_the_outline_passes_through_the_pixel():
    cocomask = pytest.importorskip("pycocotools.mask", reason="optional differential reference")
    rng = np.random.default_rng(0)
    differing = total = 0
    for _ in range(50):
        n = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(4, 18, n)
        points = np.stack([25 + radius * np.cos(angles), 20 + radius * np.sin(angles)], 1)
        ref = cocomask.decode(cocomask.frPyObjects([points.ravel().tolist()], 40, 50))[..., 0].astype(bool)
        mine = polygon_mask(points, 40, 50)
        ys, xs = np.nonzero(mine != ref)
        assert (distance_to_outline(points, np.stack([xs + 0.5, ys + 0.5], 1)) < 0.75).all()
        differing, total = differing + len(ys), total + int(ref.sum())
    assert differing < 0.02 * total


def test_paint_keeps_agreeing_layers_and_voids_disagreeing_ones():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    out = paint([(a, 1), (a, 1), (b, 2)], background=0, shape=(4, 4))
    assert out[0].tolist() == [1] * 4 and out[1].tolist() == [VOID] * 4 and out[2].tolist() == [2] * 4
    assert out[3].tolist() == [0] * 4
    assert overlay(out, np.full((4, 4), 7), 0)[3].tolist() == [7] * 4
