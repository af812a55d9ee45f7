"""Tiny data sets in the layouts the field publishes, written by the tests (never the real data).

Every image is a dark background with a bright square (class 1) and a mid-grey bar (class 2),
so a few training steps learn something; masks hold 0, 1, 2 and, where the format has one, a void.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unetkit.data.io import write_png
from unetkit.data.rle import compress_rle, mask_to_rle

SIZE = 32
PALETTE = np.array([(0, 0, 0), (200, 40, 40), (40, 200, 40)] + [(0, 0, 0)] * 252 + [(224, 224, 192)], np.uint8)
NAMES = ("road", "car", "tree")


def scene(i: int, void: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, labels (H, W) uint8) number `i`; `void` marks a border strip."""
    rng = np.random.default_rng(i)
    labels = np.zeros((SIZE, SIZE), np.uint8)
    y, x = rng.integers(2, SIZE - 14, 2)
    labels[y : y + 10, x : x + 10] = 1
    labels[SIZE - 6 : SIZE - 2, 4:28] = 2
    image = np.choose(labels, [20, 230, 120]).astype(np.float64) + rng.normal(0, 5, labels.shape)
    if void is not None:
        labels[:, :1] = void
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2), labels


SPLITS = {"train": range(0, 4), "val": range(4, 6), "test": range(6, 8)}


def release(root: Path, lists: bool = True) -> Path:
    """CamVid as SegNet released it: train/ trainannot/ val/ valannot/ test/ testannot/ (+ train.txt ...
    naming the files by the release's own absolute paths); void = 11."""
    for split, ids in SPLITS.items():
        lines = []
        for i in ids:
            image, labels = scene(i, void=11)
            write_png(root / split / f"0001TP_{i:04d}.png", image)
            write_png(root / f"{split}annot" / f"0001TP_{i:04d}.png", labels)
            lines.append(f"/SegNet/CamVid/{split}/0001TP_{i:04d}.png /SegNet/CamVid/{split}annot/0001TP_{i:04d}.png")
        if lists:
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def voc(root: Path, colour: bool = False) -> Path:
    """Pascal VOC / CVAT "Segmentation mask 1.1": palette (or colour) PNGs, labelmap.txt, ImageSets."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{','.join(map(str, PALETTE[i]))}::" for i, n in enumerate(NAMES)]
    (root / "labelmap.txt").write_text("\n".join(lines) + "\n")
    for split, ids in SPLITS.items():
        for i in ids:
            image, labels = scene(i, void=None if colour else 255)
            write_png(root / "JPEGImages" / f"2007_{i:06d}.png", image)
            mask = PALETTE[labels] if colour else labels
            write_png(root / "SegmentationClass" / f"2007_{i:06d}.png", mask, palette=None if colour else PALETTE)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"2007_{i:06d}\n" for i in ids))
    return root


def nnunet(root: Path) -> Path:
    """nnU-Net raw Dataset001: two channels per case (_0000, _0001), labelsTr, imagesTs + labelsTs."""
    for folder, ids in (("Tr", [*SPLITS["train"], *SPLITS["val"]]), ("Ts", SPLITS["test"])):
        for i in ids:
            image, labels = scene(i)
            write_png(root / f"images{folder}" / f"case_{i:03d}_0000.png", image[..., 0])
            write_png(root / f"images{folder}" / f"case_{i:03d}_0001.png", 255 - image[..., 0])
            write_png(root / f"labels{folder}" / f"case_{i:03d}.png", labels)
    meta = {"channel_names": {"0": "bright", "1": "inverted"}, "labels": {"background": 0, "car": 1, "tree": 2},
            "numTraining": 6, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def manifest(root: Path) -> Path:
    """Files anywhere, listed in a CSV with a split column; returns the CSV."""
    rows = ["image,mask,split"]
    for split, ids in SPLITS.items():
        for i in ids:
            image, labels = scene(i)
            write_png(root / "pictures" / f"p{i}.png", image)
            write_png(root / "labels" / f"p{i}_gt.png", labels)
            rows.append(f"pictures/p{i}.png,labels/p{i}_gt.png,{'validation' if split == 'val' else split}")
    (root / "trainval.csv").write_text("\n".join(rows) + "\n")
    return root / "trainval.csv"


# ---------------------------------------------------------------- annotation files (COCO, Label Studio)


def coco(root: Path) -> Path:
    """COCO 2017 naming: annotations/instances_{train,val,test}2017.json + train2017/ val2017/ test2017/;
    the car square a polygon, the tree bar an RLE (compressed string on even images, counts on odd)."""
    categories = [{"id": 1, "name": "car", "supercategory": "thing"}, {"id": 2, "name": "tree", "supercategory": "thing"}]
    ann_id = 1
    for split, ids in SPLITS.items():
        images, annotations = [], []
        for i in ids:
            image, labels = scene(i)
            name = f"{i:012d}.png"
            write_png(root / f"{split}2017" / name, image)
            images.append({"id": 100 + i, "file_name": name, "width": SIZE, "height": SIZE})
            ys, xs = np.nonzero(labels == 1)
            y0, x0, y1, x1 = int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
            polygon = [x0, y0, x1, y0, x1, y1, x0, y1]
            rle = mask_to_rle(labels == 2)
            rle = compress_rle(rle) if i % 2 == 0 else rle
            annotations += [
                {"id": ann_id, "image_id": 100 + i, "category_id": 1, "iscrowd": 0, "segmentation": [polygon]},
                {"id": ann_id + 1, "image_id": 100 + i, "category_id": 2, "iscrowd": int(i % 2 == 0), "segmentation": rle},
            ]
            ann_id += 2
        coco_json = {"info": {}, "images": images, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco_json))
    return root


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a bool mask, written here from the documented rle-pack format (an
    encoder independent of `unetkit.data.rle.brush_rle`, and unlike it writing literal chunks): RGBA bytes
    (255 where painted), 32-bit count, 5-bit word size - 1, four 4-bit run field sizes - 1, then chunks
    (flag: 1 = one repeated word, 0 = literal words; 2-bit field choice; length - 1; word(s))."""
    values = np.repeat(mask.ravel().astype(np.int64) * 255, 4)
    sizes = (3, 6, 10, 16)
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> k) & 1 for k in range(n - 1, -1, -1))

    put(len(values), 32)
    put(7, 5)  # 8-bit words
    for s in sizes:
        put(s - 1, 4)
    starts = np.flatnonzero(np.diff(np.concatenate([[-1], values]))) if len(values) else np.zeros(0, int)
    runs = np.diff(np.concatenate([starts, [len(values)]]))
    literal: list[int] = []

    def flush() -> None:
        while literal:
            chunk = literal[: 1 << sizes[-1]]
            del literal[: len(chunk)]
            s = next(k for k, size in enumerate(sizes) if len(chunk) - 1 < 1 << size)
            put(0, 1), put(s, 2), put(len(chunk) - 1, sizes[s])
            for v in chunk:
                put(v, 8)

    for start, length in zip(starts, runs, strict=True):
        if length < 3:  # short runs go out as literal words
            literal.extend([int(values[start])] * int(length))
            continue
        flush()
        left = int(length)
        while left:
            n = min(left, 1 << sizes[-1])
            s = next(k for k, size in enumerate(sizes) if n - 1 < 1 << size)
            put(1, 1), put(s, 2), put(n - 1, sizes[s]), put(int(values[start]), 8)
            left -= n
    flush()
    return np.packbits(np.array(bits, np.uint8)).tolist()


