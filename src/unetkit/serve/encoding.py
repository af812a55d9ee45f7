"""Bytes in and out of the service: upload decoding with limits (format sniffed from magic bytes,
pixel count read from the header before any pixel is decoded) and PNG/TIFF encoding.

COCO RLE and polygons come from `unetkit.inference.vectorize`, so a mask is encoded one way
everywhere."""

from __future__ import annotations

import io
import warnings

import numpy as np

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


def sniff_format(data: bytes) -> str | None:
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def image_dimensions(data: bytes, fmt: str) -> tuple[int, int]:
    """(height, width) from the header only, without decoding pixels."""
    from PIL import Image

    try:
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages.first
                return int(page.imagelength), int(page.imagewidth)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return int(im.height), int(im.width)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image refused as a possible decompression bomb ({e})") from None
    except Exception as e:  # noqa: BLE001 - any header failure means a corrupt file
        raise CorruptImage(f"{fmt.upper()} header unreadable ({type(e).__name__}: {str(e)[:200]})") from None


def inspect_upload(data: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    """(height, width) of an upload from its header, or `UnsupportedImage`/`CorruptImage`/`ImageTooLarge`."""
    if not data:
        raise CorruptImage(f"{name}: empty body; send the image bytes (multipart field 'file' or the raw body)")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImage(f"{name}: not a PNG, JPEG, TIFF, GIF or BMP image (first bytes {data[:8]!r})")
    height, width = image_dimensions(data, fmt)
    if height * width > max_pixels:
        raise ImageTooLarge(f"{name}: {width}x{height} = {height * width:,} pixels exceeds the limit of {max_pixels:,}")
    if height <= 0 or width <= 0:
        raise CorruptImage(f"{name}: image has no pixels ({width}x{height})")
    return height, width


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """An uploaded file as `(C, H, W)` float32, or `UnsupportedImage`/`CorruptImage`/`ImageTooLarge`."""
    inspect_upload(data, name, max_pixels)
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

