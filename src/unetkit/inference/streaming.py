"""Gigapixel inference in bounded memory: lazy reads, stripe-wise prediction, incremental writes.

The source (BigTIFF / tiled TIFF / OME-TIFF through tifffile's zarr view, or a zarr array) is read
one stripe of tile rows at a time, through whole rows of stored chunks that are each decoded once;
`predict.iter_probability_rows` turns each stripe into finished probability rows (the same code
`predict_tiled` runs, so both give the same numbers; for a model trained at reduced resolution
`reduced.probability_rows` resamples the rows on the way in and out); the rows are cut into bands of the output
tile height and written as they complete to a tiled BigTIFF (tifffile consuming a generator of
tiles, in a writer thread) or a zarr store. Peak memory depends on tile, batch and image *width*,
never on the image height; `estimate_memory` says how much before a run, and the returned
`StreamReport` how many tiles and source rows it took and where the time went.
"""

from __future__ import annotations

import math
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.config import TileConfig
from unetkit.data.atomic import publish, replace_dir, temp_name
from unetkit.data.resample import check_resolution, reduced_shape
from unetkit.errors import InputError
from unetkit.inference.outputs import argmax_labels
from unetkit.inference.predict import (
    Predictor,
    check_channels,
    iter_probability_rows,
    resolve_tile_size,
)
from unetkit.inference.reduced import probability_rows

PROBABILITY_DTYPES = ("float16", "uint8", "float32")


