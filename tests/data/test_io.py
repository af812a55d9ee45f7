from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from unetkit.data.io import (
    decode_image,
    image_size,
    read_image,
    read_mask,
    read_palette,
    write_png,
    write_text_atomic,
    write_tiff,
)
from unetkit.errors import DataError


def test_rgb_png_is_channels_first_float32_in_file_units(tmp_path: Path, rng) -> None:
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", rgb)
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == (3, 7, 9)
    np.testing.assert_array_equal(image, np.moveaxis(rgb, -1, 0))


def test_16bit_gray_tiff_and_png_keep_their_units(tmp_path: Path, rng) -> None:
    gray = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
    write_tiff(tmp_path / "a.tif", gray)
    write_png(tmp_path / "a.png", gray)
    for name in ("a.tif", "a.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (1, 6, 5)
        np.testing.assert_array_equal(image[0], gray)


def test_16bit_rgb_png_is_not_reduced_to_8_bits(tmp_path: Path, rng) -> None:
    rgb = rng.integers(256, 65536, (4, 6, 3), dtype=np.uint16)
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(rgb))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), np.moveaxis(rgb, -1, 0))


def test_multichannel_float_tiff_round_trips(tmp_path: Path, rng) -> None:
    stack = rng.normal(size=(5, 8, 7)).astype(np.float32)
    write_tiff(tmp_path / "p.tif", stack)
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), stack)


def test_rgb_lzw_tiff_and_planar_tiff(tmp_path: Path, rng) -> None:
    rgb = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    write_tiff(tmp_path / "c.tif", rgb, compression="lzw")
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"
    )
    for name in ("c.tif", "planar.tif"):
        np.testing.assert_array_equal(read_image(tmp_path / name), np.moveaxis(rgb, -1, 0))
    assert read_mask(tmp_path / "c.tif").shape == (8, 6, 3)
    assert image_size(tmp_path / "c.tif") == (8, 6)


def test_palette_mask_gives_indices_not_colours(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = np.array([[0, 0, 0], [200, 10, 10], [10, 200, 10]], np.uint8)
    write_png(tmp_path / "m.png", indices, palette=palette)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), indices)
    np.testing.assert_array_equal(read_palette(tmp_path / "m.png")[:3], palette)
    assert read_image(tmp_path / "m.png").shape == (3, 2, 3)  # as an image, colours
    assert read_palette(tmp_path / "m.png") is not None
    write_png(tmp_path / "g.png", indices)
    assert read_palette(tmp_path / "g.png") is None


def test_gray_gif_and_rgb_colour_masks(tmp_path: Path) -> None:
    gray = np.array([[0, 255], [255, 0]], np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "m.gif", optimize=False)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.gif"), gray)
    colours = np.zeros((3, 4, 3), np.uint8)
    colours[1, 2] = (255, 0, 0)
    write_png(tmp_path / "c.png", colours)
    mask = read_mask(tmp_path / "c.png")
    assert mask.dtype == np.uint8 and mask.shape == (3, 4, 3)
    np.testing.assert_array_equal(mask, colours)


def test_rgba_image_drops_alpha_and_jpeg_reads(tmp_path: Path, rng) -> None:
    rgba = rng.integers(0, 256, (5, 5, 4), dtype=np.uint8)
    write_png(tmp_path / "a.png", rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), np.moveaxis(rgba[..., :3], -1, 0))
    Image.fromarray(rgba[..., 0], "L").save(tmp_path / "g.jpg")
    assert read_image(tmp_path / "g.jpg").shape == (1, 5, 5)


def test_missing_and_corrupt_files_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"bad\.png: unreadable or corrupt image"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match=r"bad\.tif: unreadable or corrupt image \(tifffile: .*Pillow: "):
        read_mask(tmp_path / "bad.tif")


def test_pixel_limit_guards_against_decompression_bombs(tmp_path: Path) -> None:
    write_png(tmp_path / "big.png", np.zeros((100, 120), np.uint8))
    write_tiff(tmp_path / "big.tif", np.zeros((100, 120), np.uint8))
    for name in ("big.png", "big.tif"):
        with pytest.raises(DataError, match=rf"{name}: 120x100 = 12,000 pixels exceeds the limit of 5,000"):
            read_image(tmp_path / name, max_pixels=5000)
    assert read_image(tmp_path / "big.png", max_pixels=12_000).shape == (1, 100, 120)


def test_float_masks_must_hold_integers(tmp_path: Path) -> None:
    write_tiff(tmp_path / "ok.tif", np.array([[0.0, 3.0]], np.float32))
    np.testing.assert_array_equal(read_mask(tmp_path / "ok.tif"), [[0, 3]])
    write_tiff(tmp_path / "bad.tif", np.array([[0.0, 0.5]], np.float32))
    with pytest.raises(DataError, match=r"bad\.tif: mask holds non-integer values"):
        read_mask(tmp_path / "bad.tif")


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "out" / "m.png"
    write_png(target, np.ones((3, 3), np.uint8))
    write_text_atomic(tmp_path / "out" / "x.json", "{}")
    with pytest.raises(DataError, match=r"m\.png: cannot write float64 array"):
        write_png(target, np.ones((3, 3)))  # refused: the old file stays intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.png", "x.json"]
    np.testing.assert_array_equal(read_mask(target), np.ones((3, 3)))
    assert (target.stat().st_mode & 0o777) != 0o600


def test_decode_image_from_bytes_matches_the_file_reader(tmp_path: Path, rng) -> None:
    rgb = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    write_tiff(tmp_path / "c.tif", rgb, compression="lzw")
    write_png(tmp_path / "c.png", rgb)
    for name in ("c.tif", "c.png"):
        data = (tmp_path / name).read_bytes()
        np.testing.assert_array_equal(decode_image(data, name), read_image(tmp_path / name))
    with pytest.raises(
        DataError, match=r"^upload\.png: unreadable or corrupt image \(cannot identify image file\)"
    ):
        decode_image(b"nonsense", "upload.png")
