"""Each published layout goes init-dataset -> validate -> train --budget -> evaluate --split test as it
is, with no hand-written JSON; bad input in a reader is one line on stderr and nothing is written.

The budget is 1s, the smallest whole-second budget, not the issue's 30s: it takes the same path
(the planner times or estimates candidates, fit's budget clock fixes the steps and stops on time),
and seven layouts x 30 s of training would cost minutes of the suite's 15 on two shared cores."""

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests import layout_fixtures as lf
from unetkit.artifact import read_meta
from unetkit.cli import app
from unetkit.errors import DataError

TRAIN = ["--budget", "1s", "--patch", "32", "--batch", "2", "--postprocess", "off", "--no-calibrate", "--quiet"]
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
    "coco": (lambda p: lf.coco(p), [], "COCO JSON"),
    "labelstudio": (lambda p: lf.labelstudio(p), [], "Label Studio"),
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
    assert meta.plan and meta.train_config["budget_seconds"] > 0  # the budget path: planned, then clocked
    assert meta.fingerprint["n_samples"] == 6  # train + val: the test split never trains
    assert meta.class_names[1:] == ("car", "tree")  # the names init-dataset was given or found
    out = tmp_path / "metrics.json"
    cli("evaluate", run / "model.unetkit", folder, "--split", "test", "--json", out, "--no-distances", "--no-topology",
        "--backend", "torch")
    result = json.loads(out.read_text())
    assert result["images"] == 2


def test_split_is_a_choice_at_parse_time_and_checked_against_the_data_sets_splits(tmp_path):
    data = lf.release(tmp_path / "camvid", lists=False)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "m.unetkit"), str(data), "--split", "holdout"])
    assert result.exit_code == 2 and "'holdout' is not one of 'train', 'val', 'test'" in result.output
    shutil.rmtree(data / "test")
    shutil.rmtree(data / "testannot")
    proc = subprocess.run([sys.executable, "-m", "unetkit", "evaluate", str(tmp_path / "m.unetkit"), str(data),
                           "--split", "test"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--split test: " in proc.stderr and "has no test split; its splits: train (4), val (2)" in proc.stderr
    nnunet = lf.nnunet(tmp_path / "nn")
    shutil.rmtree(nnunet / "labelsTs")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "m.unetkit"), str(nnunet), "--split", "test"])
    assert "its splits: train (6); imagesTs holds 2 unlabelled images" in str(result.exception)


def _stray_colour(data):
    mask = lf.PALETTE[lf.scene(3)[1]]
    mask[0, 0] = (1, 2, 3)
    lf.write_png(data / "SegmentationClass" / "2007_000003.png", mask)


def _edit_coco(data, change):
    path = data / "annotations" / "instances_val2017.json"
    coco = json.loads(path.read_text())
    change(coco["annotations"][0])
    path.write_text(json.dumps(coco))


def _task_without_image(data):
    tasks = json.loads((data / "export.json").read_text())
    tasks[2]["data"] = {"split": "train"}
    (data / "export.json").write_text(json.dumps(tasks))


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
    "COCO polygon outside the image": (
        lf.coco, lambda d: _edit_coco(d, lambda a: a.update(segmentation=[[0, 0, 40, 0, 40, 8, 0, 8]])),
        "instances_val2017.json: annotation 9 (image 104, 000000000004.png): polygon point (40, 0) is outside the "
        "32x32 image; expected x in 0..32, y in 0..32"),
    "COCO unknown category id": (
        lf.coco, lambda d: _edit_coco(d, lambda a: a.update(category_id=5)),
        "instances_val2017.json: annotation 9 (image 104, 000000000004.png): unknown category_id 5; "
        "expected one of 1 (car), 2 (tree)"),
    "COCO malformed RLE": (
        lf.coco, lambda d: _edit_coco(d, lambda a: a.update(segmentation={"size": [32, 32], "counts": "00~"})),
        "instances_val2017.json: annotation 9 (image 104, 000000000004.png): RLE counts string holds '~'; "
        "expected characters '0' to 'o'"),
    "Label Studio task without an image": (
        lf.labelstudio, _task_without_image,
        "export.json: task 12: no data.image; expected the URL or path of the image the task labels"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_bad_input_is_one_line_naming_the_file_and_nothing_is_written(case, tmp_path):
    build, breaks, message = BROKEN[case]
    data = build(tmp_path / "data")
    breaks(data)
    result = CliRunner().invoke(app, ["init-dataset", str(data)])
    assert isinstance(result.exception, DataError), result.output  # main() prints it as one line, exit 2
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not (data / "unetkit-dataset.json").exists()


def test_a_reader_error_reaches_the_shell_as_one_line_and_exit_2(tmp_path):
    data = lf.coco(tmp_path / "data")
    BROKEN["COCO unknown category id"][1](data)
    proc = subprocess.run([sys.executable, "-m", "unetkit", "init-dataset", str(data)],
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "unknown category_id 5" in lines[0], proc.stderr
    assert not (data / "unetkit-dataset.json").exists()