@dataclass
class LazyImage:
    """A `(C, H, W)` view of a lazily read array with axes `axes` (Y, X and optionally C or S).

    A chunked source (tiled TIFF, zarr) is read in whole rows of stored chunks, each kept until a
    later read starts below it: tile rows overlap and rarely align with the chunks, so reading
    each stripe afresh would decode every stored chunk ~3.7 times (tile 256, overlap 0.25, 512-row
    chunks). `rows_decoded` counts the image rows taken from the source."""

    array: Any
    axes: str
    closer: Any = None
    rows_decoded: int = 0
    _held: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        size = dict(zip(self.axes, self.array.shape, strict=True))
        return (size.get("C", size.get("S", 1)), size["Y"], size["X"])

    @property
    def chunk_rows(self) -> int | None:
        """Rows per stored chunk (tile or strip height); None for an unchunked (numpy) array."""
        chunks = getattr(self.array, "chunks", None)
        step = chunks[self.axes.index("Y")] if chunks else None
        return int(step) if isinstance(step, (int, np.integer)) else None

    def read_rows(self, y0: int, y1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Image rows `[y0, y1)` as `(C, y1 - y0, W)` float32, in `out` when given."""
        channels, height, width = self.shape
        if out is None:
            out = np.empty((channels, y1 - y0, width), dtype=np.float32)
        for start, rows in self._pieces(y0, y1, height):
            a, b = max(y0, start), min(y1, start + rows.shape[0])
            out[:, a - y0 : b - y0] = rows[a - start : b - start].transpose(2, 0, 1)  # cast and transpose in one pass
        if self.array.dtype.kind == "f" and not np.isfinite(out).all():
            raise InputError(f"image rows {y0}-{y1} contain NaN/inf values; expected finite intensities")
        return out

    def _pieces(self, y0: int, y1: int, height: int) -> list[tuple[int, np.ndarray]]:
        """`(first row, rows (n, W, C) in the source dtype)` covering `[y0, y1)`."""
        step = self.chunk_rows
        if step is None:
            return [(y0, self._read(y0, y1))]
        first, last = y0 // step, (y1 - 1) // step
        for i in [i for i in self._held if i < first]:
            del self._held[i]
        for i in range(first, last + 1):
            if i not in self._held:
                self._held[i] = self._read(i * step, min((i + 1) * step, height))
        return [(i * step, self._held[i]) for i in range(first, last + 1)]

    def _read(self, y0: int, y1: int) -> np.ndarray:
        rows = np.asarray(self.array[(slice(None),) * self.axes.index("Y") + (slice(y0, y1),)])
        self.rows_decoded += y1 - y0
        order = sorted(range(len(self.axes)), key=lambda i: "YXCS".find(self.axes[i]))  # Y, X, then C or S
        return rows.transpose(order).reshape(y1 - y0, rows.shape[self.axes.index("X")], -1)

    def close(self) -> None:
        self._held.clear()
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
    source_itemsize: int = 4, source_chunk_rows: int | None = None, resolution: float = 1.0,
) -> MemoryEstimate:
    """Bytes a streaming run needs: source rows, stripes, accumulators, tile batches, model
    activations (a rough `model_bytes_per_pixel` of the batch, ~1 KiB for a 32-wide U-Net in eager
    PyTorch) and output bands. Grows with the image width, not its height. A chunked source holds
    the rows of stored chunks one stripe spans, plus one chunk row being decoded
    (`source_chunk_rows`: the chunk height; None: a stripe of rows). A model trained at `resolution`
    < 1 tiles the reduced image (`tile` in its pixels) and resamples the rows both ways (`reduced.py`)."""
    c, h, w = image_shape
    th, tw = tile
    rw = reduced_shape((h, w), resolution)[1]
    span = th if resolution == 1.0 else min(h, math.ceil((th + 2) / resolution) + 2)  # rows a tile row reads
    wp, n, k = max(w, tw), config.batch_size, out_channels
    rwp = max(rw, tw)
    prob_item = np.dtype(probabilities_dtype).itemsize if probabilities_dtype else 0
    label_item = 1 if k <= 255 else 2
    step = source_chunk_rows
    source_rows = min(h, (math.ceil((span - 1) / step) + 2) * step) if step else span
    parts = {
        "source rows": source_rows * w * c * source_itemsize,
        "input stripe": 2 * c * th * rwp * 4,
        "accumulator": 2 * (k + 1) * th * rwp * 4,
        "tile batch": n * (c + (3 if config.tta else 2) * k) * th * tw * 4,
        "model activations": n * th * tw * model_bytes_per_pixel,
        "output bands": 5 * out_tile * wp * (label_item + k * prob_item + k * 4),
    }
    if resolution != 1.0:  # native rows read as float32, the band shrunk; probabilities widened and grown back
        parts["resampling"] = (2 * span * w * c + 2 * (th + 2) * wp * k + span * wp * k) * 4
    return MemoryEstimate(parts)


# ---------------------------------------------------------------- writing


LEVELLED_CODECS = ("zlib", "deflate", "adobe_deflate", "zstd", "lzma")  # the ones `compression_level` applies to
# GeoTIFF georeferencing (ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory, GeoDoubleParams,
# GeoAsciiParams) and GDAL's metadata: what a TIFF output copies from a TIFF source, so the mask lies on the map.
GEOTIFF_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112)


def geotiff_tags(source: Any) -> list[tuple[int, int, int, Any, bool]]:
    """The GeoTIFF tags of a TIFF path's first page as tifffile `extratags` (none for other sources)."""
    if not isinstance(source, (str, Path)) or Path(source).suffix.lower() not in (".tif", ".tiff"):
        return []
    import tifffile

    with tifffile.TiffFile(str(source)) as tif:
        tags = tif.pages.first.tags
        return [(t.code, int(t.dtype), 0 if int(t.dtype) == 2 else t.count, t.value, True)
                for code in GEOTIFF_TAGS if (t := tags.get(code)) is not None]


class _TiffSink:
    """Writes bands of rows to a tiled BigTIFF: tifffile consumes a tile generator in a thread.
    `main_seconds`: how long the producer waited for it; `thread_cpu`: the thread's CPU seconds."""

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: Any, tile: int, compression: str | None, level: int | None,
        extratags: Any = (),
    ) -> None:
        import tifffile

        self.path, self.tmp, self.tile, self.width = path, temp_name(path), tile, shape[1]
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.main_seconds = self.thread_cpu = 0.0
        levelled = compression is not None and level is not None and compression.lower() in LEVELLED_CODECS
        kwargs = dict(shape=shape, dtype=dtype, tile=(tile, tile), bigtiff=True, photometric="minisblack",
                      compression=compression, compressionargs={"level": level} if levelled else None,
                      planarconfig="contig" if len(shape) == 3 else None, extratags=list(extratags))

        def run() -> None:
            try:
                tifffile.imwrite(self.tmp, data=self._tiles(), **kwargs)
            except BaseException as e:  # reported to the producer on its next put/close
                self.error = e
            finally:
                self.thread_cpu = time.thread_time()

        self.thread = threading.Thread(target=run, name=f"tiff-writer-{path.name}", daemon=True)
        self.thread.start()

    def _tiles(self) -> Iterator[np.ndarray]:
        while (band := self.queue.get()) is not None:
            for x in range(0, self.width, self.tile):
                yield band[:, x : x + self.tile]

    def write(self, band: np.ndarray) -> None:
        start = time.perf_counter()
        try:
            while True:
                if self.error is not None:
                    raise self.error
                try:
                    self.queue.put(band, timeout=0.5)
                    return
                except queue.Full:
                    continue
        finally:
            self.main_seconds += time.perf_counter() - start

    def close(self, ok: bool) -> None:
        start = time.perf_counter()
        if self.thread.is_alive():
            self.queue.put(None)  # the writer stops reading; a short file is discarded below
        self.thread.join()
        self.main_seconds += time.perf_counter() - start
        if ok and self.error is None:
            publish(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
            if ok and self.error is not None:
                raise self.error


class _ZarrSink:
    """Writes bands of rows into a zarr store, in the producer's thread (zarr's own codecs)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, tile: int, compression: str | None,
                 level: int | None, extratags: Any = ()) -> None:
        import zarr

        self.path, self.tmp, self.y = path, temp_name(path), 0
        self.main_seconds = self.thread_cpu = 0.0
        chunks = (tile, tile) + tuple(shape[2:])
        self.array = zarr.create_array(store=str(self.tmp), shape=shape, chunks=chunks, dtype=dtype, overwrite=True)

    def write(self, band: np.ndarray) -> None:
        start = time.perf_counter()
        self.array[self.y : self.y + band.shape[0]] = band
        self.y += band.shape[0]
        self.main_seconds += time.perf_counter() - start

    def close(self, ok: bool) -> None:
        if ok:
            replace_dir(self.tmp, self.path)  # the old result goes only once the new one is in place
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _sink(path: Path, shape: tuple[int, ...], dtype: Any, tile: int, compression: str | None, level: int | None,
          extratags: Any = ()) -> Any:
    if path.suffix.lower() in (".tif", ".tiff"):
        return _TiffSink(path, shape, dtype, tile, compression, level, extratags)
    if path.suffix.lower() == ".zarr":
        return _ZarrSink(path, shape, dtype, tile, compression, level)
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


class StreamWriter:
    """The outputs of one streamed image, written band by band as its rows arrive top to bottom:
    `(path, "labels")` and optionally `(path, probability dtype)`, each a tiled BigTIFF (with
    `extratags`, e.g. the source's GeoTIFF tags) or a zarr store. `close(True)` publishes each
    whole (atomic rename); `close(False)` removes what was written. `output_rows` turns a block of
    probabilities into the rows `add` takes, so a block may be converted elsewhere (a Ray worker)."""

    def __init__(self, outputs: list[tuple[Path, str]], height: int, width: int, k: int, *, out_tile: int = 256,
                 codec: tuple[str | None, int | None] = ("zlib", 2), extratags: Any = ()) -> None:
        self.kinds = [kind for _, kind in outputs]
        self.label_dtype = label_dtype(k)
        self.sinks: list[Any] = []
        try:
            for path, kind in outputs:
                shape, dtype = ((height, width), self.label_dtype) if kind == "labels" else ((height, width, k), np.dtype(kind))
                self.sinks.append(_sink(Path(path), shape, dtype, out_tile, *codec, extratags=extratags))
        except BaseException:
            self.close(False)
            raise
        self.bands = [_Bands(sink, out_tile) for sink in self.sinks]

    def add(self, rows: list[np.ndarray]) -> None:
        for band, r in zip(self.bands, rows, strict=True):
            band.add(r)

    def close(self, ok: bool) -> None:
        try:
            if ok:
                for band in self.bands:
                    band.flush()
        except BaseException:
            ok = False
            raise
        finally:
            for sink in self.sinks:
                sink.close(ok)

    @property
    def main_seconds(self) -> float:
        return sum(s.main_seconds for s in self.sinks)

    @property
    def thread_cpu(self) -> float:
        return sum(s.thread_cpu for s in self.sinks)


def label_dtype(k: int) -> Any:
    return np.uint8 if k <= 255 else np.uint16


def output_rows(probabilities: np.ndarray, kinds: list[str], labels_dtype: Any) -> list[np.ndarray]:
    """A block `(K, n, W)` of probabilities as the rows of each output kind: labels `(n, W)`
    (arg-max), probabilities `(n, W, K)` quantized to the kind's dtype."""
    return [argmax_labels(probabilities, labels_dtype) if kind == "labels" else quantize(probabilities, kind).transpose(1, 2, 0)
            for kind in kinds]


@dataclass
class StreamReport:
    """What a streaming run needed and did: its memory estimate, op counts and where time went.

    `seconds` is the main thread's wall time by phase: "read" (decoding source rows into float32
    stripes), "forward" (predictor calls), "blend" (softmax, Gaussian weighting, accumulation,
    normalization, padding; for a reduced-resolution model also resampling the rows), "labels" (arg-max, quantizing), "write" (waiting for the TIFF writer
    threads, or writing a zarr store), "other" (regrouping rows into bands, opening outputs) and
    "total". "writer cpu" is the CPU time of the TIFF writer threads (tile encoding), which run
    alongside the main thread and are not part of "total"."""

    memory: MemoryEstimate
    forward_tiles: int = 0  # tiles through the predictor (8 per tile with TTA)
    source_rows: int = 0  # image rows decoded from the source; the height when none is decoded twice
    seconds: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        total = self.seconds.get("total") or float("nan")
        lines = [f"  {name:<12} {sec:9.2f} s {100 * sec / total:6.1f}%" for name, sec in self.seconds.items()]
        return "\n".join([f"forward tiles {self.forward_tiles}, source rows decoded {self.source_rows}", *lines])


def predict_stream(
    predictor: Predictor, source: Any, labels_path: str | Path, config: TileConfig, *,
    probabilities_path: str | Path | None = None, probabilities_dtype: str = "float16",
    out_tile: int = 256, compression: str | None = "zlib", compression_level: int | None = 2,
    max_memory: int | None = None, verbose: bool = False, on_rows: Callable[[int], None] | None = None,
) -> StreamReport:
    """Predict `source` stripe by stripe; write the label map (argmax, uint8) to `labels_path` and,
    optionally, `(H, W, K)` probabilities (float16, float32 or uint8 = round(255 p)) to
    `probabilities_path`. Outputs are `.tif`/`.tiff` (tiled BigTIFF) or `.zarr`, written under a
    unique temp name (`.NAME.*.tmp`: two runs to one output never share it), fsynced and renamed
    when complete; an existing output is replaced only then. A TIFF output carries the GeoTIFF tags
    of a TIFF source (`geotiff_tags`). TIFF tiles are encoded with `compression` at
    `compression_level` (zlib, zstd, lzma; None: the codec's default). zlib level 2 encodes smooth
    label maps slightly faster than the default 6 and noisy ones (a random-weight model) ~3x faster,
    for files up to 1.7x larger (~75:1 on smooth maps, ~7:1 on noise); level 1 is slower on smooth
    maps and only faster on noise. Refuses to start when the memory estimate exceeds `max_memory`
    bytes. `on_rows(n)` is called as each block of n rows is done (a progress bar). Returns the
    estimate, op counts and a time breakdown (`StreamReport`)."""
    image = open_lazy(source)
    try:
        shape, tile, k, estimate = plan_stream(predictor, image, source, config, probabilities_dtype,
                                               probabilities_path is not None, out_tile, max_memory)
        if verbose:
            print(estimate)
        report = StreamReport(estimate)
        outputs = [(Path(labels_path), "labels")]
        if probabilities_path is not None:
            outputs.append((Path(probabilities_path), probabilities_dtype))
        writer_args = dict(out_tile=out_tile, codec=(compression, compression_level), extratags=geotiff_tags(source))
        _run(predictor, image, outputs, config, tile, k, writer_args, report, on_rows)
        if verbose:
            print(report)
        return report
    finally:
        image.close()


def plan_stream(predictor: Any, image: LazyImage, source: Any, config: TileConfig, probabilities_dtype: str,
                probabilities: bool, out_tile: int, max_memory: int | None) -> tuple[tuple[int, int, int], tuple[int, int], int, MemoryEstimate]:
    """Checks before a streaming run: the image's shape, the tile, the classes and the memory
    estimate (refused over `max_memory` bytes)."""
    resolution = check_resolution(config.resolution, "TileConfig.resolution")
    name = source if isinstance(source, (str, Path)) else type(source).__name__
    if config.resolutions:
        raise InputError(f"{name}: multi-scale inference (resolutions {', '.join(f'{r:g}' for r in config.resolutions)}) "
                         "needs the whole image in memory and this input is streamed; predict it at one resolution "
                         f"(--resolutions {resolution:g})")
    if probabilities_dtype not in PROBABILITY_DTYPES:
        raise InputError(f"probabilities_dtype '{probabilities_dtype}': expected one of {list(PROBABILITY_DTYPES)}")
    shape = image.shape
    if 0 in shape:
        raise InputError(f"{name}: image has shape {shape}; it is empty (zero-size)")
    check_channels(shape[0], predictor)
    tile = resolve_tile_size(config, predictor)
    k = getattr(predictor, "out_channels", None) or _probe_classes(predictor, shape[0], tile)
    estimate = estimate_memory(
        shape, k, config, tile, probabilities_dtype=probabilities_dtype if probabilities else None,
        out_tile=out_tile, model_bytes_per_pixel=getattr(predictor, "bytes_per_pixel", 1024),
        source_itemsize=np.dtype(image.array.dtype).itemsize, source_chunk_rows=image.chunk_rows,
        resolution=resolution,
    )
    check_memory(name, shape, estimate, max_memory)
    return shape, tile, k, estimate


def check_memory(name: Any, shape: tuple[int, int, int], estimate: MemoryEstimate, max_memory: int | None) -> None:
    """Refuse a streaming run whose estimate exceeds `max_memory` bytes (None: no limit)."""
    if max_memory is not None and estimate.total > max_memory:
        raise InputError(
            f"{name}: streaming {shape[1]}x{shape[2]} needs about {estimate.total / 2**20:.0f} MiB, more than the "
            f"memory limit of {max_memory / 2**20:.0f} MiB; lower the batch size or tile size, or allow more memory"
        )


def predict_rows(predictor: Predictor, source: Any, config: TileConfig, rows: tuple[int, int], kinds: list[str]) -> list[np.ndarray]:
    """One stripe of a streamed image's outputs: rows `[r0, r1)` (boundaries of
    `predict.row_blocks`) of each output kind (`output_rows`), bit for bit what `predict_stream`
    writes there. What a distributed run's workers compute; the driver writes them in order."""
    image = open_lazy(source)
    try:
        tile = resolve_tile_size(config, predictor)
        k = getattr(predictor, "out_channels", None) or _probe_classes(predictor, image.shape[0], tile)
        parts = [output_rows(block, kinds, label_dtype(k))
                 for _, block in iter_probability_rows(predictor, image.read_rows, image.shape, config, tile, rows)]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(kinds))]
    finally:
        image.close()


