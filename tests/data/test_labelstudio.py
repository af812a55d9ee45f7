"""Label Studio exports: tasks to masks, images found by URL, and one message naming the file and
the task for each kind of bad input (the brush RLE codec itself: test_rle.py)."""

import json

import numpy as np
import pytest

from tests import layout_fixtures as lf
from unetkit.data.labelstudio import find_image, load_export, task_mask
from unetkit.data.raster import VOID
from unetkit.errors import DataError


def brush(mask, label="car", size=None):
    h, w = size or mask.shape
    return {"type": "brushlabels", "original_width": w, "original_height": h,
            "value": {"format": "rle", "rle": lf.brush_rle(mask), "brushlabels": [label]}}


def export(tmp_path, tasks):
    path = tmp_path / "project-1-at-2026-12-02.json"
    path.write_text(json.dumps(tasks))
    return path


def test_a_task_becomes_a_mask_from_its_first_annotation_not_cancelled(tmp_path):
    car = np.zeros((6, 8), bool)
    car[1:3, 1:5] = True
    tree = np.zeros((6, 8), bool)
    tree[2:5, 4:7] = True
    tasks = [{"id": 3, "data": {"image": "/data/upload/1/abcdef01-a.png"}, "annotations": [
        {"was_cancelled": True, "result": [brush(~car, "car")]},
        {"result": [brush(car, "car"), brush(tree, "tree"), {"type": "rectanglelabels", "value": {}}]},
    ]}]
    path = export(tmp_path, tasks)
    assert load_export(path).labels == ("car", "tree")
    raw = task_mask(path, 3)
    assert raw[1, 1] == 1 and raw[4, 5] == 2 and raw[0, 0] == 0 and raw[2, 4] == VOID


def test_images_are_found_by_the_tail_of_their_url(tmp_path):
    lf.write_png(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    lf.write_png(tmp_path / "dir" / "b.png", np.zeros((4, 4), np.uint8))
    path = tmp_path / "export.json"
    assert find_image(path, tmp_path, "/data/upload/1/abcdef01-a.png", 1) == tmp_path / "images" / "a.png"
    assert find_image(path, tmp_path, "/data/local-files/?d=home%2Fme%2Fdir%2Fb.png", 1) == tmp_path / "dir" / "b.png"
    with pytest.raises(DataError, match=r"export\.json: task 7: image http://x/c\.png not found under .*expected"):
        find_image(path, tmp_path, "http://x/c.png", 7)


BAD = {
    "a task without an image": (
        {"id": 5, "data": {"text": "x"}, "annotations": []},
        r"task 5: no data\.image; expected the URL or path of the image"),
    "a brush RLE cut short": (
        {"id": 5, "data": {"image": "a.png"}, "annotations": [{"result": [
            {**brush(np.ones((4, 4), bool)), "value": {"format": "rle", "rle": lf.brush_rle(np.ones((4, 4), bool))[:5],
                                                      "brushlabels": ["car"]}}]}]},
        r"task 5: brush RLE ends early"),
    "a brush RLE of another size": (
        {"id": 5, "data": {"image": "a.png"}, "annotations": [{"result": [brush(np.ones((4, 4), bool), size=(5, 5))]}]},
        r"task 5: brush RLE holds 64 values; expected 100"),
    "a region with two labels": (
        {"id": 5, "data": {"image": "a.png"}, "annotations": [{"result": [
            {**brush(np.ones((4, 4), bool)), "value": {"format": "rle", "rle": [0], "brushlabels": ["a", "b"]}}]}]},
        r"task 5: region : value\.brushlabels \['a', 'b'\]; expected one label name"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_tasks_are_one_message_naming_the_export_and_the_task(case, tmp_path):
    task, message = BAD[case]
    path = export(tmp_path, [task])
    with pytest.raises(DataError, match=r"project-1-at-2026-12-02\.json: " + message):
        load_export(path)
        task_mask(path, 5)
