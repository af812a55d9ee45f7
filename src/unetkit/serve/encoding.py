"""Bytes in and out of the service: upload decoding with limits (format sniffed from magic bytes,
pixel count read from the header before any pixel is decoded) and PNG/TIFF encoding.

Before decoding, `inspect_upload` reads the header: width x height against `max_pixels`, and for a
TIFF every page: pages x samples x depth (the channels) against `max_channels`, a 4-D layout (several
pages of several samples, or volumetric pages) refused, so a few KB of compressed pages never expand
to gigabytes. Pillow opens only the sniffed format (`Image.open(formats=...)`).

COCO RLE and polygons come from `unetkit.inference.vectorize`, so a mask is encoded one way
everywhere."""

from __future__ import annotations

import io
import warnings

import numpy as np

from unetkit.data.io import PILLOW_FORMATS as READABLE
from unetkit.data.io import decode_image
from unetkit.errors import DataError, InputError

# magic bytes -> format; anything else is refused as unsupported before any decoder sees it
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
    (b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
)


class UnsupportedImage(InputError):
    """Not an image format the server reads (HTTP 415)."""

    code = "unsupported_media_type"


class CorruptImage(InputError):
    """A known format that fails to decode: truncated, corrupt, wrong shape (HTTP 400)."""

    code = "invalid_image"


class ImageTooLarge(InputError):
    """More pixels than the server accepts (HTTP 413)."""

    code = "image_too_large"


PILLOW_FORMATS = {name.lower(): [name] for name in READABLE}  # a sniffed upload opens only as its own format
MAX_CHANNELS = 4  # pages x samples of an upload, unless the model takes more (see `inspect_upload`)


def sniff_format(data: bytes) -> str | None:
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def image_dimensions(data: bytes, fmt: str, max_channels: int = MAX_CHANNELS) -> tuple[int, int, int]:
    """(height, width, channels) from the header only, without decoding pixels. A TIFF's pages are
    read up to `max_channels` + 1 (its IFDs only); more channels than that: `ImageTooLarge`."""
    from PIL import Image

    try:
        if fmt == "tiff":
            return _tiff_dimensions(data, max_channels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=PILLOW_FORMATS[fmt]) as im:
                return int(im.height), int(im.width), len(im.getbands())
    except (ImageTooLarge, CorruptImage):
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image refused as a possible decompression bomb ({e})") from None
    except Exception as e:  # noqa: BLE001 - any header failure means a corrupt file
        raise CorruptImage(f"{fmt.upper()} header unreadable ({type(e).__name__}: {str(e)[:200]})") from None


def _tiff_dimensions(data: bytes, max_channels: int) -> tuple[int, int, int]:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        first = tif.pages.first
        height, width, samples = int(first.imagelength), int(first.imagewidth), int(first.samplesperpixel)
        pages = 0
        for page in tif.pages:  # parses IFDs (tags) only, stopping once past the limit
            pages += 1
            if pages * samples > max_channels:
                break
            shape = (int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel), int(page.imagedepth))
            if shape != (height, width, samples, 1):
                raise CorruptImage(f"TIFF page {pages} is {shape[1]}x{shape[0]}x{shape[2]} samples (depth {shape[3]}); "
                                   f"expected every page {width}x{height}x{samples}: a 2-D image, its pages the channels")
    if pages > 1 and samples > 1:
        raise CorruptImage(f"TIFF with {pages}+ pages of {samples} samples is not a 2-D image (4-D layouts are refused)")
    if pages * samples > max_channels:
        raise ImageTooLarge(f"TIFF holds more than {max_channels} channels ({pages}+ pages x {samples} samples of "
                            f"{width}x{height}); the server reads at most {max_channels} (pages x samples)")
    return height, width, pages * samples


def inspect_upload(data: bytes, name: str, max_pixels: int, max_channels: int = MAX_CHANNELS) -> tuple[int, int, int]:
    """(height, width, channels) of an upload from its header, or `UnsupportedImage`/`CorruptImage`/`ImageTooLarge`."""
    if not data:
        raise CorruptImage(f"{name}: empty body; send the image bytes (multipart field 'file' or the raw body)")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImage(f"{name}: not a PNG, JPEG, TIFF, GIF or BMP image (first bytes {bytes(data[:8])!r})")
    height, width, channels = image_dimensions(data, fmt, max_channels)
    if height * width > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} = {height * width:,} pixels exceeds max_pixels ({max_pixels:,})")
    if height <= 0 or width <= 0:
        raise CorruptImage(f"{name}: image has no pixels ({width}x{height})")
    return height, width, channels


def decode_upload(data: bytes, name: str, max_pixels: int, max_channels: int = MAX_CHANNELS) -> np.ndarray:
    """An uploaded file as `(C, H, W)` float32, or `UnsupportedImage`/`CorruptImage`/`ImageTooLarge`."""
    inspect_upload(data, name, max_pixels, max_channels)
    try:
        image = decode_image(data, name, max_pixels=max_pixels)
    except DataError as e:
        raise CorruptImage(str(e)) from None
    except Exception as e:  # noqa: BLE001 - decoders raise many things on hostile input
        raise CorruptImage(f"{name}: cannot decode ({type(e).__name__}: {str(e)[:200]})") from None
    if image.ndim != 3 or image.shape[1] * image.shape[2] > max_pixels:
        raise CorruptImage(f"{name}: decoded to shape {image.shape}; expected a 2-D image")
    if not np.isfinite(image).all():
        raise CorruptImage(f"{name}: image holds NaN or infinite values")
    return image


def png_bytes(array: np.ndarray) -> bytes:
    """(H, W) uint8/uint16 or (H, W, 3|4) uint8 as PNG bytes (fast compression)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def tiff_bytes(probabilities: np.ndarray) -> bytes:
    """(K, H, W) float32 probabilities as a planar TIFF (one page per class)."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, probabilities.astype(np.float32), photometric="minisblack", planarconfig="separate")
    return buffer.getvalue()