class _Timed:
    """The predictor, counting the tiles it is given and the seconds it takes."""

    def __init__(self, predictor: Predictor, seconds: dict[str, float]) -> None:
        self.predictor, self.seconds, self.tiles = predictor, seconds, 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self.predictor(batch)
        finally:
            self.seconds["forward"] += time.perf_counter() - start
            self.tiles += len(batch)


def _run(predictor: Any, image: LazyImage, outputs: list[tuple[Path, str]], config: TileConfig, tile: tuple[int, int],
         k: int, writer_args: dict[str, Any], report: StreamReport, on_rows: Callable[[int], None] | None) -> None:
    """Predict and write `outputs`: `(path, "labels")` and optionally `(path, probability dtype)`."""
    _, height, width = image.shape
    seconds = report.seconds
    seconds.update(dict.fromkeys(("read", "forward", "blend", "labels", "write"), 0.0))
    timed = _Timed(predictor, seconds)

    stripe = (np.empty((image.shape[0], min(tile[0], height), width), dtype=np.float32)  # reused; a reduced-
              if config.resolution == 1.0 else None)  # resolution model reads longer bands (`reduced.py`)

    def read(y0: int, y1: int) -> np.ndarray:
        start = time.perf_counter()
        rows = image.read_rows(y0, y1, out=stripe[:, : y1 - y0] if stripe is not None else None)
        seconds["read"] += time.perf_counter() - start
        return rows

    start = time.perf_counter()
    writer = StreamWriter(outputs, height, width, k, **writer_args)
    ok = False
    try:
        blocks = probability_rows(timed, read, image.shape, config, tile)
        while True:
            t = time.perf_counter()
            item = next(blocks, None)
            seconds["blend"] += time.perf_counter() - t  # read and forward are taken out below
            if item is None:
                break
            t = time.perf_counter()
            rows = output_rows(item[1], writer.kinds, writer.label_dtype)
            seconds["labels"] += time.perf_counter() - t
            writer.add(rows)
            if on_rows is not None:
                on_rows(item[1].shape[1])
        ok = True
    finally:
        writer.close(ok)
    seconds["blend"] -= seconds["read"] + seconds["forward"]
    seconds["write"] = writer.main_seconds
    seconds["total"] = time.perf_counter() - start
    seconds["other"] = seconds["total"] - sum(seconds[p] for p in ("read", "forward", "blend", "labels", "write"))
    seconds["writer cpu"] = writer.thread_cpu
    report.forward_tiles, report.source_rows = timed.tiles, image.rows_decoded


def quantize(probabilities: np.ndarray, dtype: str) -> np.ndarray:
    """float32 probabilities as float16, float32 or uint8 (round(255 p))."""
    if dtype == "uint8":
        return np.rint(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)
    return probabilities.astype(dtype)


def _probe_classes(predictor: Any, channels: int, tile: tuple[int, int]) -> int:
    return int(predictor(np.zeros((1, channels, *tile), dtype=np.float32)).shape[1])
