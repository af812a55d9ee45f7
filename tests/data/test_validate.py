import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unetkit.data.io import write_png
from unetkit.data.pairing import pair_samples
from unetkit.data.spec import ClassInfo, detect_spec
from unetkit.data.validate import validate, validate_split
from unetkit.errors import DataError


def _report(root: Path, spec=None):
    spec = spec or detect_spec(root)
    return validate(spec, pair_samples(spec), progress=False)


def _messages(report) -> list[str]:
    return [str(p) for p in report.problems]


def test_clean_data_passes(drive: Path) -> None:
    report = _report(drive)
    assert report.ok and report.problems == () and len(report.good_samples) == 4
    assert "4 samples, 4 good, 0 bad; 0 errors, 0 warnings" in report.summary()
    report.raise_if_bad()


def test_size_mismatch_names_both_files_and_sizes(drive_l: Path) -> None:
    spec = detect_spec(drive_l)
    gif = drive_l / "training" / "1st_manual" / "21_manual1.gif"
    Image.fromarray(np.zeros((36, 40), np.uint8), "L").save(gif, optimize=False)  # transposed
    assert _messages(_report(drive_l, spec)) == [
        "training/1st_manual/21_manual1.gif: size 40x36 does not match image "
        "training/images/21_training.tif (36x40); check the pairing pattern"
    ]


def test_every_bad_file_is_reported_at_once(drive_l: Path) -> None:
    spec = detect_spec(drive_l)
    train = drive_l / "training"
    (train / "1st_manual" / "21_manual1.gif").unlink()
    (train / "images" / "22_training.tif").write_bytes(b"II*\x00broken")
    Image.fromarray(np.full((40, 36), 7, np.uint8), "L").save(
        train / "1st_manual" / "23_manual1.gif", optimize=False
    )
    Image.fromarray(np.zeros((5, 5), np.uint8), "L").save(
        train / "mask" / "24_training_mask.gif", optimize=False
    )
    report = _report(drive_l, spec)
    messages = _messages(report)
    assert len(report.errors) == 4 and report.bad_keys == {"21", "22", "23", "24"}
    assert messages[0].startswith(
        "training/1st_manual/21_manual1.gif: missing mask for image training/images/21_training.tif"
    )
    assert messages[1].startswith("training/images/22_training.tif: unreadable or corrupt image")
    assert messages[2].startswith(
        "training/1st_manual/23_manual1.gif: unexpected mask values 7; expected 0 (class_0)"
    )
    assert messages[3] == (
        "training/mask/24_training_mask.gif: ROI size 5x5 does not match image training/images/24_training.tif "
        "(36x40); check the pairing pattern"
    )
    with pytest.raises(
        DataError,
        match=r"4 data problem\(s\): training/1st_manual/21_manual1\.gif: missing mask.* \(and 1 more\)",
    ):
        report.raise_if_bad()
    with pytest.raises(DataError, match=r"set data\.skip_bad"):
        report.usable(skip_bad=True)  # nothing good is left


def test_skip_bad_returns_the_good_samples(shapes: Path) -> None:
    (shapes / "images" / "img_002.png").unlink()
    report = _report(shapes)
    assert _messages(report)[0].startswith("images/img_002.png: missing image for mask masks/img_002.png")
    with pytest.raises(DataError, match=r"1 data problem"):
        report.usable(skip_bad=False)
    assert [s.key for s in report.usable(skip_bad=True)] == [
        "img_000",
        "img_001",
        "img_003",
        "img_004",
        "img_005",
    ]


def test_empty_data_set_and_single_class(tmp_path: Path, shapes: Path) -> None:
    spec = detect_spec(shapes)
    report = validate(spec, [], progress=False)
    assert _messages(report) == [
        f"{shapes}: empty data set: no image/mask files match images/{{key}}.png with masks masks/{{key}}.png"
    ]
    with pytest.raises(DataError, match="empty data set"):
        report.usable(skip_bad=True)
    write_png(tmp_path / "one" / "images" / "a.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "one" / "masks" / "a.png", np.zeros((4, 4), np.uint8))
    assert "only one class (class_0); segmentation needs two" in _messages(_report(tmp_path / "one"))[0]


def test_class_never_present_is_a_warning(shapes: Path) -> None:
    spec = detect_spec(shapes)
    spec = type(spec)(**{**spec.__dict__, "classes": spec.classes + (ClassInfo("tumour", 9),)})
    report = _report(shapes, spec)
    assert report.ok
    assert _messages(report) == [f"{shapes}: class 'tumour' (value 9) never occurs in any mask"]
    assert "warning" in report.summary()


def test_channel_mismatch_and_duplicates(shapes: Path) -> None:
    write_png(shapes / "images" / "img_001.png", np.zeros((48, 64), np.uint8))  # gray among RGB
    shutil.copy(shapes / "images" / "img_003.png", shapes / "images" / "img_004.png")
    report = _report(shapes)
    assert "images/img_001.png: has 1 channel(s); the other images have 3" in _messages(report)
    assert "images/img_004.png: same content as images/img_003.png" in _messages(report)
    assert report.bad_keys == {"img_001"}


def test_duplicates_across_the_split_are_leaks(shapes: Path) -> None:
    shutil.copy(shapes / "images" / "img_000.png", shapes / "images" / "img_005.png")
    spec = detect_spec(shapes)
    samples = pair_samples(spec)
    report = validate_split(spec, samples[:4], samples[4:])
    assert _messages(report) == [
        "images/img_005.png: validation image is identical to training image images/img_000.png (key img_000)"
    ]
    assert validate_split(spec, samples[1:4], samples[4:]).ok
