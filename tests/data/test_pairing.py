import json
from pathlib import Path

import numpy as np
import pytest

from unetkit.data.io import write_png
from unetkit.data.pairing import ambiguous_files, pair_samples
from unetkit.data.spec import detect_spec, load_spec
from unetkit.errors import DataError


def test_pairs_drive_layout_by_key_with_roi(drive: Path) -> None:
    samples = pair_samples(detect_spec(drive / "training"))
    assert [s.key for s in samples] == ["21", "22", "23", "24"]
    s = samples[0]
    assert (s.image.name, s.mask.name, s.roi.name) == (
        "21_training.tif",
        "21_manual1.gif",
        "21_training_mask.gif",
    )
    assert all(s.complete for s in samples)


def test_missing_partner_keeps_its_expected_path(drive_l: Path) -> None:
    spec = detect_spec(drive_l)
    (drive_l / "training" / "1st_manual" / "23_manual1.gif").unlink()
    (drive_l / "training" / "images" / "24_training.tif").unlink()
    by_key = {s.key: s for s in pair_samples(spec)}
    assert not by_key["23"].complete and by_key["23"].mask.name == "23_manual1.gif"
    assert not by_key["24"].complete and by_key["24"].image.name == "24_training.tif"
    assert by_key["21"].complete


def test_mixed_extensions_use_a_wildcard_template(tmp_path: Path) -> None:
    write_png(tmp_path / "images" / "a.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "images" / "b.jpg").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    for stem in "ab":
        write_png(tmp_path / "masks" / f"{stem}.png", np.array([[0, 1], [1, 0]], np.uint8))
    spec = detect_spec(tmp_path)
    assert spec.images == "images/{key}.*"
    assert [(s.key, s.image.name) for s in pair_samples(spec)] == [("a", "a.png"), ("b", "b.jpg")]
    assert ambiguous_files(spec) == {}
    (tmp_path / "images" / "a.bmp").write_bytes(b"")
    assert list(ambiguous_files(spec)) == ["a"]


def test_numeric_keys_sort_numerically_and_manifest_keys_are_unique(tmp_path: Path) -> None:
    for key in ("2", "10", "1"):
        write_png(tmp_path / "images" / f"{key}.png", np.zeros((2, 2), np.uint8))
        write_png(tmp_path / "masks" / f"{key}.png", np.array([[0, 1], [1, 0]], np.uint8))
    assert [s.key for s in pair_samples(detect_spec(tmp_path))] == ["1", "2", "10"]
    rows = [{"image": "images/1.png", "mask": "masks/1.png", "key": "x"}] * 2
    (tmp_path / "m.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"m\.json: key 'x' appears more than once"):
        pair_samples(load_spec(tmp_path / "m.json"))
