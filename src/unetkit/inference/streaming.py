"""Gigapixel inference in bounded memory: lazy reads, stripe-wise prediction, incremental writes.

The source (BigTIFF / tiled TIFF / OME-TIFF through tifffile's zarr view, or a zarr array) is read
one stripe of tile rows at a time; `predict.iter_probability_rows` turns each stripe into finished
probability rows (the same code `predict_tiled` runs, so both give the same numbers); the rows are
cut into bands of the output tile height and written as they complete to a tiled BigTIFF (tifffile
consuming a generator of tiles, in a writer thread) or a zarr store. Peak memory depends on tile,
batch and image *width*, never on the image height; `estimate_memory` says how much before a run.
"""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.config import TileConfig
from unetkit.errors import InputError
from unetkit.inference.predict import Predictor, check_channels, iter_probability_rows, resolve_tile_size

PROBABILITY_DTYPES = ("float16", "uint8", "float32")


@dataclass
class LazyImage:
    """A `(C, H, W)` view of a lazily read array with axes `axes` (Y, X and optionally C or S)."""

    array: Any
    axes: str
    closer: Any = None

    @property
    def shape(self) -> tuple[int, int, int]:
        size = dict(zip(self.axes, self.array.shape, strict=True))
        return (size.get("C", size.get("S", 1)), size["Y"], size["X"])

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        rows = np.asarray(self.array[(slice(None),) * self.axes.index("Y") + (slice(y0, y1),)])
        order = sorted(range(len(self.axes)), key=lambda i: "YX".find(self.axes[i]))  # C/S and size-1 axes first
        rows = rows.transpose(order).reshape(-1, y1 - y0, rows.shape[self.axes.index("X")])
        if rows.dtype.kind == "f" and not np.isfinite(rows).all():
            raise InputError(f"image rows {y0}-{y1} contain NaN/inf values; expected finite intensities")
        return rows.astype(np.float32, copy=False)

    def close(self) -> None:
        if self.closer is not None:
            self.closer.close()


