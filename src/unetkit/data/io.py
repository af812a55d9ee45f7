"""Read and write images and masks as published (PNG, JPEG, TIFF, GIF, BMP), numpy only.

- `read_image(path) -> (C, H, W) float32` in the file's own units (0-255, 0-65535, floats as stored).
  An alpha channel (RGBA, LA) is dropped; palette images are expanded to RGB.
- `read_mask(path) -> (H, W)` raw values (palette indices for P-mode, gray values for L) or
  `(H, W, 3) uint8` for colour-coded masks. Palettes are never converted to colours.
- `write_png`, `write_tiff`, `write_text_atomic`, `write_bytes_atomic`: durable and all or nothing
  (`atomic.atomic_write`: a unique temp name in the same folder, fsync, rename, fsync of the folder).

TIFF goes through tifffile (16-bit, multi-channel, LZW via imagecodecs), with Pillow as fallback.
Every failure is a `DataError` naming the file and what is wrong. `max_pixels` guards against
decompression bombs: the size is read from the header before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from unetkit.data.atomic import atomic_write
from unetkit.errors import DataError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".gif", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_MAX_PIXELS = 100_000_000  # below Pillow's own bomb threshold, so our message is the one users see
MAX_CHANNELS = 64  # a TIFF holds at most this many channels (pages x samples) per pixel; checked before decoding
PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "GIF", "BMP")  # what Pillow may open: the IMAGE_SUFFIXES formats


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES and not Path(path).name.startswith(".")


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image as `(C, H, W)` float32 in the file's own intensity units."""
    path = Path(path)
    array = _read(path, max_pixels, _pillow_image_array)
    if array.ndim == 2:
        array = array[None]
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array, dtype=np.float32)


