"""Manifests: the split column."""

import pytest

from tests import layout_fixtures as lf
from unetkit.data.manifest import read_manifest
from unetkit.data.spec import load_spec
from unetkit.errors import DataError


def test_split_column_names_each_rows_split(tmp_path):
    path = lf.manifest(tmp_path)
    rows = read_manifest(path)
    assert [r.split for r in rows] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2  # "validation" -> val
    spec = load_spec(path)
    assert spec.split_map == {"train": ("p0", "p1", "p2", "p3"), "val": ("p4", "p5"), "test": ("p6", "p7")}


def test_an_unknown_split_is_named_with_its_row(tmp_path):
    path = lf.manifest(tmp_path)
    path.write_text(path.read_text().replace("p5.png,labels/p5_gt.png,validation", "p5.png,labels/p5_gt.png,holdout"))
    with pytest.raises(DataError, match=r"trainval\.csv: row 6: split 'holdout'; expected train, val, test or empty"):
        read_manifest(path)
