import json
from pathlib import Path

import numpy as np
import pytest

from unetkit.data.io import write_png
from unetkit.data.layout import common_affixes
from unetkit.data.spec import ClassInfo, DatasetSpec, decode_mask, detect_spec, load_spec, save_spec
from unetkit.data.synthetic import SYNTHETIC_PALETTE
from unetkit.errors import DataError


def _pairs(
    root: Path, masks: dict[str, np.ndarray], mask_dir: str = "masks", image_dir: str = "images"
) -> Path:
    for stem, mask in masks.items():
        write_png(root / image_dir / f"{stem}.png", np.zeros(mask.shape[:2] + (3,), np.uint8))
        write_png(root / mask_dir / f"{stem}.png", mask)
    return root


def test_detects_images_masks_layout_with_palette_classes(shapes: Path) -> None:
    spec = detect_spec(shapes)
    assert (spec.images, spec.masks, spec.roi) == ("images/{key}.png", "masks/{key}.png", "")
    assert [c.value for c in spec.classes] == [0, 1, 2, 3]
    assert spec.classes[0].name == "class_0"  # named by value: only the data (or --names) say "background"
    assert [c.color for c in spec.classes] == [tuple(int(x) for x in c) for c in SYNTHETIC_PALETTE]


def test_detects_drive_as_published(drive: Path) -> None:
    spec = detect_spec(drive / "training")
    assert spec.images == "images/{key}_training.tif"
    assert spec.masks == "1st_manual/{key}_manual1.gif"
    assert spec.roi == "mask/{key}_training_mask.gif"  # "mask" next to "manual" is the field of view
    assert [c.value for c in spec.classes] in ([0, 255], [0, 1])  # gray GIF or palette GIF
    assert [c.name for c in spec.classes] == [f"class_{c.value}" for c in spec.classes]


def test_root_with_training_and_test_picks_training(drive_l: Path) -> None:
    spec = detect_spec(drive_l)
    assert spec.images == "training/images/{key}_training.tif"
    assert spec.roi == "training/mask/{key}_training_mask.gif"


def test_isbi_layout_and_label_folder_names(tmp_path: Path) -> None:
    mask = np.array([[0, 255], [255, 255]], np.uint8)
    _pairs(tmp_path / "isbi" / "train", {"00": mask, "01": mask}, mask_dir="labels")
    spec = detect_spec(tmp_path / "isbi")
    assert (spec.images, spec.masks) == ("train/images/{key}.png", "train/labels/{key}.png")
    _pairs(tmp_path / "gt", {"a": mask}, mask_dir="gt")
    assert detect_spec(tmp_path / "gt").masks == "gt/{key}.png"


def test_gray_masks_with_few_values_and_a_void_value(tmp_path: Path) -> None:
    mask = np.array([[0, 1, 2, 255]], np.uint8)
    spec = detect_spec(_pairs(tmp_path, {"a": mask}))
    assert [(c.name, c.value) for c in spec.classes] == [("class_0", 0), ("class_1", 1), ("class_2", 2)]
    assert spec.ignore_values == (255,)


def test_colour_coded_masks_give_a_colour_table(tmp_path: Path) -> None:
    mask = np.zeros((2, 3, 3), np.uint8)
    mask[0, 0] = (255, 0, 0)
    mask[1, 2] = (0, 0, 255)
    spec = detect_spec(_pairs(tmp_path, {"a": mask}))
    assert [c.value for c in spec.classes] == [(0, 0, 0), (0, 0, 255), (255, 0, 0)]
    labels = decode_mask(mask, spec)
    np.testing.assert_array_equal(labels, [[2, 0, 0], [0, 0, 1]])


def test_too_many_values_is_not_a_class_mask(tmp_path: Path) -> None:
    mask = np.arange(100, dtype=np.uint8).reshape(10, 10)
    with pytest.raises(DataError, match=r"a\.png: masks hold more than 64 distinct values"):
        detect_spec(_pairs(tmp_path, {"a": mask}))


def test_missing_folders_are_explained(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match=r"found no images/ folder .* subfolders: \['stuff'\]"):
        detect_spec(tmp_path)
    write_png(tmp_path / "images" / "a.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"no mask folder next to images/"):
        detect_spec(tmp_path)
    with pytest.raises(DataError, match=r"not a folder"):
        detect_spec(tmp_path / "images" / "a.png")


def test_unpairable_names_are_refused(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "a.png", np.zeros((2, 2), np.uint8))
    write_png(tmp_path / "masks" / "b.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(DataError, match=r"no file in images/ pairs with one in masks/"):
        detect_spec(tmp_path)


def test_common_affixes_do_not_cut_numbers() -> None:
    assert common_affixes(["21_training", "22_training", "40_training"]) == ("", "_training")
    assert common_affixes(["img001", "img002"]) == ("img", "")
    assert common_affixes(["only"]) == ("", "")


def _spec(**changes) -> DatasetSpec:
    base = dict(
        root=".",
        images="i/{key}.png",
        masks="m/{key}.png",
        classes=(ClassInfo("background", 0), ClassInfo("vessel", 255)),
    )
    return DatasetSpec(**(base | changes))


def test_decode_mask_maps_values_and_ignores() -> None:
    spec = _spec(ignore_values=(128,))
    labels = decode_mask(np.array([[0, 255, 128]], np.uint8), spec)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[0, 1, 255]])


