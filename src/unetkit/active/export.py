"""The top-k images with the model's current predictions as pre-annotations for labelling tools.

    OUT/images/<stem><ext>                 the original files, byte for byte
    OUT/masks/<stem>.png                   class-index PNG (pixel value = class index): the
                                           images/ + masks/ layout `unetkit train` reads back
    OUT/uncertainty/<stem>.png             per-pixel uncertainty heat map (magma, 0..1 fixed scale)
    OUT/coco.json                          COCO instances, one RLE annotation per class and image
                                           (CVAT: "COCO 1.0")
    OUT/cvat-segmentation-mask.zip         labelmap.txt + ImageSets + palette PNGs in the class
                                           colours (CVAT: "Segmentation mask 1.1")
    OUT/label-studio/tasks.json            tasks with brush pre-annotations (Label Studio RLE)
    OUT/label-studio/config.xml            the matching labelling config (BrushLabels, colours)
    OUT/ranking.csv                        the selected rows of the ranking

Names: the image's path relative to the ranked folder, "/" replaced by "__" (flat, unique).
The predictions are recomputed for the k images (the ranking keeps no maps: memory stays one
image whatever the folder size); the predictor is deterministic, so they are the ranked ones.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
from PIL import Image

from unetkit.active.rank import Ranking, Scorer, ranking_csv
from unetkit.data.io import read_image, write_bytes_atomic, write_png, write_text_atomic
from unetkit.data.rle import brush_rle
from unetkit.errors import InputError
from unetkit.inference import vectorize

LS_IMAGE_URL = "/data/local-files/?d=images/"  # Label Studio local files, document root = OUT


def check_export_dir(out_dir: str | Path) -> Path:
    """The export folder must be new or empty: stale files of an earlier export would be mixed in."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: the export folder exists and is not empty; choose a new folder or empty it")
    return out


def export_name(name: str) -> str:
    """Flat file stem for a ranked image's relative name: `a/b/c.png` -> `a__b__c`."""
    return Path(name).with_suffix("").as_posix().replace("/", "__")


def export_top(ranking: Ranking, k: int, out_dir: str | Path, scorer: Scorer) -> list[Path]:
    """Write the `ranking.top(k)` images and their pre-annotations (see the module doc)."""
    if k < 1:
        raise InputError(f"--top-k {k}: expected at least 1 image")
    out = check_export_dir(out_dir)
    names = ranking.class_names
    chosen = ranking.top(k)
    written: list[Path] = []
    coco_images: list[dict] = []
    coco_anns: list[dict] = []
    ls_tasks: list[dict] = []
    class_masks: dict[str, np.ndarray] = {}
    lut = heat_lut()
    for im in chosen:
        stem = export_name(im.name)
        file_name = stem + im.path.suffix.lower()
        image = read_image(im.path)
        result = scorer.uncertainty(image, ranking.config)
        labels = scorer.labels_fn(result.probabilities)
        written.append(write_bytes_atomic(out / "images" / file_name, im.path.read_bytes()))
        written.append(write_png(out / "masks" / f"{stem}.png", labels.astype(np.uint8)))
        written.append(write_png(out / "uncertainty" / f"{stem}.png", lut[np.round(result.heat * 255).astype(np.uint8)]))
        image_id = len(coco_images) + 1
        coco_images.append({"id": image_id, "file_name": file_name, "height": im.height, "width": im.width})
        coco_anns += vectorize.coco_annotations(labels, names, image_id=image_id, first_id=len(coco_anns) + 1)
        ls_tasks.append(label_studio_task(labels, names, LS_IMAGE_URL + file_name, scorer.model_version, ranking.score(im)))
        class_masks[stem] = labels
    coco = {"images": coco_images, "annotations": coco_anns, "categories": vectorize.coco_categories(names)}
    written.append(write_text_atomic(out / "coco.json", json.dumps(coco)))
    written.append(write_bytes_atomic(out / "cvat-segmentation-mask.zip", cvat_mask_zip(class_masks, names, scorer.colors)))
    written.append(write_text_atomic(out / "label-studio" / "tasks.json", json.dumps(ls_tasks)))
    written.append(write_text_atomic(out / "label-studio" / "config.xml", label_studio_config(names, scorer.colors)))
    written.append(write_text_atomic(out / "ranking.csv", ranking_csv(replace(ranking, images=chosen))))
    return written


def heat_lut(cmap: str = "magma") -> np.ndarray:
    """256 x 3 uint8 colours of a matplotlib colour map (0 = certain, 255 = most uncertain)."""
    from matplotlib import colormaps

    return (colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


# ---------------------------------------------------------------- CVAT


def cvat_mask_zip(masks: dict[str, np.ndarray], class_names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> bytes:
    """CVAT's "Segmentation mask 1.1" (Pascal VOC layout): `labelmap.txt` (`name:r,g,b::`, class
    order = index order), `ImageSets/Segmentation/default.txt` and one palette PNG per image in
    `SegmentationClass/` whose indices are the classes and whose palette is their colours."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{c[0]},{c[1]},{c[2]}::" for n, c in zip(class_names, colors, strict=True)]
        z.writestr("labelmap.txt", "\n".join(lines) + "\n")
        z.writestr("ImageSets/Segmentation/default.txt", "".join(f"{stem}\n" for stem in masks))
        for stem, labels in masks.items():
            png = io.BytesIO()
            im = Image.fromarray(labels.astype(np.uint8), "P")
            im.putpalette(palette.reshape(-1).tolist())
            im.save(png, format="PNG")
            z.writestr(f"SegmentationClass/{stem}.png", png.getvalue())
    return buffer.getvalue()


# ---------------------------------------------------------------- Label Studio


def label_studio_config(class_names: Sequence[str], colors: Sequence[tuple[int, int, int]], background: int = 0) -> str:
    """A labelling config for the tasks: an Image and BrushLabels with one Label per class."""
    labels = "\n".join(
        f"    <Label value={quoteattr(n)} background={quoteattr(hex_colour(c))}/>"
        for i, (n, c) in enumerate(zip(class_names, colors, strict=True)) if i != background
    )
    return ('<View>\n  <Image name="image" value="$image" zoom="true"/>\n'
            f'  <BrushLabels name="label" toName="image">\n{labels}\n  </BrushLabels>\n</View>\n')


def hex_colour(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def label_studio_task(
    labels: np.ndarray, class_names: Sequence[str], image_url: str, model_version: str, score: float, background: int = 0
) -> dict:
    """A Label Studio task whose prediction holds one brush region per predicted class."""
    h, w = labels.shape
    result = [
        {
            "id": f"c{c}", "from_name": "label", "to_name": "image", "type": "brushlabels",
            "original_width": int(w), "original_height": int(h), "image_rotation": 0,
            "value": {"format": "rle", "rle": brush_rle(labels == c), "brushlabels": [class_names[c]]},
        }
        for c in np.unique(labels).tolist() if c != background and c < len(class_names)
    ]
    return {"data": {"image": image_url}, "predictions": [{"model_version": model_version, "score": float(score), "result": result}]}
