"""The top-k export: every file reads back to the model's predicted labels."""

import csv
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests import layout_fixtures as lf
from tests.active.conftest import COLORS
from unetkit.active.export import LS_IMAGE_URL, export_top, label_studio_config, label_studio_task
from unetkit.active.rank import Scorer, rank_folder
from unetkit.config import RankConfig
from unetkit.data.dataset import load_samples
from unetkit.data.io import read_image, read_mask
from unetkit.data.pairing import pair_samples
from unetkit.data.rle import brush_values, rle_to_mask
from unetkit.data.spec import detect_spec
from unetkit.errors import InputError


@pytest.fixture
def exported(designed, images, tmp_path):
    scorer = Scorer.from_artifact(designed, backend="torch")
    ranking = rank_folder(scorer, images, RankConfig(by="entropy"))
    out = tmp_path / "export"
    written = export_top(ranking, 2, out, scorer)
    return ranking, out, written


def expected_labels(path) -> np.ndarray:
    """The designed model's prediction: class 1 where the intensity is above mid-grey."""
    return (read_image(path)[0] > 127.5).astype(np.uint8)


def test_export_writes_the_top_k_with_masks_of_the_predictions(exported, images):
    ranking, out, written = exported
    assert all(p.exists() for p in written)
    top = [im.name for im in ranking.top(2)]
    assert top == ["ambiguous.png", "faint.png"]
    for name in top:
        stem = name[:-4]
        assert (out / "images" / name).read_bytes() == (images / name).read_bytes()
        mask = read_mask(out / "masks" / f"{stem}.png")
        assert mask.dtype == np.uint8 and mask.shape == (48, 48)
        assert mask.tolist() == expected_labels(images / name).tolist()
        heat = np.asarray(Image.open(out / "uncertainty" / f"{stem}.png"))
        assert heat.shape == (48, 48, 3)
    assert not (out / "masks" / "clear.png").exists()
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    assert [r["file"] for r in rows] == top


def test_coco_rle_decodes_to_the_masks(exported, images):
    _, out, _ = exported
    coco = json.loads((out / "coco.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "object"}]
    assert [im["file_name"] for im in coco["images"]] == ["ambiguous.png", "faint.png"]
    for im in coco["images"]:
        assert (out / "images" / im["file_name"]).exists()
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert len(anns) == 1 and anns[0]["category_id"] == 1
        decoded = rle_to_mask(anns[0]["segmentation"])
        assert decoded.tolist() == (expected_labels(images / im["file_name"]) == 1).tolist()
        assert anns[0]["area"] == int(decoded.sum())
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])


def test_cvat_zip_holds_palette_masks_and_the_labelmap(exported, images):
    _, out, _ = exported
    with zipfile.ZipFile(out / "cvat-segmentation-mask.zip") as z:
        assert z.read("labelmap.txt").decode().splitlines()[1:] == ["background:0,0,0::", "object:230,25,75::"]
        assert z.read("ImageSets/Segmentation/default.txt").decode().split() == ["ambiguous", "faint"]
        png = Image.open(io.BytesIO(z.read("SegmentationClass/faint.png")))
    assert png.mode == "P"
    assert np.asarray(png).tolist() == expected_labels(images / "faint.png").tolist()
    assert [tuple(c) for c in np.asarray(png.getpalette()[:6]).reshape(2, 3)] == list(COLORS)