def open_lazy(source: Any) -> LazyImage:
    """A lazy `(C, H, W)` view of a TIFF/OME-TIFF path, a `.zarr` path, a zarr or numpy array."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise InputError(f"{path}: image file not found")
        if path.is_dir() or path.suffix == ".zarr":
            import zarr

            return _from_array(zarr.open_array(str(path), mode="r"), str(path))
        import tifffile
        import zarr

        try:
            tif = tifffile.TiffFile(str(path))
        except Exception as e:
            raise InputError(f"{path}: not a readable TIFF ({e})") from None
        series = tif.series[0]
        array = zarr.open(series.aszarr(level=0), mode="r")
        axes = series.axes
        keep = [i for i, a in enumerate(axes) if a in "YXCS" or series.shape[i] > 1]
        if len(keep) != len(axes) or not set(axes[i] for i in keep) <= set("YXCS") or "C" in axes and "S" in axes:
            tif.close()
            raise InputError(f"{path}: axes {axes} {series.shape}; expected a 2D image (Y, X with optional channels)")
        return LazyImage(array, axes, closer=tif)
    return _from_array(source, type(source).__name__)


def _from_array(array: Any, name: str) -> LazyImage:
    ndim = len(array.shape)
    if ndim not in (2, 3):
        raise InputError(f"{name}: shape {tuple(array.shape)}; expected (H, W) or (C, H, W)")
    return LazyImage(array, "YX" if ndim == 2 else "CYX")


# ---------------------------------------------------------------- memory


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def __str__(self) -> str:
        lines = [f"  {name:<22} {size / 2**20:10.1f} MiB" for name, size in self.parts.items()]
        return "\n".join(["estimated peak memory:", *lines, f"  {'total':<22} {self.total / 2**20:10.1f} MiB"])


def estimate_memory(
    image_shape: tuple[int, int, int], out_channels: int, config: TileConfig, tile: tuple[int, int], *,
    probabilities_dtype: str | None = None, out_tile: int = 256, model_bytes_per_pixel: int = 1024,
    source_itemsize: int = 4,
) -> MemoryEstimate:
    """Bytes a streaming run needs: stripes, accumulators, tile batches, model activations (a
    rough `model_bytes_per_pixel` of the batch, ~1 KiB for a 32-wide U-Net in eager PyTorch) and
    output bands. Grows with the image width, not its height."""
    c, _, w = image_shape
    th, tw = tile
    wp, n, k = max(w, tw), config.batch_size, out_channels
    prob_item = np.dtype(probabilities_dtype).itemsize if probabilities_dtype else 0
    label_item = 1 if k <= 255 else 2
    return MemoryEstimate({
        "source rows": (th + 2 * out_tile) * w * c * max(source_itemsize, 4),
        "input stripe": 2 * c * th * wp * 4,
        "accumulator": 2 * (k + 1) * th * wp * 4,
        "tile batch": n * (c + (3 if config.tta else 2) * k) * th * tw * 4,
        "model activations": n * th * tw * model_bytes_per_pixel,
        "output bands": 5 * out_tile * wp * (label_item + k * prob_item + k * 4),
    })


# ---------------------------------------------------------------- writing


class _TiffSink:
    """Writes bands of rows to a tiled BigTIFF: tifffile consumes a tile generator in a thread."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, tile: int, compression: str | None) -> None:
        import tifffile

        self.path, self.tmp, self.tile, self.width = path, path.with_name(path.name + ".partial"), tile, shape[1]
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        kwargs = dict(shape=shape, dtype=dtype, tile=(tile, tile), bigtiff=True, photometric="minisblack",
                      compression=compression, planarconfig="contig" if len(shape) == 3 else None)

        def run() -> None:
            try:
                tifffile.imwrite(self.tmp, data=self._tiles(), **kwargs)
            except BaseException as e:  # reported to the producer on its next put/close
                self.error = e

        self.thread = threading.Thread(target=run, name=f"tiff-writer-{path.name}", daemon=True)
        self.thread.start()

    def _tiles(self) -> Iterator[np.ndarray]:
        while (band := self.queue.get()) is not None:
            for x in range(0, self.width, self.tile):
                yield band[:, x : x + self.tile]

    def write(self, band: np.ndarray) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.queue.put(band, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self, ok: bool) -> None:
        if self.thread.is_alive():
            self.queue.put(None)  # the writer stops reading; a short file is discarded below
        self.thread.join()
        if ok and self.error is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)
            if ok and self.error is not None:
                raise self.error


class _ZarrSink:
    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, tile: int, compression: str | None) -> None:
        import zarr

        self.path, self.tmp, self.y = path, path.with_name(path.name + ".partial"), 0
        chunks = (tile, tile) + tuple(shape[2:])
        self.array = zarr.create_array(store=str(self.tmp), shape=shape, chunks=chunks, dtype=dtype, overwrite=True)

    def write(self, band: np.ndarray) -> None:
        self.array[self.y : self.y + band.shape[0]] = band
        self.y += band.shape[0]

    def close(self, ok: bool) -> None:
        if ok:
            if self.path.exists():
                shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
            self.tmp.replace(self.path)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _sink(path: Path, shape: tuple[int, ...], dtype: Any, tile: int, compression: str | None) -> Any:
    if path.suffix.lower() in (".tif", ".tiff"):
        return _TiffSink(path, shape, dtype, tile, compression)
    if path.suffix.lower() == ".zarr":
        return _ZarrSink(path, shape, dtype, tile, compression)
    raise InputError(f"{path}: unsupported output; expected a .tif/.tiff or .zarr path")


class _Bands:
    """Regroups row blocks of any height into bands of `height` rows (the last may be shorter)."""

    def __init__(self, sink: Any, height: int) -> None:
        self.sink, self.height, self.parts, self.rows = sink, height, [], 0

    def add(self, rows: np.ndarray) -> None:
        self.parts.append(rows)
        self.rows += rows.shape[0]
        while self.rows >= self.height:
            merged = np.concatenate(self.parts)
            self.sink.write(merged[: self.height])
            rest = merged[self.height :]
            self.parts, self.rows = ([rest] if len(rest) else []), len(rest)

    def flush(self) -> None:
        if self.rows:
            self.sink.write(np.concatenate(self.parts))
            self.parts, self.rows = [], 0


