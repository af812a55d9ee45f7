"""`unetkit evaluate-folder`: saved label maps paired by key and scored with the metrics of
`unetkit evaluate`; bad input is one line naming the file, exit status 2, nothing written."""

import json
import math

import numpy as np
import pytest

from tests.test_cli import assert_one_line_error, run_cli
from unetkit.data.io import write_png
from unetkit.errors import DataError
from unetkit.evaluation.folder import evaluate_folder, pair_folders
from unetkit.metrics.surface import normalized_surface_dice


def disc(shape=(32, 32), centre=(16, 16), radius=8, value=1) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2).astype(np.uint8) * value


@pytest.fixture
def folders(tmp_path):
    """Two images, 3 classes: predictions as `unetkit predict` names them (<key>_mask.png), labels
    <key>.png with a void band (255)."""
    pred, lab = tmp_path / "pred", tmp_path / "labels"
    pred.mkdir(), lab.mkdir()
    for key, shift in (("a", 0), ("b", 2)):
        truth = disc() + disc(radius=3, centre=(5, 5), value=2)
        truth[30:, :] = 255
        guess = disc(centre=(16, 16 + shift)) + disc(radius=3, centre=(5, 5), value=2)
        write_png(lab / f"{key}.png", truth)
        write_png(pred / f"{key}_mask.png", guess)
    return pred, lab


def test_pairs_predict_outputs_with_labels_by_key(folders):
    pred, lab = folders
    assert [(p.key, p.prediction.name, p.label.name) for p in pair_folders(pred, lab)] == [
        ("a", "a_mask.png", "a.png"), ("b", "b_mask.png", "b.png")]


def test_scores_match_hand_counts_and_nsd(folders):
    pred, lab = folders
    result = evaluate_folder(pred, lab, class_names=["bg", "disc", "dot"], nsd_tolerance=1.0, progress=False)
    assert result["images"] == 2 and [r["class"] for r in result["per_class"]] == ["bg", "disc", "dot"]
    truth, guess = disc(), disc(centre=(16, 18))  # image b; image a is perfect
    valid = np.ones_like(truth, bool)
    valid[30:, :] = False
    t, g = (truth == 1) & valid, (guess == 1) & valid
    inter, union = t.sum() + (t & g).sum(), t.sum() + (t | g).sum()  # pooled: a is perfect, b shifted
    disc_row = next(r for r in result["per_class"] if r["class"] == "disc")
    assert disc_row["iou"] == pytest.approx(inter / union)
    assert disc_row["nsd_mean"] == pytest.approx((1.0 + normalized_surface_dice(g, t, 1.0, valid=valid)) / 2)
    assert result["calibration"] == {} and "auc_roc" not in disc_row  # no probabilities in label maps
    assert result["per_image"][0]["classes"]["dot"]["dice"] == 1.0


def test_classes_default_to_the_largest_index_found(folders):
    pred, lab = folders
    result = evaluate_folder(pred, lab, progress=False, distances=False, topology=False)
    assert [r["class"] for r in result["per_class"]] == ["class 0", "class 1", "class 2"]


def test_a_dataset_json_decodes_raw_label_values(tmp_path):
    pred, lab = tmp_path / "pred", tmp_path / "labels"
    pred.mkdir(), lab.mkdir()
    write_png(pred / "x.png", disc())
    write_png(lab / "x.png", disc(value=255))  # labels in raw values: 0 background, 255 vessel
    spec = tmp_path / "unetkit-dataset.json"
    spec.write_text(json.dumps({"format": "unetkit-dataset", "version": 1, "root": ".", "images": "img/{key}.png",
                                "masks": "labels/{key}.png", "roi": "", "manifest": "",
                                "classes": [{"name": "background", "value": 0}, {"name": "vessel", "value": 255}],
                                "ignore_values": []}))
    result = evaluate_folder(pred, lab, dataset=spec, progress=False, topology=False)
    assert result["mean_iou"] == 1.0 and [r["class"] for r in result["per_class"]] == ["background", "vessel"]


@pytest.mark.parametrize("damage, message", [
    (lambda p, lab: (lab / "b.png").unlink(), "b_mask.png: prediction without a label (key 'b' has no file in"),
    (lambda p, lab: (p / "b_mask.png").unlink(), "b.png: label without a prediction (key 'b' has no file in"),
    (lambda p, lab: write_png(p / "b_mask.png", np.zeros((20, 32), np.uint8)),
     "b_mask.png: size 32x20 differs from its label"),
    (lambda p, lab: write_png(lab / "b.png", disc(value=7)), "b.png: unknown label value 7; expected class indices 0..2"),
    (lambda p, lab: write_png(p / "a_mask.png", disc(value=9)), "a_mask.png: unknown label value 9; expected class indices 0..2"),
])
def test_bad_input_names_the_file(folders, damage, message):
    pred, lab = folders
    damage(pred, lab)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        evaluate_folder(pred, lab, class_names=["bg", "disc", "dot"], progress=False)


def test_cli_writes_table_json_and_report(folders, tmp_path):
    pred, lab = folders
    out, report = tmp_path / "m.json", tmp_path / "r.html"
    proc = run_cli("evaluate-folder", str(pred), str(lab), "--names", "bg,disc,dot", "--nsd-tolerance", "1",
                   "--json", str(out), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "NSD" in proc.stdout and "disc" in proc.stdout
    data = json.loads(out.read_text())
    assert data["nsd_tolerance"] == 1.0 and not math.isnan(data["per_class"][1]["nsd_mean"])
    assert 'id="worst"' in report.read_text()


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(folders, tmp_path):
    pred, lab = folders
    (lab / "a.png").unlink()
    out = tmp_path / "m.json"
    proc = run_cli("evaluate-folder", str(pred), str(lab), "--json", str(out))
    assert_one_line_error(proc, "a_mask.png: prediction without a label")
    assert proc.returncode == 2 and not out.exists()
