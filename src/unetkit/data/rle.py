"""Run-length encodings of binary masks as labelling tools write them: COCO's and Label Studio's.

Encoders and decoders live together here, the one owner of each format: `unetkit predict --coco`,
the server's JSON and `rank --export` encode with them; the COCO and Label Studio readers
(`coco.py`, `labelstudio.py`) decode with them. Pure numpy; no pycocotools, no label-studio-converter.

COCO RLE
--------
`{"size": [h, w], "counts": [...]}`: run lengths over the mask flattened in column-major (Fortran)
order, starting with a run of zeros (possibly 0), as pycocotools writes it. `counts` may instead be
pycocotools' compressed string (`rleToString`/`rleFrString`): each count, minus the count two before
from the 4th on, in 5-bit groups, low first, with a continuation bit 0x20, the last group's bit 0x10
the sign; each group + 48 as one printable character.

Label Studio brush RLE
----------------------
The RGBA bytes of the brush canvas (4 per pixel, row-major; 255 where painted) packed with thi.ng's
`rle-pack`, a bit stream, most significant bit first: the value count (32 bits), the word size - 1
(5 bits), four run-length field sizes - 1 (4 bits each), then chunks: a flag bit, a 2-bit choice of
field size, the chunk length - 1 in that many bits, and either one word repeated (flag 1) or that
many literal words (flag 0). `brush_rle` writes repeated runs only; `brush_values` reads both.

Decoders check what they read: a malformed encoding is a `DataError` naming `where` and what was
expected (a character out of range, a string or bit stream cut short, runs not summing to the size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unetkit.errors import DataError, InputError

# ---------------------------------------------------------------- COCO RLE


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Binary (H, W) mask -> uncompressed COCO RLE `{"size": [h, w], "counts": [int, ...]}`."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle: need a 2-D mask, got shape {mask.shape}")
    flat = mask.astype(bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs  # counts always start with a (possibly empty) run of zeros
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def rle_runs(rle: dict[str, Any], where: str = "RLE") -> np.ndarray:
    """The checked run lengths of a COCO RLE (counts as a list or a compressed string): `(n,)` int64,
    non-negative, summing to h*w. Decodes no pixels."""
    size, counts = rle.get("size"), rle.get("counts")
    ok = isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v >= 0 for v in size)
    if not ok:
        raise DataError(f"{where}: RLE size {size!r}; expected [height, width]")
    if isinstance(counts, (str, bytes)):
        runs = np.asarray(rle_string_to_counts(counts, where), np.int64)
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        runs = np.asarray(counts, np.int64)
    else:
        raise DataError(f"{where}: RLE counts {str(counts)[:40]!r}; expected a list of integers or a COCO string")
    h, w = size
    if (runs < 0).any() or int(runs.sum()) != h * w:
        raise DataError(f"{where}: RLE counts sum to {int(runs.sum())} (smallest {int(runs.min(initial=0))}); "
                        f"expected non-negative runs summing to {h}x{w} = {h * w} pixels")
    return runs


def runs_to_mask(runs: np.ndarray, height: int, width: int) -> np.ndarray:
    """`(height, width)` bool from checked run lengths (column-major, 0s first)."""
    return np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape((height, width), order="F")


def rle_to_mask(rle: dict[str, Any], where: str = "RLE") -> np.ndarray:
    """COCO RLE (counts as a list or a compressed string) -> (H, W) bool mask."""
    runs = rle_runs(rle, where)
    return runs_to_mask(runs, *rle["size"])


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """pycocotools' compressed string for a list of run lengths."""
    out = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as on a C long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_string_to_counts(text: str | bytes, where: str = "RLE") -> list[int]:
    """Inverse of `rle_counts_to_string` (vectorized: a COCO-stuff file holds thousands of strings)."""
    raw = text.encode("latin-1", errors="replace") if isinstance(text, str) else bytes(text)
    c = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    bad = np.flatnonzero((c < 0) | (c >= 64))
    if len(bad):
        ch = chr(raw[bad[0]]) if isinstance(text, bytes) else text[bad[0]]
        raise DataError(f"{where}: RLE counts string holds {ch!r}; expected characters '0' to 'o' (48-111)")
    if not len(c):
        return []
    if c[-1] & 0x20:
        raise DataError(f"{where}: RLE counts string ends inside a number; expected a complete COCO string")
    ends = np.flatnonzero((c & 0x20) == 0)  # the last 5-bit group of each count
    starts = np.concatenate([[0], ends[:-1] + 1])
    groups = ends - starts + 1
    if len(groups) and groups.max() > 12:
        raise DataError(f"{where}: RLE count of {int(groups.max())} 5-bit groups; expected at most 12 (a 60-bit count)")
    k = np.arange(len(c)) - np.repeat(starts, groups)
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    x = np.where(c[ends] & 0x10, x - (1 << (5 * groups)), x)  # the last group's 0x10 is the sign
    counts = x.copy()  # from the 4th on, each count was stored minus the count two before it
    counts[3::2] = np.cumsum(x[1::2])[1:] if len(x) > 3 else counts[3::2]
    counts[4::2] = x[2] + np.cumsum(x[4::2]) if len(x) > 4 else counts[4::2]
    return counts.tolist()