def test_label_studio_tasks_decode_to_the_masks(exported, images):
    _, out, _ = exported
    tasks = json.loads((out / "label-studio" / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=images/ambiguous.png", "/data/local-files/?d=images/faint.png"]
    result = tasks[1]["predictions"][0]["result"]
    assert len(result) == 1 and result[0]["type"] == "brushlabels" and result[0]["value"]["brushlabels"] == ["object"]
    assert (result[0]["original_width"], result[0]["original_height"]) == (48, 48)
    rgba = brush_values(result[0]["value"]["rle"]).reshape(48, 48, 4)
    assert (rgba[..., 3] > 0).tolist() == (expected_labels(images / "faint.png") == 1).tolist()
    config = (out / "label-studio" / "config.xml").read_text()
    assert '<BrushLabels name="label" toName="image">' in config and '<Label value="object" background="#e6194b"/>' in config


def test_label_studio_config_escapes_class_names():
    xml = label_studio_config(["bg", 'a "quoted" <class>'], [(0, 0, 0), (1, 2, 3)])
    import xml.etree.ElementTree as ET

    label = ET.fromstring(xml).find("BrushLabels/Label")
    assert label is not None and label.get("value") == 'a "quoted" <class>' and label.get("background") == "#010203"


def test_export_refuses_a_folder_with_files_and_a_bad_k(designed, images, tmp_path):
    scorer = Scorer.from_artifact(designed, backend="torch")
    ranking = rank_folder(scorer, images, RankConfig(tta=False))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.png").write_bytes(b"")
    with pytest.raises(InputError, match="used: the export folder exists and is not empty"):
        export_top(ranking, 2, tmp_path / "used", scorer)
    with pytest.raises(InputError, match="--top-k 0: expected at least 1"):
        export_top(ranking, 0, tmp_path / "new", scorer)


def test_recursive_names_are_flattened(designed, images, tmp_path):
    from tests.active.conftest import disc_image, write_gray

    write_gray(images / "sub" / "deep.png", disc_image(48, 129, 126, seed=7))
    scorer = Scorer.from_artifact(designed, backend="torch")
    ranking = rank_folder(scorer, images, RankConfig(by="entropy", tta=False, recursive=True))
    export_top(ranking, 5, tmp_path / "flat", scorer)
    assert (tmp_path / "flat" / "masks" / "sub__deep.png").exists()
    assert (tmp_path / "flat" / "images" / "sub__deep.png").exists()


def test_a_labelled_cvat_export_reads_back_as_a_data_set(exported, images, tmp_path):
    """The annotators' CVAT "Segmentation mask 1.1" export (the zip plus the images) trains as it is."""
    from unetkit.data.dataset import load_samples
    from unetkit.data.pairing import pair_samples
    from unetkit.data.spec import detect_spec

    _, out, _ = exported
    back = tmp_path / "labelled"
    with zipfile.ZipFile(out / "cvat-segmentation-mask.zip") as z:
        z.extractall(back)
    (back / "JPEGImages").mkdir()
    for image in (out / "images").iterdir():
        (back / "JPEGImages" / image.name).write_bytes(image.read_bytes())
    spec = detect_spec(back)
    assert spec.layout == "voc"
    assert [(c.name, c.value, c.color) for c in spec.classes] == [("background", 0, COLORS[0]), ("object", 1, COLORS[1])]
    loaded = load_samples(pair_samples(spec), spec, progress=False)
    assert [s.key for s in loaded] == ["ambiguous", "faint"]
    for s in loaded:
        assert s.labels.tolist() == expected_labels(images / f"{s.key}.png").tolist()


def test_label_studio_tasks_come_back_labelled_as_a_data_set(tmp_path):
    """The tasks rank --export sends, once annotated and exported as JSON, read as a labelstudio data set."""
    tasks = []
    for i in range(3):
        image, labels = lf.scene(i)
        lf.write_png(tmp_path / "images" / f"s{i}.png", image)
        task = label_studio_task(labels, ["bg", "car", "tree"], f"{LS_IMAGE_URL}s{i}.png", "m1", 0.5)
        task = {"id": i + 1, "data": task["data"], "annotations": [{"result": task["predictions"][0]["result"]}]}
        tasks.append(task)  # an annotator accepted the pre-annotation
    (tmp_path / "project-1.json").write_text(json.dumps(tasks))
    spec = detect_spec(tmp_path)
    assert spec.layout == "labelstudio" and spec.class_names == ["background", "car", "tree"]
    for sample, loaded in zip(pair_samples(spec), load_samples(pair_samples(spec), spec, progress=False), strict=True):
        assert loaded.labels.tolist() == lf.scene(int(sample.key[1:]))[1].tolist()