def labelstudio(root: Path) -> Path:
    """Label Studio's JSON export (export.json) beside images/: car painted with the brush, tree a
    polygon in percent; uploads carry Label Studio's 8-hex-digit prefix; data.split gives the split;
    one more task has no annotation (unlabelled)."""
    tasks = []
    for split, ids in SPLITS.items():
        for i in ids:
            image, labels = scene(i)
            write_png(root / "images" / f"img_{i:03d}.png", image)
            ys, xs = np.nonzero(labels == 2)
            y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
            percent = [[100 * x / SIZE, 100 * y / SIZE] for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
            size = {"original_width": SIZE, "original_height": SIZE, "image_rotation": 0}
            result = [
                {"id": f"b{i}", "type": "brushlabels", "from_name": "tag", "to_name": "image", **size,
                 "value": {"format": "rle", "rle": brush_rle(labels == 1), "brushlabels": ["car"]}},
                {"id": f"p{i}", "type": "polygonlabels", "from_name": "poly", "to_name": "image", **size,
                 "value": {"points": percent, "polygonlabels": ["tree"]}},
            ]
            tasks.append({"id": 10 + i, "annotations": [{"id": i, "result": result, "was_cancelled": False}],
                          "data": {"image": f"/data/upload/1/{i:08x}-img_{i:03d}.png", "split": split}})
    write_png(root / "images" / "img_999.png", scene(9)[0])
    tasks.append({"id": 99, "annotations": [], "data": {"image": "/data/upload/1/0000abcd-img_999.png"}})
    (root / "export.json").write_text(json.dumps(tasks))
    return root
