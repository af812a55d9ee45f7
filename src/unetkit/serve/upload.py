"""Reading an upload: the body of POST /v1/segment, under limits, on the event loop.

- The content type is checked before any byte is read: an image type (`image/*`), raw bytes
  (`application/octet-stream`, or none) or `multipart/form-data` with the image in field `file`.
  The types a cross-site HTML form sends on its own (`application/x-www-form-urlencoded`,
  `text/plain`) are refused (415), and so is any request a browser marks `Sec-Fetch-Site: cross-site` (403).
- Size: a declared Content-Length over `max_body_bytes` is refused at once, and a streamed (chunked)
  body as soon as it passes the limit; both 413 with `Connection: close`, so the rest is not read.
- Time: the whole body must arrive within `body_timeout_seconds` (and the request's deadline), else 408.
- Memory: the bytes kept are charged to the process-wide `BodyBudget` (`max_inflight_body_bytes`) as they
  arrive, and given back when the request ends; a chunk that does not fit gets 503. A multipart body is
  parsed as it streams in (python-multipart), keeping only the file's bytes: each body is held once.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field
from typing import Any

from unetkit.config import ServeConfig
from unetkit.serve.batching import QueueFull
from unetkit.serve.encoding import CorruptImage, UnsupportedImage
from unetkit.serve.errors import BodyTimeout, BodyTooLarge, Forbidden

try:
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.requests import ClientDisconnect, Request
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"unetkit serve needs the web extra ({e.name} is missing): pip install 'unetkit[serve]'") from None

RAW_TYPES = ("", "application/octet-stream")  # besides image/*
MAX_PARTS = 16


class BodyBudget:
    """Bytes of request bodies held in memory at once. Used on the event loop only (no lock)."""

    def __init__(self, capacity: int, retry_after: float = 1.0) -> None:
        self.capacity, self.retry_after = capacity, retry_after
        self.used = 0

    def take(self, n: int) -> None:
        if self.used + n > self.capacity:
            raise QueueFull(f"server busy: {self.used:,} bytes of request bodies in memory "
                            f"(max_inflight_body_bytes {self.capacity:,})", self.retry_after)
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


@dataclass
class Upload:
    name: str  # the client's file name (messages only)
    budget: BodyBudget
    data: bytes = b""  # the whole image, once read
    charged: int = 0
    _buffer: io.BytesIO = field(default_factory=io.BytesIO, repr=False)
    _released: bool = field(default=False, repr=False)

    def keep(self, chunk: bytes) -> None:
        self.budget.take(len(chunk))
        self.charged += len(chunk)
        self._buffer.write(chunk)

    def finish(self) -> None:
        self.data = self._buffer.getvalue()  # shares the buffer's memory: no second copy of the body
        self._buffer = io.BytesIO()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.budget.give(self.charged)


def check_request(request: Request) -> str:
    """The upload's media type, or Forbidden/UnsupportedImage before any body byte is read."""
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        raise Forbidden("cross-site browser requests are refused; call the API from the server's own page or a client")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind in RAW_TYPES or kind == "multipart/form-data"):
        raise UnsupportedImage(f"content type {kind!r}: send an image (image/*, application/octet-stream or "
                               "multipart/form-data with field 'file')")
    return kind


async def read_upload(request: Request, config: ServeConfig, budget: BodyBudget, deadline: float) -> Upload:
    """The image bytes and a name for messages, from a multipart field or the raw body (see the module doc)."""
    kind = check_request(request)
    limit = config.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {int(declared):,} bytes exceeds max_body_bytes ({limit:,})")
    upload = Upload(request.headers.get("x-filename", "body")[:200], budget)
    timeout = max(0.0, min(config.body_timeout_seconds, deadline - time.monotonic()))
    try:
        async with asyncio.timeout(timeout):
            if kind == "multipart/form-data":
                await _read_multipart(request, limit, upload)
            else:
                async for chunk in _limited(request, limit):
                    upload.keep(chunk)
    except TimeoutError:
        upload.release()
        raise BodyTimeout(f"the body did not arrive within {timeout:g} s (body_timeout_seconds)") from None
    except BaseException:
        upload.release()
        raise
    upload.finish()
    return upload


async def _limited(request: Request, limit: int) -> Any:
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body exceeds max_body_bytes ({limit:,} bytes)")
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise CorruptImage("client disconnected before sending the whole body") from None


async def _read_multipart(request: Request, limit: int, upload: Upload) -> None:
    """Stream the body through python-multipart, keeping only field `file`'s bytes."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise CorruptImage("malformed multipart body: no boundary in the Content-Type")
    part: dict[str, Any] = {}
    found: dict[str, Any] = {"file": False, "parts": 0, "ended": False, "error": None}

    def on_part_begin() -> None:
        found["parts"] += 1
        if found["parts"] > MAX_PARTS:
            raise CorruptImage(f"malformed multipart body: more than {MAX_PARTS} parts")
        part.clear()
        part.update(field=b"", value=b"", headers={}, is_file=False)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part["field"] = part["value"] = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["is_file"] = options.get(b"name") == b"file" and not found["file"]
        if part["is_file"]:
            found["file"] = True
            name = options.get(b"filename", b"").decode("utf-8", "replace")
            upload.name = name[:200] or "upload"

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.get("is_file"):
            upload.keep(data[start:end])

    def on_end() -> None:
        found["ended"] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_end": on_end,
    }, max_header_count=16, max_header_size=4096)
    async for chunk in _limited(request, limit):
        try:
            parser.write(chunk)
        except (CorruptImage, QueueFull):
            raise
        except Exception as e:  # noqa: BLE001 - python-multipart's parse errors
            raise CorruptImage(f"malformed multipart body: {e}") from None
    try:
        parser.finalize()
    except Exception as e:  # noqa: BLE001
        raise CorruptImage(f"malformed multipart body: {e}") from None
    if not found["ended"]:
        raise CorruptImage("malformed multipart body: it ends before the closing boundary")
    if not found["file"]:
        raise CorruptImage("multipart body has no file field named 'file'")
