"""COCO JSON: the painting rules (overlaps, crowds, background) and one message naming the file and
the annotation for each kind of bad input (the RLE codec itself: test_rle.py)."""

import json

import numpy as np
import pytest

from unetkit.data.coco import coco_mask, load_coco
from unetkit.data.raster import VOID
from unetkit.data.rle import mask_to_rle
from unetkit.errors import DataError


def write(tmp_path, annotations, categories=None, size=(10, 10), name="instances_default.json"):
    data = {"images": [{"id": 1, "file_name": "a.png", "height": size[0], "width": size[1]}],
            "annotations": [{"id": i + 1, "image_id": 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)],
            "categories": categories or [{"id": 1, "name": "car"}, {"id": 2, "name": "tree"}]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def box(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_overlaps_of_different_categories_are_void_and_instances_paint_over_crowds(tmp_path):
    crowd = np.zeros((10, 10), bool)
    crowd[:, :5] = True
    path = write(tmp_path, [
        {"category_id": 1, "segmentation": box(0, 0, 4, 4)},
        {"category_id": 2, "segmentation": box(2, 2, 6, 6)},
        {"category_id": 1, "segmentation": box(3, 0, 8, 2)},  # same category overlapping: car
        {"category_id": 2, "iscrowd": 1, "segmentation": {"size": [10, 10], "counts": mask_to_rle(crowd)["counts"]}},
    ])
    raw = coco_mask(path, 1)
    assert raw[0, 0] == 1 and raw[1, 3] == 1 and raw[5, 5] == 2
    assert raw[3, 3] == VOID  # car and tree instances overlap
    assert raw[8, 1] == 2 and raw[8, 8] == 0  # the crowd region is its category; the rest background
    assert raw[1, 1] == 1  # an instance paints over the crowd


def test_background_moves_when_a_category_uses_id_0(tmp_path):
    path = write(tmp_path, [{"category_id": 0, "segmentation": box(0, 0, 2, 2)}],
                 categories=[{"id": 0, "name": "car"}, {"id": 1, "name": "tree"}])
    assert load_coco(path).background == 2
    assert coco_mask(path, 1)[9, 9] == 2 and coco_mask(path, 1)[0, 0] == 0
    named = write(tmp_path, [], categories=[{"id": 0, "name": "Background"}, {"id": 1, "name": "car"}], name="b.json")
    assert load_coco(named).background == 0


BAD = {
    "polygon outside the image": (
        {"category_id": 1, "segmentation": box(0, 0, 14, 4)},
        r"annotation 1 \(image 1, a\.png\): polygon point \(14, 0\) is outside the 10x10 image; expected x in 0\.\.10"),
    "unknown category id": (
        {"category_id": 7, "segmentation": box(0, 0, 4, 4)},
        r"annotation 1 \(image 1, a\.png\): unknown category_id 7; expected one of 1 \(car\), 2 \(tree\)"),
    "RLE counts not summing to the image": (
        {"category_id": 1, "segmentation": {"size": [10, 10], "counts": [10, 20]}},
        r"RLE counts sum to 30 .*expected non-negative runs summing to 10x10 = 100 pixels"),
    "RLE string with a bad character": (
        {"category_id": 1, "segmentation": {"size": [10, 10], "counts": "0a~"}},
        r"RLE counts string holds '~'; expected characters '0' to 'o'"),
    "RLE string cut short": (
        {"category_id": 1, "segmentation": {"size": [10, 10], "counts": "1T"}},
        r"RLE counts string ends inside a number"),
    "RLE of another size": (
        {"category_id": 1, "segmentation": {"size": [5, 20], "counts": [100]}},
        r"RLE size \[5, 20\]; expected \[height, width\] = \[10, 10\]"),
    "a box without a mask": (
        {"category_id": 1, "segmentation": [], "bbox": [0, 0, 3, 3]},
        r"segmentation \[\]; expected polygons .* \(a box alone is no mask\)"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_annotations_are_one_message_naming_the_file_and_the_annotation(case, tmp_path):
    annotation, message = BAD[case]
    path = write(tmp_path, [annotation])
    with pytest.raises(DataError, match=r"instances_default\.json: .*" + message):
        load_coco(path)


def test_an_annotation_of_an_unlisted_image_and_a_file_edited_after_reading(tmp_path):
    path = write(tmp_path, [{"category_id": 1, "segmentation": box(0, 0, 4, 4)}])
    assert coco_mask(path, 1)[0, 0] == 1
    data = json.loads(path.read_text())
    data["annotations"][0]["image_id"] = 5
    path.write_text(json.dumps(data) + " ")  # another size: the cache reads the new version
    with pytest.raises(DataError, match=r"annotation 1: image_id 5 is not in images"):
        load_coco(path)
