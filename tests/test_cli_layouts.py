"""Each published layout goes init-dataset -> validate -> train -> evaluate --split test as it is,
with no hand-written JSON; bad input in a reader is one line on stderr and nothing is written."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests import layout_fixtures as lf
from unetkit.artifact import read_meta
from unetkit.cli import app

TRAIN = ["--steps", "2", "--patch", "32", "--batch", "2", "--postprocess", "off", "--no-calibrate", "--quiet"]
TINY = {"model": {"base_width": 4, "depth": 2}, "augment": {"enabled": False}, "progress": False}


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


LAYOUTS = {
    "lists": (lambda p: lf.release(p), ["--ignore", "11", "--names", "road,car,tree"], "release list files"),
    "folders": (lambda p: lf.release(p, lists=False),
                ["--ignore", "11", "--names", "road,car,tree", "--colors", "#000000,#c82828,#28c828"], "sibling folders"),
    "voc": (lambda p: lf.voc(p), [], "Pascal VOC"),
    "nnunet": (lambda p: lf.nnunet(p), [], "nnU-Net raw"),
    "manifest": (lambda p: lf.manifest(p), ["--names", "road,car,tree"], "manifest"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_goes_from_init_dataset_to_evaluate_on_its_test_split(layout, tmp_path):
    build, flags, shown = LAYOUTS[layout]
    data = build(tmp_path / "data")
    printed = cli("init-dataset", data, *flags)
    assert shown in printed and "splits: train" in printed and "test 2" in printed
    assert "class 1: car" in printed and "class 2: tree" in printed
    folder = data if data.is_dir() else data.parent  # a manifest's description is written beside it
    assert "splits: train" in cli("validate", folder)
    run = tmp_path / "run"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    cli("train", folder, *TRAIN, "--config", config, "--out", run)
    meta = read_meta(run / "model.unetkit")
    assert meta.fingerprint["n_samples"] == 6  # train + val: the test split never trains
    assert meta.class_names[1:] == ("car", "tree")  # the names init-dataset was given or found
    out = tmp_path / "metrics.json"
    cli("evaluate", run / "model.unetkit", folder, "--split", "test", "--json", out, "--no-distances", "--no-topology",
        "--backend", "torch")
    result = json.loads(out.read_text())
    assert result["images"] == 2


def test_evaluate_names_the_splits_a_data_set_has(tmp_path):
    data = lf.release(tmp_path / "camvid", lists=False)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "m.unetkit"), str(data), "--split", "holdout"])
    assert result.exit_code != 0
    assert "--split holdout: " in str(result.exception) and "its splits: train (4), val (2), test (2)" in str(result.exception)


def _stray_colour(data):
    mask = lf.PALETTE[lf.scene(3)[1]]
    mask[0, 0] = (1, 2, 3)
    lf.write_png(data / "SegmentationClass" / "2007_000003.png", mask)


BROKEN = {
    "list file naming a missing file": (
        lf.release, lambda d: (d / "valannot" / "0001TP_0005.png").unlink(),
        "val.txt:2: /SegNet/CamVid/valannot/0001TP_0005.png not found under"),
    "VOC colour not in labelmap.txt": (
        lambda p: lf.voc(p, colour=True), _stray_colour,
        "2007_000003.png: colour (1, 2, 3) is not in labelmap.txt; expected road (0, 0, 0)"),
    "nnU-Net case missing a channel": (
        lf.nnunet, lambda d: (d / "imagesTr" / "case_001_0001.png").unlink(),
        "case_001_0001.png: missing channel 1 (inverted) of case case_001; dataset.json lists 2 channel(s)"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_bad_input_is_one_line_naming_the_file_and_nothing_is_written(case, tmp_path):
    build, breaks, message = BROKEN[case]
    data = build(tmp_path / "data")
    breaks(data)
    proc = subprocess.run([sys.executable, "-m", "unetkit", "init-dataset", str(data)],
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (data / "unetkit-dataset.json").exists()