def compress_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> the same RLE with `counts` as pycocotools' string."""
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts if isinstance(counts, str) else rle_counts_to_string(counts)}


# ---------------------------------------------------------------- Label Studio brush RLE

BRUSH_SIZES = (3, 4, 8, 16)  # bits of a run length, chosen per run by a 2-bit index


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a binary mask, as `label_studio_converter.brush.mask2rle` writes it:
    word size 8, run-length sizes 3, 4, 8, 16, one repeated-value chunk per run (split past 65536)."""
    flat = np.repeat(np.asarray(mask, dtype=bool).ravel(), 4)
    if flat.size >= 2**32:
        raise InputError(f"mask of {mask.shape} pixels is too large for Label Studio's RLE")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    parts = [f"{flat.size:032b}", f"{8 - 1:05b}", "".join(f"{s - 1:04b}" for s in BRUSH_SIZES)]
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        value = "11111111" if flat[start] else "00000000"
        while length > 0:
            n = min(length, 2**16)
            index = next(i for i, bits in enumerate(BRUSH_SIZES) if n <= 2**bits)
            parts.append(f"1{index:02b}{n - 1:0{BRUSH_SIZES[index]}b}{value}")
            length -= n
    bits = "".join(parts)
    bits += "0" * (-len(bits) % 8)
    return np.packbits(np.frombuffer(bits.encode(), dtype=np.uint8) - 48).tolist()


def brush_values(rle: Sequence[int], where: str = "brush RLE", expected: int | None = None) -> np.ndarray:
    """Label Studio's brush RLE (a list of bytes) -> the flat values it packs (RGBA bytes for a brush);
    `expected`: the number of values it must hold (checked before anything is allocated)."""
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in rle):
        raise DataError(f"{where}: brush RLE: expected a list of bytes 0-255")
    reader = _Bits(np.unpackbits(np.asarray(rle, np.uint8)), where)
    count = reader.read(32)
    word = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    if expected is not None and count != expected:
        raise DataError(f"{where}: brush RLE holds {count} values; expected {expected}")
    if count > len(rle) * 8 * (1 << 16):  # more than the stream can encode: a corrupt header
        raise DataError(f"{where}: brush RLE claims {count} values in {len(rle)} bytes; expected a Label Studio RLE")
    out = np.zeros(count, np.int64)
    i = 0
    while i < count:
        repeat = reader.read(1)
        j = i + 1 + reader.read(sizes[reader.read(2)])
        if j > count:
            raise DataError(f"{where}: brush RLE run ends at value {j}, past the {count} values it declares")
        out[i:j] = reader.read(word) if repeat else reader.words(j - i, word)
        i = j
    return out


class _Bits:
    """A most-significant-bit-first reader over unpacked bits; reading past the end is a DataError."""

    WEIGHTS = {n: 1 << np.arange(n - 1, -1, -1, dtype=np.int64) for n in range(1, 33)}

    def __init__(self, bits: np.ndarray, where: str) -> None:
        self.bits, self.pos, self.where = bits, 0, where

    def _take(self, n: int) -> np.ndarray:
        if self.pos + n > len(self.bits):
            raise DataError(f"{self.where}: brush RLE ends early (bit {self.pos + n} of {len(self.bits)}); "
                            "expected a complete Label Studio RLE")
        chunk = self.bits[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def read(self, n: int) -> int:
        return int(self._take(n).astype(np.int64) @ self.WEIGHTS[n])

    def words(self, k: int, n: int) -> np.ndarray:
        return self._take(k * n).reshape(k, n).astype(np.int64) @ self.WEIGHTS[n]