def test_decode_mask_lists_unexpected_values_and_the_file() -> None:
    with pytest.raises(
        DataError, match=r"m/7\.png: unexpected mask values 3, 7; expected 0 \(background\), 255 \(vessel\)"
    ):
        decode_mask(np.array([[0, 3, 7, 3]], np.uint8), _spec(), "m/7.png")
    with pytest.raises(DataError, match=r"x\.jpg: unexpected mask values 254 \(JPEG is lossy"):
        decode_mask(np.array([[254]], np.uint8), _spec(), "x.jpg")
    with pytest.raises(DataError, match=r"c\.png: is an RGB colour mask but the dataset classes are gray"):
        decode_mask(np.zeros((2, 2, 3), np.uint8), _spec(), "c.png")


def test_spec_refuses_inconsistent_definitions() -> None:
    with pytest.raises(DataError, match=r"images template 'i/a\.png' has no \{key\}"):
        _spec(images="i/a.png")
    with pytest.raises(DataError, match=r"values repeat"):
        _spec(ignore_values=(255,))


def test_save_and_load_round_trip_relative_to_the_json(drive_l: Path) -> None:
    spec = detect_spec(drive_l)
    path = save_spec(spec, drive_l / "unetkit-dataset.json")
    assert json.loads(path.read_text())["root"] == "."
    assert load_spec(path) == spec
    assert load_spec(drive_l) == spec  # a folder with its JSON
    data = json.loads(path.read_text())
    data["classes"][1]["name"] = "vessel"
    path.write_text(json.dumps(data))
    assert load_spec(drive_l).class_names == ["class_0", "vessel"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, r"unknown key 'colour'"),
        ({"version": 2}, r"version: expected 1, got 2"),
        ({"images": 3}, r"images: expected a string, got 3"),
        (
            {"classes": [{"name": "bg", "value": 0}, {"name": "x", "value": "white"}]},
            r"classes\[1\]\.value: expected an integer",
        ),
        (
            {"classes": [{"name": "bg", "value": [0, 0, 300]}]},
            r"classes\[0\]\.value: expected \[r, g, b\] with values 0-255",
        ),
        ({"classes": []}, r"classes: expected a non-empty list"),
        ({"ignore_values": 255}, r"ignore_values: expected a list"),
    ],
)
def test_load_spec_is_strict_and_names_the_key(tmp_path: Path, change: dict, message: str) -> None:
    data = {
        "format": "unetkit-dataset",
        "version": 1,
        "root": ".",
        "images": "i/{key}.png",
        "masks": "m/{key}.png",
        "classes": [{"name": "bg", "value": 0}, {"name": "fg", "value": 1}],
    } | change
    (tmp_path / "d.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"d\.json: {message}"):
        load_spec(tmp_path / "d.json")


def test_load_spec_reads_a_manifest_csv_or_json(shapes: Path) -> None:
    rows = "image,mask\n" + "".join(f"images/img_00{i}.png,masks/img_00{i}.png\n" for i in range(3))
    (shapes / "list.csv").write_text(rows)
    spec = load_spec(shapes / "list.csv")
    assert spec.manifest.endswith("list.csv") and len(spec.classes) == 4
    records = [
        {"image": f"images/img_00{i}.png", "mask": f"masks/img_00{i}.png", "key": f"k{i}"} for i in range(2)
    ]
    (shapes / "list.json").write_text(json.dumps(records))
    assert load_spec(shapes / "list.json").manifest.endswith("list.json")
    (shapes / "bad.csv").write_text("img,mask\na.png,b.png\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column 'image'"):
        load_spec(shapes / "bad.csv")
    with pytest.raises(DataError, match=r"nothing: not found"):
        load_spec(shapes / "nothing")


def test_a_spec_saved_outside_its_data_keeps_an_absolute_root(drive_l: Path, tmp_path: Path) -> None:
    spec = detect_spec(drive_l)
    path = save_spec(spec, tmp_path / "elsewhere" / "d.json")
    assert json.loads(path.read_text())["root"] == str(drive_l)
    assert load_spec(path) == spec


def test_with_classes_ignores_renames_and_recolours(tmp_path):
    from tests import layout_fixtures as lf
    from unetkit.data.spec import parse_color, parse_value, with_classes

    spec = detect_spec(lf.release(tmp_path / "camvid"))
    named = with_classes(spec, names=["road", "car", "tree"], ignore=[parse_value("11")],
                         colors=[parse_color(c) for c in ("#000000", "#c82828", "#28c828")])
    assert [(c.name, c.value, c.color) for c in named.classes] == [
        ("road", 0, (0, 0, 0)), ("car", 1, (200, 40, 40)), ("tree", 2, (40, 200, 40))]
    assert named.ignore_values == (11,)
    with pytest.raises(DataError, match=r"--names: 2 given for 4 classes; the classes are 0 \(class_0\)"):
        with_classes(spec, names=["a", "b"])
    assert parse_value("1, 2,3") == (1, 2, 3)
    with pytest.raises(DataError, match="--ignore 'void': expected a mask value"):
        parse_value("void", "--ignore")
    with pytest.raises(DataError, match="expected a colour #rrggbb"):
        parse_color("red")


def test_json_without_layout_or_splits_still_loads(drive_l):
    spec = detect_spec(drive_l)
    data = json.loads(save_spec(spec, drive_l / "unetkit-dataset.json").read_text())
    assert "layout" not in data and "splits" not in data  # old-style specs are written as before
    data["splits"] = {"holdout": ["21"]}
    (drive_l / "unetkit-dataset.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="dataset split 'holdout'; expected one of train, val, test"):
        load_spec(drive_l)
