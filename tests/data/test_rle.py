"""COCO and Label Studio run-length encodings: hand-made cases, round trips, decoders against
encoders written from the formats in the tests (and pycocotools when installed), malformed input."""

import numpy as np
import pytest

from tests import layout_fixtures as lf
from unetkit.data.rle import (
    brush_rle,
    brush_values,
    compress_rle,
    mask_to_rle,
    rle_counts_to_string,
    rle_string_to_counts,
    rle_to_mask,
)
from unetkit.errors import DataError


def test_rle_is_column_major_and_starts_with_zeros():
    centre = np.zeros((3, 3), np.uint8)
    centre[1, 1] = 1
    assert mask_to_rle(centre) == {"size": [3, 3], "counts": [4, 1, 4]}
    top_row = np.array([[1, 1], [0, 0]])  # column-major: 1 0 1 0 (row-major would be 1 1 0 0)
    assert mask_to_rle(top_row)["counts"] == [0, 1, 1, 1, 1]
    assert mask_to_rle(np.zeros((2, 3)))["counts"] == [6]
    assert mask_to_rle(np.ones((2, 3)))["counts"] == [0, 6]


@pytest.mark.parametrize(
    "counts, text",
    [
        ([4, 1, 4], "414"),
        ([0, 1, 1, 1, 1], "01100"),  # from the 4th count on, the difference to the count two before
        ([100], "T3"),  # 100 = 4 + 3*32: low group with continuation bit (4|32)+48 = 'T', then '3'
        ([5, 5, 5, 1], "555L"),  # 1 - 5 = -4: one group 28 (sign bit set) + 48 = 'L'
    ],
)
def test_compressed_string_matches_hand_encoded(counts, text):
    assert rle_counts_to_string(counts) == text
    assert rle_string_to_counts(text) == counts
    assert rle_string_to_counts(text.encode()) == counts


def test_rle_round_trip_random_masks(rng):
    for shape in [(1, 1), (7, 5), (64, 33)]:
        for p in (0.0, 0.1, 0.5, 1.0):
            mask = rng.random(shape) < p
            rle = mask_to_rle(mask)
            assert sum(rle["counts"]) == mask.size
            np.testing.assert_array_equal(rle_to_mask(rle), mask)
            compressed = compress_rle(rle)
            assert isinstance(compressed["counts"], str)
            np.testing.assert_array_equal(rle_to_mask(compressed), mask)
            assert rle_string_to_counts(compressed["counts"]) == rle["counts"]


def test_rle_refuses_wrong_size():
    with pytest.raises(DataError, match=r"RLE counts sum to 3 .*expected non-negative runs summing to 2x2 = 4"):
        rle_to_mask({"size": [2, 2], "counts": [3]})


def test_brush_rle_by_hand():
    # a 1 x 2 mask [set, unset] -> RGBA bytes 255 x 4, 0 x 4
    bits = (
        "00000000000000000000000000001000"  # 8 values
        "00111"  # word size 8 - 1
        "0010" "0011" "0111" "1111"  # run-length sizes 3, 4, 8, 16 (minus 1)
        "1" "00" "011" "11111111"  # a run (1) of size index 0 (3 bits): length 4 - 1, value 255
        "1" "00" "011" "00000000"  # the same for value 0
    )
    bits += "0" * (-len(bits) % 8)
    expected = [int(bits[i: i + 8], 2) for i in range(0, len(bits), 8)]
    assert brush_rle(np.array([[True, False]])) == expected


def test_brush_rle_round_trips_long_runs(rng):
    mask = np.zeros((300, 400), dtype=bool)  # a 480,000-byte run: split into 65,536-long pieces
    mask[100:140, 30:300] = rng.random((40, 270)) > 0.3
    decoded = brush_values(brush_rle(mask)).reshape(300, 400, 4)
    assert (decoded[..., 3] > 0).tolist() == mask.tolist()
    assert set(np.unique(decoded).tolist()) <= {0, 255}


def test_compressed_strings_of_long_runs_and_negative_differences_round_trip():
    blocky = np.zeros((300, 400), bool)
    blocky[10:290, 5:395] = True  # counts of several 5-bit groups, differences of both signs
    rle = mask_to_rle(blocky)
    assert rle_string_to_counts(compress_rle(rle)["counts"]) == rle["counts"]


def test_compressed_strings_of_any_counts_round_trip(rng):
    assert rle_string_to_counts("") == []
    for n in (1, 2, 3, 4, 5, 50):
        for high in (2, 1000, 2**40):
            counts = rng.integers(0, high, n).tolist()
            assert rle_string_to_counts(rle_counts_to_string(counts)) == counts


def test_rle_strings_and_masks_match_pycocotools(rng):
    cocomask = pytest.importorskip("pycocotools.mask", reason="optional differential reference")
    for _ in range(20):
        mask = rng.random((int(rng.integers(1, 60)), int(rng.integers(1, 60)))) < rng.uniform(0.05, 0.95)
        encoded = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert encoded["counts"].decode() == compress_rle(mask_to_rle(mask))["counts"]
        assert (rle_to_mask({"size": list(encoded["size"]), "counts": encoded["counts"].decode()}) == mask).all()


@pytest.mark.parametrize("rle, message", [
    ({"size": [10, 10], "counts": "0a~"}, r"x\.json: RLE counts string holds '~'; expected characters '0' to 'o'"),
    ({"size": [10, 10], "counts": "1T"}, r"RLE counts string ends inside a number; expected a complete COCO string"),
    ({"size": [10, 10], "counts": [50, -10, 60]}, r"RLE counts sum to 100 \(smallest -10\); expected non-negative"),
    ({"size": [10], "counts": [10]}, r"RLE size \[10\]; expected \[height, width\]"),
    ({"size": [1, 1], "counts": [1.0]}, r"RLE counts '\[1\.0\]'; expected a list of integers or a COCO string"),
])
def test_malformed_coco_rle_is_one_message(rle, message):
    with pytest.raises(DataError, match=message):
        rle_to_mask(rle, where="x.json")


def test_brush_decoder_reads_literal_and_repeated_chunks_of_an_independent_encoder(rng):
    for h, w, p in ((1, 1, 0.5), (7, 9, 0.5), (50, 40, 0.02), (300, 300, 0.5), (400, 500, 0.0)):
        mask = rng.random((h, w)) < p
        decoded = brush_values(lf.brush_rle(mask))  # the test's own encoder, literal chunks included
        assert (decoded.reshape(h, w, 4)[..., 3] == mask * 255).all()
        assert (brush_values(brush_rle(mask)) == decoded).all()  # and unetkit's, repeated chunks only


def test_malformed_brush_rle_is_one_message():
    good = lf.brush_rle(np.ones((4, 4), bool))
    with pytest.raises(DataError, match=r"t: brush RLE ends early \(bit \d+ of 40\); expected a complete"):
        brush_values(good[:5], "t")
    with pytest.raises(DataError, match=r"t: brush RLE holds 64 values; expected 100"):
        brush_values(good, "t", expected=100)
    with pytest.raises(DataError, match=r"t: brush RLE: expected a list of bytes 0-255"):
        brush_values([1, 300], "t")