# ---------------------------------------------------------------- the run


def predict_stream(
    predictor: Predictor, source: Any, labels_path: str | Path, config: TileConfig, *,
    probabilities_path: str | Path | None = None, probabilities_dtype: str = "float16",
    out_tile: int = 256, compression: str | None = "zlib", max_memory: int | None = None, verbose: bool = False,
) -> MemoryEstimate:
    """Predict `source` stripe by stripe; write the label map (argmax, uint8) to `labels_path` and,
    optionally, `(H, W, K)` probabilities (float16, float32 or uint8 = round(255 p)) to
    `probabilities_path`. Outputs are `.tif`/`.tiff` (tiled BigTIFF) or `.zarr`, written under a
    `.partial` name and renamed when complete. Refuses to start when the estimate exceeds
    `max_memory` bytes. Returns the memory estimate."""
    if probabilities_dtype not in PROBABILITY_DTYPES:
        raise InputError(f"probabilities_dtype '{probabilities_dtype}': expected one of {list(PROBABILITY_DTYPES)}")
    image = open_lazy(source)
    try:
        shape = image.shape
        if 0 in shape:
            raise InputError(f"{source}: image has shape {shape}; it is empty (zero-size)")
        check_channels(shape[0], predictor)
        tile = resolve_tile_size(config, predictor)
        k = getattr(predictor, "out_channels", None) or _probe_classes(predictor, shape[0], tile)
        estimate = estimate_memory(
            shape, k, config, tile, probabilities_dtype=probabilities_dtype if probabilities_path else None,
            out_tile=out_tile, model_bytes_per_pixel=getattr(predictor, "bytes_per_pixel", 1024),
            source_itemsize=np.dtype(image.array.dtype).itemsize,
        )
        if verbose:
            print(estimate)
        if max_memory is not None and estimate.total > max_memory:
            raise InputError(
                f"streaming {shape[1]}x{shape[2]} needs about {estimate.total / 2**20:.0f} MiB, more than max_memory "
                f"{max_memory / 2**20:.0f} MiB; lower TileConfig.batch_size or tile_size"
            )
        _run(predictor, image, Path(labels_path), probabilities_path, probabilities_dtype, config, tile, k, out_tile, compression)
        return estimate
    finally:
        image.close()


def _run(predictor: Any, image: LazyImage, labels_path: Path, probs_path: Any, probs_dtype: str, config: TileConfig,
         tile: tuple[int, int], k: int, out_tile: int, compression: str | None) -> None:
    _, height, width = image.shape
    label_dtype = np.uint8 if k <= 255 else np.uint16
    sinks = [_sink(labels_path, (height, width), label_dtype, out_tile, compression)]
    if probs_path is not None:
        sinks.append(_sink(Path(probs_path), (height, width, k), np.dtype(probs_dtype), out_tile, compression))
    bands = [_Bands(s, out_tile) for s in sinks]
    ok = False
    try:
        for _, block in iter_probability_rows(predictor, image.read_rows, image.shape, config, tile):
            bands[0].add(block.argmax(axis=0).astype(label_dtype))
            if len(bands) > 1:
                bands[1].add(quantize(block, probs_dtype).transpose(1, 2, 0))
        for b in bands:
            b.flush()
        ok = True
    finally:
        for s in sinks:
            s.close(ok)


def quantize(probabilities: np.ndarray, dtype: str) -> np.ndarray:
    """float32 probabilities as float16, float32 or uint8 (round(255 p))."""
    if dtype == "uint8":
        return np.rint(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)
    return probabilities.astype(dtype)


def _probe_classes(predictor: Any, channels: int, tile: tuple[int, int]) -> int:
    return int(predictor(np.zeros((1, channels, *tile), dtype=np.float32)).shape[1])
