"""Tiny data sets in the layouts the field publishes, written by the tests (never the real data).

Every image is a dark background with a bright square (class 1) and a mid-grey bar (class 2),
so a few training steps learn something; masks hold 0, 1, 2 and, where the format has one, a void.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unetkit.data.io import write_png

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
