"""Published layouts read as they are: files, keys, splits and classes; bad input is one message."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests import layout_fixtures as lf
from unetkit.data.dataset import load_samples
from unetkit.data.formats import detect_layout, read_labelmap
from unetkit.data.pairing import pair_samples
from unetkit.data.spec import detect_spec, load_spec, save_spec
from unetkit.data.validate import validate
from unetkit.errors import DataError


def test_release_list_files_find_the_files_by_the_tail_of_the_releases_paths(tmp_path):
    root = lf.release(tmp_path / "camvid")
    spec = detect_spec(root)
    assert spec.layout == "lists"
    assert {n: len(k) for n, k in spec.splits} == {"train": 4, "val": 2, "test": 2}
    assert spec.split_map["test"] == ("0001TP_0006", "0001TP_0007")
    assert [c.value for c in spec.classes] == [0, 1, 2, 11]  # void 11 is a value until --ignore 11
    samples = pair_samples(spec)
    assert samples[0].image == root / "train" / "0001TP_0000.png"
    assert samples[0].mask == root / "trainannot" / "0001TP_0000.png"
    assert validate(spec, samples, progress=False).ok


def test_sibling_folders_without_list_files_split_by_folder_name(tmp_path):
    root = lf.release(tmp_path / "camvid", lists=False)
    spec = detect_spec(root)
    assert spec.layout == "folders"
    assert spec.split_map["val"] == ("0001TP_0004", "0001TP_0005")
    assert len(pair_samples(spec)) == 8


def test_a_list_file_naming_a_missing_file_is_one_message(tmp_path):
    root = lf.release(tmp_path / "camvid")
    (root / "valannot" / "0001TP_0005.png").unlink()
    with pytest.raises(DataError, match=r"val\.txt:2: /SegNet/CamVid/valannot/0001TP_0005\.png not found under"):
        detect_spec(root)
    (root / "val.txt").write_text("only_one_path.png\n")
    with pytest.raises(DataError, match=r"val\.txt:1: expected `image label`"):
        detect_spec(root)


def test_voc_palette_masks_take_names_and_colours_from_labelmap(tmp_path):
    root = lf.voc(tmp_path / "voc")
    spec = detect_spec(root)
    assert spec.layout == "voc"
    assert [(c.name, c.value, c.color) for c in spec.classes] == [
        (n, i, tuple(int(v) for v in lf.PALETTE[i])) for i, n in enumerate(lf.NAMES)
    ]
    assert spec.ignore_values == (255,)  # VOC's void/boundary index
    assert spec.split_map == {"train": ("2007_000000", "2007_000001", "2007_000002", "2007_000003"),
                              "val": ("2007_000004", "2007_000005"), "test": ("2007_000006", "2007_000007")}
    loaded = load_samples(pair_samples(spec), spec, progress=False)
    _, labels = lf.scene(0, void=255)
    assert loaded[0].labels.tolist() == labels.tolist()


def test_voc_colour_masks_decode_by_labelmap_colour(tmp_path):
    spec = detect_spec(lf.voc(tmp_path / "voc", colour=True))
    assert spec.classes[1].value == (200, 40, 40) and spec.classes[1].name == "car"
    loaded = load_samples(pair_samples(spec)[:1], spec, progress=False)
    assert loaded[0].labels.tolist() == lf.scene(0)[1].tolist()


def test_voc_colour_not_in_labelmap_is_one_message(tmp_path):
    root = lf.voc(tmp_path / "voc", colour=True)
    mask = np.zeros((lf.SIZE, lf.SIZE, 3), np.uint8)
    mask[0, 0] = (1, 2, 3)
    lf.write_png(root / "SegmentationClass" / "2007_000003.png", mask)
    with pytest.raises(DataError, match=r"2007_000003\.png: colour \(1, 2, 3\) is not in labelmap\.txt; expected road"):
        detect_spec(root)
    palette = lf.voc(tmp_path / "voc2")
    wrong = lf.PALETTE.copy()
    wrong[1] = (9, 9, 9)
    lf.write_png(palette / "SegmentationClass" / "2007_000001.png", lf.scene(1)[1], palette=wrong)
    with pytest.raises(DataError, match=r"2007_000001\.png: palette index 1 \(colour \(9, 9, 9\)\) is not class 1"):
        detect_spec(palette)


def test_voc_list_naming_a_missing_image_and_a_bad_labelmap(tmp_path):
    root = lf.voc(tmp_path / "voc")
    (root / "JPEGImages" / "2007_000005.png").unlink()
    with pytest.raises(DataError, match=r"val\.txt:2: 2007_000005 has no file in JPEGImages/"):
        detect_spec(root)
    (root / "labelmap.txt").write_text("road:0,0\n")
    with pytest.raises(DataError, match=r"labelmap\.txt:1: expected `name:r,g,b::`"):
        read_labelmap(root / "labelmap.txt")


def test_nnunet_stacks_channel_files_and_reads_dataset_json(tmp_path):
    root = lf.nnunet(tmp_path / "Dataset001_Toy")
    spec = detect_spec(root)
    assert spec.layout == "nnunet"
    assert spec.class_names == ["background", "car", "tree"]  # the data say "background" here
    assert {n: len(k) for n, k in spec.splits} == {"train": 6, "test": 2}
    samples = pair_samples(spec)
    assert samples[0].channels == (root / "imagesTr" / "case_000_0001.png",)
    loaded = load_samples(samples[:1], spec, progress=False)
    assert loaded[0].image.shape == (2, lf.SIZE, lf.SIZE)
    assert np.allclose(loaded[0].image[0] + loaded[0].image[1], 255)
    assert validate(spec, samples, progress=False).ok


def test_nnunet_case_missing_a_channel_is_one_message(tmp_path):
    root = lf.nnunet(tmp_path / "Dataset001_Toy")
    (root / "imagesTr" / "case_002_0001.png").unlink()
    with pytest.raises(DataError, match=r"imagesTr/case_002_0001\.png: missing channel 1 \(inverted\) of case case_002"):
        detect_spec(root)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "liver": [1, 2]}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"dataset\.json: labels\.liver: expected an integer label value"):
        detect_spec(root)


def test_nnunet_ignore_label_is_ignored(tmp_path):
    root = lf.nnunet(tmp_path / "d")
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "car": 1, "ignore": 2}  # nnU-Net v2's ignore label
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = detect_spec(root)
    assert spec.class_names == ["background", "car"] and spec.ignore_values == (2,)


def test_layout_spec_round_trips_through_json(tmp_path):
    root = lf.voc(tmp_path / "voc")
    spec = detect_spec(root)
    path = save_spec(spec, root / "unetkit-dataset.json")
    data = json.loads(path.read_text())
    assert data["layout"] == "voc" and data["splits"]["test"] == ["2007_000006", "2007_000007"]
    assert load_spec(root) == spec
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert len(pair_samples(load_spec(moved))) == 8  # root stays relative to the JSON


def test_plain_folders_are_no_published_layout(tmp_path):
    lf.write_png(tmp_path / "images" / "a.png", np.zeros((4, 4), np.uint8))
    lf.write_png(tmp_path / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    assert detect_layout(tmp_path) is None


def test_keys_repeating_across_sibling_folders_keep_their_folder(tmp_path):
    for folder in ("train", "val"):
        image, labels = lf.scene(0)
        lf.write_png(tmp_path / folder / "a.png", image)
        lf.write_png(tmp_path / f"{folder}annot" / "a.png", labels)
    spec = detect_spec(tmp_path)
    assert spec.split_map == {"train": ("train/a",), "val": ("val/a",)}
    assert sorted(s.key for s in pair_samples(spec)) == ["train/a", "val/a"]


def test_files_are_found_relative_to_the_list_file(tmp_path: Path):
    lf.release(tmp_path, lists=False)
    (tmp_path / "train.txt").write_text("train/0001TP_0000.png trainannot/0001TP_0000.png\n")
    spec = detect_spec(tmp_path)
    assert spec.layout == "lists" and spec.split_map == {"train": ("0001TP_0000",)}


def test_a_txt_file_that_is_no_list_leaves_the_folders_layout(tmp_path):
    root = lf.release(tmp_path / "camvid", lists=False)
    (root / "test.txt").write_text("notes about the test images\n")
    assert detect_spec(root).layout == "folders"


def test_coco_2017_naming_gives_splits_category_names_and_the_painted_masks(tmp_path):
    root = lf.coco(tmp_path / "coco")
    spec = detect_spec(root)
    assert spec.layout == "coco"
    assert {n: len(k) for n, k in spec.splits} == {"train": 4, "val": 2, "test": 2}
    assert [(c.name, c.value) for c in spec.classes] == [("background", 0), ("car", 1), ("tree", 2)]
    samples = pair_samples(spec)
    assert samples[0].image == root / "train2017" / "000000000000.png"
    assert samples[0].mask == root / "annotations" / "instances_train2017.json" and samples[0].entry == "100"
    for sample, loaded in zip(samples, load_samples(samples, spec, progress=False), strict=True):
        assert loaded.labels.tolist() == lf.scene(int(sample.key))[1].tolist()
    assert validate(spec, samples, progress=False).ok


def test_cvat_coco_export_and_an_unlabelled_image_list(tmp_path):
    root = lf.coco(tmp_path / "coco")
    (root / "images").mkdir()
    for folder in ("train2017", "val2017", "test2017"):
        for f in (root / folder).iterdir():
            f.rename(root / "images" / f.name)
    (root / "annotations" / "instances_train2017.json").rename(root / "annotations" / "instances_default.json")
    (root / "annotations" / "instances_val2017.json").unlink()
    test = json.loads((root / "annotations" / "instances_test2017.json").read_text())
    del test["annotations"]  # COCO's image_info_test2017.json: images to predict on
    (root / "annotations" / "instances_test2017.json").unlink()
    (root / "annotations" / "image_info_test2017.json").write_text(json.dumps(test))
    spec = detect_spec(root)
    assert spec.splits == () and len(pair_samples(spec)) == 4
    assert spec.unlabelled == (("annotations/image_info_test2017.json", 2),)
    assert "unlabelled: 2 images in annotations/image_info_test2017.json" in spec.describe()
    assert load_spec(save_spec(spec, root / "unetkit-dataset.json")) == spec


def test_coco_image_missing_and_bad_annotations_are_one_message(tmp_path):
    root = lf.coco(tmp_path / "coco")
    (root / "val2017" / "000000000005.png").unlink()
    with pytest.raises(DataError, match=r"instances_val2017\.json: image 105 000000000005\.png not found in val2017/"):
        detect_spec(root)
    root = lf.coco(tmp_path / "coco2")
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][2]["category_id"] = 9
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_train2017\.json: annotation 3 \(image 101, 000000000001\.png\): "
                                        r"unknown category_id 9; expected one of 1 \(car\), 2 \(tree\)"):
        detect_spec(root)


def test_label_studio_export_gives_labels_splits_and_unlabelled_tasks(tmp_path):
    root = lf.labelstudio(tmp_path / "ls")
    spec = detect_spec(root)
    assert spec.layout == "labelstudio"
    assert spec.class_names == ["background", "car", "tree"] and spec.ignore_values == (65535,)
    assert {n: len(k) for n, k in spec.splits} == {"train": 4, "val": 2, "test": 2}
    assert spec.unlabelled == (("export.json", 1),)
    samples = pair_samples(spec)
    for sample, loaded in zip(samples, load_samples(samples, spec, progress=False), strict=True):
        assert loaded.labels.tolist() == lf.scene(int(sample.key.removeprefix("img_")))[1].tolist()
    tasks = json.loads((root / "export.json").read_text())
    del tasks[1]["data"]["image"]
    (root / "export.json").write_text(json.dumps(tasks))
    with pytest.raises(DataError, match=r"export\.json: task 11: no data\.image; expected the URL or path"):
        detect_spec(root)


def test_nnunet_images_without_labels_are_reported_as_unlabelled(tmp_path):
    root = lf.nnunet(tmp_path / "d")
    shutil.rmtree(root / "labelsTs")
    spec = detect_spec(root)
    assert {n: len(k) for n, k in spec.splits} == {"train": 6}
    assert spec.unlabelled == (("imagesTs", 2),)
    assert "unlabelled: 2 images in imagesTs" in spec.describe()


def test_a_coco_json_of_predictions_beside_images_and_masks_leaves_the_masks_the_labels(tmp_path):
    for i in range(2):
        image, labels = lf.scene(i)
        lf.write_png(tmp_path / "images" / f"{i}.png", image)
        lf.write_png(tmp_path / "masks" / f"{i}.png", labels)
    coco = {"images": [{"id": 1, "file_name": "0.png", "width": lf.SIZE, "height": lf.SIZE}], "annotations": [],
            "categories": [{"id": 1, "name": "car"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))  # as `unetkit rank --export` writes it
    assert detect_spec(tmp_path).layout == ""
    (tmp_path / "coco.json").rename(tmp_path / "_annotations.coco.json")  # Roboflow's name: COCO it is
    assert detect_spec(tmp_path).layout == "coco"