def read_image_stack(paths: Sequence[str | Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Images of one sample stored one file per channel (nnU-Net's `_0000`, `_0001`), stacked `(C, H, W)`."""
    arrays = [read_image(p, max_pixels) for p in paths]
    for p, a in zip(paths[1:], arrays[1:], strict=True):
        if a.shape[1:] != arrays[0].shape[1:]:
            raise DataError(
                f"{p}: size {a.shape[2]}x{a.shape[1]} does not match {Path(paths[0]).name} "
                f"({arrays[0].shape[2]}x{arrays[0].shape[1]}); expected every channel file the same size"
            )
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def decode_image(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """`read_image` for encoded bytes (an HTTP upload), in memory: `(C, H, W)` float32. `name` (the
    upload's file name) is what error messages show; the bytes decide the format."""
    tiff = data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    array = _decode(bytes(data), name, tiff, max_pixels, _pillow_image_array)
    array = array[None] if array.ndim == 2 else array
    return np.ascontiguousarray(array.astype(np.uint8) if array.dtype == bool else array, dtype=np.float32)


def read_mask(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Raw mask values: `(H, W)` integers, or `(H, W, 3) uint8` for a colour-coded mask."""
    path = Path(path)
    array = _read(path, max_pixels, _pillow_mask_array)
    if array.ndim == 3:
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        if array.dtype != np.uint8:
            raise DataError(f"{path}: colour mask has dtype {array.dtype}; expected 8-bit RGB")
        array = array[..., :3]
    elif array.ndim != 2:
        raise DataError(f"{path}: mask has shape {array.shape}; expected (H, W) values or (H, W, 3) colours")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)) or array.min() < 0:
            raise DataError(f"{path}: mask holds non-integer values; expected class values")
        array = array.astype(np.uint16 if array.max() > 255 else np.uint8)
    return np.ascontiguousarray(array)


def read_palette(path: str | Path) -> np.ndarray | None:
    """The `(N, 3)` uint8 palette of a P-mode image, or None when the file has no palette."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "PA"):
                return None
            palette = im.getpalette() or []
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)


def image_size(path: str | Path) -> tuple[int, int]:
    """`(H, W)` from the file header, without decoding the pixels."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return int(page.imagelength), int(page.imagewidth)
        except Exception:  # noqa: BLE001 - fall back to Pillow below
            pass
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image header ({e})") from None


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, before any pixel is decoded: size, channels, and whether it is
    stored in chunks (TIFF tiles or several strips) that can be read a band of rows at a time."""

    height: int
    width: int
    channels: int
    chunked: bool
    format: str


def image_header(path: str | Path) -> ImageHeader:
    """The header of an image file (TIFF through tifffile, the rest through Pillow); a
    `DataError` naming the file when it cannot be read, or when Pillow refuses it as a bomb."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            with tifffile.TiffFile(path) as tif:
                series, page = tif.series[0], tif.pages.first
                sizes = dict(zip(series.axes, series.shape, strict=True))
                channels = int(np.prod([n for a, n in sizes.items() if a not in "YX"] or [1]))
                chunked = bool(page.is_tiled or len(page.dataoffsets) > 1)
                return ImageHeader(int(sizes.get("Y", 1)), int(sizes.get("X", 1)), channels, chunked, "TIFF")
        except Exception:  # noqa: BLE001 - fall back to Pillow below
            pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=PILLOW_FORMATS) as im:
                return ImageHeader(im.height, im.width, len(im.getbands()), False, str(im.format))
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image header ({e})") from None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- writing


def write_png(path: str | Path, array: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write an index mask `(H, W)` (uint8/uint16; with `palette` an `(N, 3)` colour table: a
    P-mode PNG) or a colour image `(H, W, 3|4)` uint8. Atomic."""
    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 2 and array.dtype == np.uint8:
        im = Image.fromarray(array, "P" if palette is not None else "L")
        if palette is not None:
            im.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    elif array.ndim == 2 and array.dtype == np.uint16 and palette is None:
        im = Image.fromarray(array)
    elif array.ndim == 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8 and palette is None:
        im = Image.fromarray(array, "RGB" if array.shape[-1] == 3 else "RGBA")
    else:
        raise DataError(
            f"{path}: cannot write {array.dtype} array of shape {array.shape} as PNG; expected (H, W) "
            "uint8/uint16, (H, W) uint8 with a palette, or (H, W, 3|4) uint8"
        )
    return atomic_write(path, lambda tmp: im.save(tmp, format="PNG"))


def write_tiff(path: str | Path, array: np.ndarray, compression: str | None = "zlib") -> Path:
    """Write `(H, W)`, `(H, W, 3)` RGB or `(C, H, W)` planar (e.g. float32 probabilities). Atomic."""
    path = Path(path)
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: cannot write an array of shape {array.shape} as TIFF; expected 2-D or 3-D")
    rgb = array.ndim == 3 and array.shape[-1] == 3 and array.dtype in (np.uint8, np.uint16)
    photometric = "rgb" if rgb else "minisblack"
    planar = None if array.ndim == 2 or rgb else "separate"
    return atomic_write(
        path,
        lambda tmp: tifffile.imwrite(
            tmp, array, photometric=photometric, planarconfig=planar, compression=compression
        ),
    )


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a small text file (JSON, CSV) atomically."""
    return atomic_write(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write bytes (a copied image file, a zip archive) atomically."""
    return atomic_write(path, data)


# ---------------------------------------------------------------- decoding


def _read(
    path: Path, max_pixels: int, pillow_array: Callable[[Image.Image, bytes | Path], np.ndarray]
) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return _decode(path, path, path.suffix.lower() in TIFF_SUFFIXES, max_pixels, pillow_array)


def _decode(
    source: Path | bytes,
    name: str | Path,
    tiff: bool,
    max_pixels: int,
    pillow_array: Callable[[Image.Image, bytes | Path], np.ndarray],
) -> np.ndarray:
    path = name
    opened = source if isinstance(source, Path) else io.BytesIO(source)
    errors = []
    if tiff:
        try:
            return _tifffile_array(opened, name, max_pixels)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure: try Pillow, report both
            errors.append(f"tifffile: {e}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bombs are checked below; corrupt files raise
            with Image.open(opened, formats=PILLOW_FORMATS) as im:
                _check_pixels(path, im.height, im.width, max_pixels)
                return pillow_array(im, source)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt files
        message = str(e).replace(f" {opened!r}", "")  # Pillow names the in-memory buffer
        errors.append(f"Pillow: {message}" if errors else message)
    raise DataError(f"{path}: unreadable or corrupt image ({'; '.join(errors)})")


def _check_pixels(path: str | Path, height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise DataError(
            f"{path}: {width}x{height} = {height * width:,} pixels exceeds the limit of {max_pixels:,} "
            "(a guard against decompression bombs); raise max_pixels to read larger images"
        )


def _tifffile_array(source: Path | io.BytesIO, path: str | Path, max_pixels: int) -> np.ndarray:
    with tifffile.TiffFile(source) as tif:
        series = tif.series[0]
        sizes = dict(zip(series.axes, series.shape, strict=True))
        _check_pixels(path, sizes.get("Y", 1), sizes.get("X", 1), max_pixels)
        extra = [a for a, n in zip(series.axes, series.shape, strict=True) if a not in "YX" and n != 1]
        if len(extra) > 1:  # refused from the header: pages x samples, volumes and time series are not 2-D images
            raise DataError(f"{path}: TIFF with axes {series.axes} and shape {series.shape}; expected a 2-D image")
        channels = int(np.prod([sizes[a] for a in extra]))
        if channels > MAX_CHANNELS:
            raise DataError(f"{path}: TIFF with {channels:,} channels ({series.axes} {series.shape}) exceeds the limit of "
                            f"{MAX_CHANNELS} (checked before decoding, a guard against decompression bombs)")
        array = series.asarray()
    keep = [i for i, a in enumerate(series.axes) if a in "YX" or array.shape[i] != 1]
    axes = "".join(series.axes[i] for i in keep)
    array = array.reshape([array.shape[i] for i in keep])
    if axes == "YX" or (len(axes) == 3 and axes.endswith("YX")):
        return array  # (H, W) or (C, H, W): pages or planar samples are channels
    if len(axes) == 3 and axes.startswith("YX"):
        return np.moveaxis(array, -1, 0)  # (H, W, S) contiguous samples
    raise DataError(f"{path}: TIFF with axes {series.axes} and shape {series.shape}; expected a 2-D image")


def _pillow_image_array(im: Image.Image, source: bytes | Path) -> np.ndarray:
    if im.format == "PNG" and im.mode in ("RGB", "RGBA"):
        data = source if isinstance(source, bytes) else source.read_bytes()
        if _png_bit_depth(data) == 16:  # Pillow reduces 16-bit RGB to 8 bits
            import imagecodecs

            return np.moveaxis(imagecodecs.png_decode(data)[..., :3], -1, 0)
    if im.mode in ("P", "PA"):
        im = im.convert("RGB")
    elif im.mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif im.mode == "LA":
        im = im.convert("L")
    return _channels_first(np.asarray(im))


def _pillow_mask_array(im: Image.Image, source: bytes | Path) -> np.ndarray:
    if im.mode == "PA":
        im = im.convert("P")
    elif im.mode == "LA":
        im = im.convert("L")
    elif im.mode in ("RGBA", "CMYK", "YCbCr"):
        im = im.convert("RGB")
    array = np.asarray(im)
    if array.dtype.kind == "i" and array.min() >= 0 and array.max() <= 65535:
        array = array.astype(np.uint16)
    return _channels_first(array)


def _channels_first(array: np.ndarray) -> np.ndarray:
    return np.moveaxis(array, -1, 0) if array.ndim == 3 else array


def _png_bit_depth(data: bytes) -> int:
    header = data[:25]
    return header[24] if len(header) == 25 and header[12:16] == b"IHDR" else 8
