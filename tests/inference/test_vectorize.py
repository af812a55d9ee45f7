"""COCO annotations and GeoJSON polygons of label maps: hand-made cases and round trips."""

import json

import numpy as np
import pytest
import tifffile

from unetkit.data.rle import rle_to_mask
from unetkit.inference.vectorize import (
    GeoTransform,
    coco_annotations,
    label_polygons,
    labels_to_geojson,
    polygons_to_mask,
    read_geotransform,
    ring_area,
)


def test_coco_annotations_per_class_and_instance():
    labels = np.zeros((6, 8), np.uint8)
    labels[1:3, 1:3] = 1
    labels[4:6, 5:8] = 1
    labels[0, 7] = 2
    per_class = coco_annotations(labels, ["bg", "a", "b"], image_id=9)
    assert [a["category_id"] for a in per_class] == [1, 2]
    assert per_class[0]["area"] == 10 and per_class[0]["bbox"] == [1, 1, 7, 5]
    assert per_class[1]["bbox"] == [7, 0, 1, 1] and per_class[1]["image_id"] == 9
    np.testing.assert_array_equal(rle_to_mask(per_class[0]["segmentation"]), labels == 1)
    inst = coco_annotations(labels, ["bg", "a", "b"], instances=True, compressed=False)
    assert [a["area"] for a in inst] == [4, 6, 1]
    assert [a["id"] for a in inst] == [1, 2, 3]
    assert isinstance(inst[0]["segmentation"]["counts"], list)
    json.dumps(inst)


def test_square_polygon_hand_made():
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 1
    [(cls, pixels, rings)] = label_polygons(mask, 2)
    assert (cls, pixels, len(rings)) == (1, 4, 1)
    ring = rings[0]
    assert np.array_equal(ring[0], ring[-1])
    expected = {(1.5, 1), (2.5, 1), (3, 1.5), (3, 2.5), (2.5, 3), (1.5, 3), (1, 2.5), (1, 1.5)}
    assert {tuple(p) for p in ring[:-1].tolist()} == expected
    assert ring_area(ring) == pytest.approx(3.5)  # corners cut through the pixel-edge mid-points


def test_polygon_with_hole_and_island_round_trip():
    mask = np.zeros((12, 12), np.uint8)
    mask[1:10, 1:10] = 1
    mask[3:8, 3:8] = 0  # hole
    mask[5, 5] = 1  # island inside the hole: its own component
    mask[10, 10] = 1  # touches the ring only diagonally: same 8-connected component
    polys = label_polygons(mask, 2)
    assert sorted(p[1] for p in polys) == [1, 57]
    ring_comp = next(p for p in polys if p[1] == 57)
    assert len(ring_comp[2]) == 2
    assert ring_area(ring_comp[2][0]) > 0 > ring_area(ring_comp[2][1])  # exterior +, hole -
    rebuilt = np.zeros(mask.shape, bool)
    for _, _, rings in polys:
        rebuilt |= polygons_to_mask(rings, mask.shape)
    np.testing.assert_array_equal(rebuilt, mask.astype(bool))


def test_polygons_round_trip_random_labels(rng):
    from scipy import ndimage

    raw = ndimage.gaussian_filter(rng.random((40, 50)), 2)
    labels = np.digitize(raw, np.quantile(raw, [0.5, 0.8])).astype(np.uint8)
    polys = label_polygons(labels, 3)
    rebuilt = np.zeros(labels.shape, np.uint8)
    for cls, pixels, rings in polys:
        m = polygons_to_mask(rings, labels.shape)
        assert m.sum() == pixels
        assert not (rebuilt[m] != 0).any()  # components never overlap
        rebuilt[m] = cls
    np.testing.assert_array_equal(rebuilt, labels)


def test_geojson_pixel_and_map_coordinates(tmp_path):
    labels = np.zeros((5, 6), np.uint8)
    labels[0:2, 0:3] = 1
    gj = labels_to_geojson(labels, ["bg", "road"], min_pixels=1)
    [feat] = gj["features"]
    assert gj["type"] == "FeatureCollection" and "crs" not in gj
    assert feat["properties"] == {"class": 1, "name": "road", "pixels": 6}
    xs = [p[0] for p in feat["geometry"]["coordinates"][0]]
    ys = [p[1] for p in feat["geometry"]["coordinates"][0]]
    assert (min(xs), max(xs), min(ys), max(ys)) == (0.0, 3.0, 0.0, 2.0)  # edge mid-points of the outer pixels

    # A GeoTIFF: 10 m pixels, top-left corner at (500000, 4600000), EPSG:32633, PixelIsArea.
    geokeys = [1, 1, 0, 2, 1025, 0, 1, 1, 3072, 0, 1, 32633]
    path = tmp_path / "geo.tif"
    tifffile.imwrite(path, np.zeros((5, 6), np.uint8), extratags=[
        (33550, "d", 3, (10.0, 10.0, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, 500000.0, 4600000.0, 0.0), True),
        (34735, "H", len(geokeys), geokeys, True),
    ])
    gt = read_geotransform(path)
    assert gt == GeoTransform(500000.0, 10.0, 0.0, 4600000.0, 0.0, -10.0, epsg=32633)
    geo = labels_to_geojson(labels, ["bg", "road"], transform=gt)
    ring = np.array(geo["features"][0]["geometry"]["coordinates"][0])
    assert ring[:, 0].min() == 500000.0 and ring[:, 0].max() == 500030.0
    assert ring[:, 1].max() == 4600000.0 and ring[:, 1].min() == 4599980.0
    assert {500005.0, 4600000.0} <= set(ring.ravel().tolist())  # corner cut: (0.5, 0) in pixels
    assert ring_area(ring) > 0  # exterior counter-clockwise in map coordinates (RFC 7946)
    assert geo["crs"]["properties"]["name"].endswith("EPSG::32633")
    json.dumps(geo)


def test_geotransform_absent_and_pixel_is_point(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.uint8))
    assert read_geotransform(plain) is None
    assert read_geotransform(tmp_path / "x.png") is None
    point = tmp_path / "point.tif"
    tifffile.imwrite(point, np.zeros((4, 4), np.uint8), extratags=[
        (33550, "d", 3, (2.0, 2.0, 0.0), True),
        (33922, "d", 6, (0.0, 0.0, 0.0, 100.0, 200.0, 0.0), True),
        (34735, "H", 8, [1, 1, 0, 1, 1025, 0, 1, 2], True),
    ])
    gt = read_geotransform(point)  # tiepoint at the first pixel's centre -> corner half a pixel off
    assert (gt.x0, gt.y0, gt.dx, gt.dy, gt.epsg) == (99.0, 201.0, 2.0, -2.0, None)
