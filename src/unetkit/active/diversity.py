"""Near-duplicate detection with a difference hash (pure numpy + Pillow's resize).

Labels spent on two frames of the same scene buy one lesson twice. The ranking puts near-copies
next to each other (they are uncertain for the same reason), so the export keeps the first of a
group and skips the rest. A cheap image fingerprint is enough for copies, re-encodings, small
shifts and brightness changes; it does not try to find semantically similar images.

`difference_hash(image)`: gray (channel mean) -> 17x16 box-filtered thumbnail -> 256 bits, one
per horizontally adjacent pair (is the right pixel brighter?). Independent of image size and of
global brightness/contrast; two images are near-duplicates when their hashes differ in at most
`max_bits` of the 256 bits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

HASH_SIZE = 16  # 16 x 16 = 256 bits


def difference_hash(image: np.ndarray) -> np.ndarray:
    """`(C, H, W)` image -> 256-bit difference hash packed into 32 uint8."""
    gray = np.asarray(image, dtype=np.float32).mean(axis=0)
    thumb = np.asarray(Image.fromarray(gray, mode="F").resize((HASH_SIZE + 1, HASH_SIZE), Image.Resampling.BOX))
    return np.packbits(thumb[:, 1:] > thumb[:, :-1])


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Number of differing bits between two packed hashes."""
    return int(np.unpackbits(np.bitwise_xor(a, b)).sum())


def mark_duplicates(hashes: Sequence[np.ndarray | None], max_bits: int) -> list[int | None]:
    """For hashes in rank order: None for an image to keep, else the index of the earlier kept
    image it nearly duplicates (at most `max_bits` bits apart). `max_bits` 0 still catches exact
    copies; a None hash (not computed) is always kept."""
    kept: list[int] = []
    kept_bits = np.zeros((0, HASH_SIZE * HASH_SIZE), dtype=bool)
    out: list[int | None] = []
    for i, h in enumerate(hashes):
        if h is None:
            out.append(None)
            continue
        bits = np.unpackbits(h).astype(bool)
        if kept:
            distances = (kept_bits != bits).sum(axis=1)
            j = int(distances.argmin())
            if distances[j] <= max_bits:
                out.append(kept[j])
                continue
        kept.append(i)
        kept_bits = np.vstack([kept_bits, bits])
        out.append(None)
    return out
