import errno
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from unetkit.config import TileConfig
from unetkit.errors import InputError, StorageError
from unetkit.inference.predict import predict_tiled, row_blocks
from unetkit.inference.streaming import estimate_memory, open_lazy, predict_rows, predict_stream, quantize
from unetkit.inference.tiling import tile_starts

CONFIG = TileConfig(tile_size=(24, 24), overlap=0.25, batch_size=3)


@pytest.fixture
def big(rng):
    return rng.uniform(0, 255, (2, 103, 77)).astype(np.float32)


def test_tiff_to_tiff_equals_in_memory(predictor, big, tmp_path):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, big, tile=(32, 32), bigtiff=True, photometric="minisblack", planarconfig="separate")
    expected = predict_tiled(predictor, big, CONFIG)
    predict_stream(predictor, source, tmp_path / "labels.tif", CONFIG, probabilities_path=tmp_path / "p.tif",
                   probabilities_dtype="float32", out_tile=16)
    labels = tifffile.imread(tmp_path / "labels.tif")
    probs = tifffile.imread(tmp_path / "p.tif")
    assert labels.dtype == np.uint8 and labels.shape == (103, 77)
    np.testing.assert_array_equal(labels, expected.argmax(0))
    np.testing.assert_allclose(probs.transpose(2, 0, 1), expected, atol=1e-5)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left


def test_zarr_to_zarr_equals_in_memory(predictor, big, tmp_path):
    src = zarr.create_array(store=str(tmp_path / "in.zarr"), shape=big.shape, chunks=(2, 20, 20), dtype="float32")
    src[:] = big
    expected = predict_tiled(predictor, big, CONFIG)
    predict_stream(predictor, tmp_path / "in.zarr", tmp_path / "labels.zarr", CONFIG,
                   probabilities_path=tmp_path / "p.zarr", probabilities_dtype="uint8", out_tile=32)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "labels.zarr"))[:], expected.argmax(0))
    probs = zarr.open_array(str(tmp_path / "p.zarr"))[:]
    np.testing.assert_array_equal(probs, quantize(expected, "uint8").transpose(1, 2, 0))


def test_rgb_tiff_source_is_read_channels_first(rng, tmp_path):
    rgb = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, tile=(16, 16), photometric="rgb")
    image = open_lazy(tmp_path / "rgb.tif")
    assert image.shape == (3, 40, 30)
    np.testing.assert_array_equal(image.read_rows(5, 9), rgb[5:9].transpose(2, 0, 1))
    image.close()


def test_memory_estimate_grows_with_width_not_height_and_refuses_over_the_limit(predictor, big, tmp_path):
    tall = estimate_memory((3, 100_000, 4096), 2, CONFIG, (256, 256))
    short = estimate_memory((3, 1_000, 4096), 2, CONFIG, (256, 256))
    wide = estimate_memory((3, 1_000, 8192), 2, CONFIG, (256, 256))
    assert tall.total == short.total < wide.total
    assert "total" in str(tall) and "model activations" in str(tall)
    with pytest.raises(InputError, match="needs about .* MiB, more than the memory limit of 0 MiB"):
        predict_stream(predictor, big, tmp_path / "l.tif", CONFIG, max_memory=1000)
    assert not (tmp_path / "l.tif").exists()


def test_streaming_errors(predictor, tmp_path):
    with pytest.raises(InputError, match="not found"):
        predict_stream(predictor, tmp_path / "missing.tif", tmp_path / "l.tif", CONFIG)
    with pytest.raises(InputError, match="unsupported output"):
        predict_stream(predictor, np.zeros((2, 30, 30), np.float32), tmp_path / "l.png", CONFIG)
    bad = np.zeros((2, 60, 30), np.float32)
    bad[1, 50, 3] = np.nan
    with pytest.raises(InputError, match="NaN/inf"):
        predict_stream(predictor, bad, tmp_path / "l.tif", CONFIG)
    assert not list(tmp_path.glob("l.tif*")) + list(tmp_path.glob(".l.tif.*"))  # no partial output left behind
    with pytest.raises(InputError, match="channel"):
        predict_stream(predictor, np.zeros((3, 30, 30), np.float32), tmp_path / "l.tif", CONFIG)
    with pytest.raises(InputError, match="probabilities_dtype"):
        predict_stream(predictor, np.zeros((2, 30, 30), np.float32), tmp_path / "l.tif", CONFIG,
                       probabilities_dtype="float64")


def test_each_tile_is_predicted_once_and_each_source_row_decoded_once(predictor, big, tmp_path):
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, big, tile=(32, 32), bigtiff=True, photometric="minisblack", planarconfig="separate")
    predict_tiled(predictor, big, CONFIG)
    in_memory = sum(n for n, *_ in predictor.calls)
    report = predict_stream(predictor, source, tmp_path / "labels.tif", CONFIG)
    assert report.forward_tiles == in_memory == len(tile_starts(103, 24, 0.25)) * len(tile_starts(77, 24, 0.25))
    assert report.source_rows == 103  # tile rows overlap, 32-row chunks straddle them: still one decode each
    assert set(report.seconds) >= {"read", "forward", "blend", "labels", "write", "total", "writer cpu"}
    parts = sum(v for k, v in report.seconds.items() if k not in ("total", "writer cpu"))
    assert parts == pytest.approx(report.seconds["total"], abs=1e-6)
    assert "forward tiles" in str(report)


@pytest.mark.parametrize("layout", ["rgb-tiff", "planar-zarr"])
def test_chunk_rows_are_held_only_while_needed_and_within_the_estimate(rng, tmp_path, layout):
    image = rng.integers(0, 255, (3, 90, 50), dtype=np.uint8)
    if layout == "rgb-tiff":
        tifffile.imwrite(tmp_path / "s.tif", image.transpose(1, 2, 0), tile=(16, 16), photometric="rgb")
        lazy = open_lazy(tmp_path / "s.tif")
    else:
        lazy = open_lazy(zarr.create_array(store=str(tmp_path / "s.zarr"), data=image, chunks=(3, 16, 16)))
    assert lazy.chunk_rows == 16
    budget = estimate_memory((3, 90, 50), 2, CONFIG, (24, 24), source_itemsize=1, source_chunk_rows=16).parts["source rows"]
    for y in tile_starts(90, 24, 0.25):
        rows = lazy.read_rows(y, min(y + 24, 90))
        np.testing.assert_array_equal(rows, image[:, y : y + 24].astype(np.float32))
        assert rows.dtype == np.float32 and sum(a.nbytes for a in lazy._held.values()) <= budget
    assert lazy.rows_decoded == 90
    lazy.close()


def test_compression_level_only_reaches_codecs_that_take_one(predictor, big, tmp_path):
    expected = predict_tiled(predictor, big, CONFIG).argmax(0)
    for compression, level in [("zlib", 9), ("lzw", 1), (None, 1)]:
        out = tmp_path / f"labels-{compression}.tif"
        predict_stream(predictor, big, out, CONFIG, compression=compression, compression_level=level, out_tile=16)
        np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_a_bad_second_output_leaves_no_writer_thread_or_partial_file(predictor, big, tmp_path):
    with pytest.raises(InputError, match="unsupported output"):
        predict_stream(predictor, big, tmp_path / "labels.tif", CONFIG, probabilities_path=tmp_path / "p.png")
    assert not list(tmp_path.iterdir())
    assert not [t for t in threading.enumerate() if t.name.startswith("tiff-writer-")]


def test_issue16_case13_two_runs_to_one_output_use_their_own_temp_names(predictor, big, tmp_path, monkeypatch):
    """Before: both runs wrote `labels.tif.partial`, so the second truncated the first's file mid-write."""
    import unetkit.inference.streaming as streaming

    names = []
    real = streaming.temp_name
    monkeypatch.setattr(streaming, "temp_name", lambda path: names.append(real(path)) or names[-1])
    predict_stream(predictor, big, tmp_path / "labels.tif", CONFIG, out_tile=16)
    predict_stream(predictor, big, tmp_path / "labels.tif", CONFIG, out_tile=16)
    assert len(set(names)) == 2 and all(n.parent == tmp_path and n.name.startswith(".labels.tif.") for n in names)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "labels.tif"), predict_tiled(predictor, big, CONFIG).argmax(0))


def test_issue16_case13_a_zarr_output_is_kept_until_the_new_one_is_in_place(predictor, big, tmp_path, monkeypatch):
    """Before: the old labels.zarr was deleted first, then the new one renamed in; a failure of that rename
    (or a crash between) lost the old result. Now a failed swap puts the old one back."""
    import unetkit.data.atomic as atomic

    out = tmp_path / "labels.zarr"
    predict_stream(predictor, big, out, CONFIG, out_tile=32)
    before = zarr.open_array(str(out))[:]
    real = os.replace

    def fail_on_the_new_tree(src, dst):
        if Path(src).name.startswith(".labels.zarr.") and Path(src).name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", fail_on_the_new_tree)
    with pytest.raises(StorageError, match="labels.zarr: could not write it .the disk is full."):
        predict_stream(predictor, big * 0, out, CONFIG, out_tile=32)
    monkeypatch.undo()
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], before)  # put back, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr"]  # and no temp or set-aside tree left
    predict_stream(predictor, big * 0, out, CONFIG, out_tile=32)  # a run that succeeds replaces it
    assert not np.array_equal(zarr.open_array(str(out))[:], before)


@pytest.mark.parametrize("step", [1, 2, 3])
def test_stripes_of_tile_rows_are_bit_for_bit_the_whole_stream(predictor, big, tmp_path, step):
    """What a distributed run's workers compute (`predict_rows` on stripes of row blocks) joins up to
    exactly what one streaming run writes, for stripes of one, two or three tile rows."""
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, big, tile=(32, 32), photometric="minisblack", planarconfig="separate")
    predict_stream(predictor, source, tmp_path / "l.tif", CONFIG, probabilities_path=tmp_path / "p.tif")
    bounds = row_blocks(103, CONFIG, (24, 24))
    assert bounds[0] == 0 and bounds[-1] == 103 and len(bounds) == len(tile_starts(103, 24, 0.25)) + 1
    cuts = bounds[::step] + ([103] if bounds[::step][-1] != 103 else [])
    parts = [predict_rows(predictor, source, CONFIG, (a, b), ["labels", "float16"]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), tifffile.imread(tmp_path / "l.tif"))
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), tifffile.imread(tmp_path / "p.tif"))
    with pytest.raises(Exception, match="expected two boundaries"):
        predict_rows(predictor, source, CONFIG, (1, 103), ["labels"])


def test_geotiff_tags_of_a_tiff_source_are_carried_to_tiff_outputs(predictor, big, tmp_path):
    source = tmp_path / "geo.tif"
    geo = [(33550, "d", 3, (0.5, 0.5, 0.0), True), (33922, "d", 6, (0.0, 0.0, 0.0, 440720.0, 3751320.0, 0.0), True),
           (34735, "H", 8, (1, 1, 0, 1, 3072, 0, 1, 32611), True), (34737, "s", 0, "UTM 11N|", True)]
    tifffile.imwrite(source, big, tile=(32, 32), photometric="minisblack", planarconfig="separate", extratags=geo)
    predict_stream(predictor, source, tmp_path / "l.tif", CONFIG, probabilities_path=tmp_path / "p.tif")
    for out in ("l.tif", "p.tif"):
        with tifffile.TiffFile(tmp_path / out) as tif:
            tags = tif.pages.first.tags
            assert tif.pages.first.is_tiled and tif.is_bigtiff
            assert tags[33550].value == (0.5, 0.5, 0.0) and tags[33922].value[3:5] == (440720.0, 3751320.0)
            assert tags[34735].value == (1, 1, 0, 1, 3072, 0, 1, 32611) and tags[34737].value == "UTM 11N|"
    predict_stream(predictor, big, tmp_path / "plain.tif", CONFIG)  # an array source has none to give
    with tifffile.TiffFile(tmp_path / "plain.tif") as tif:
        assert 33550 not in tif.pages.first.tags


def test_a_half_resolution_model_streams_to_the_in_memory_result(predictor, big, tmp_path):
    """A model trained at half resolution: the stream resamples rows in and out, band by band, and
    writes what predict_tiled gives for the whole image; distributed stripes still refuse it."""
    from dataclasses import replace

    from unetkit.errors import ConfigError

    half = replace(CONFIG, resolution=0.5)
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, big, tile=(32, 32), bigtiff=True, photometric="minisblack", planarconfig="separate")
    expected = predict_tiled(predictor, big, half)
    report = predict_stream(predictor, source, tmp_path / "labels.tif", half, probabilities_path=tmp_path / "p.tif",
                            probabilities_dtype="float32", out_tile=16)
    probs = tifffile.imread(tmp_path / "p.tif").transpose(2, 0, 1)
    np.testing.assert_allclose(probs, expected, atol=2e-5)
    labels = tifffile.imread(tmp_path / "labels.tif")
    assert labels.shape == (103, 77) and (labels == expected.argmax(0)).mean() > 0.999  # ties may flip at 1e-6
    assert report.forward_tiles == len(tile_starts(52, 24, 0.25)) * len(tile_starts(38, 24, 0.25))  # the 52x38 image's
    assert "resampling" in report.memory.parts
    with pytest.raises(ConfigError, match="distributed stripes"):
        predict_rows(predictor, source, half, (0, 18), ["labels"])


def test_a_multi_scale_model_is_refused_streaming_naming_the_input_and_the_way_out(predictor, big, tmp_path):
    from dataclasses import replace

    from unetkit.errors import ConfigError, InputError

    source = tmp_path / "in.tif"
    tifffile.imwrite(source, big, tile=(32, 32), bigtiff=True, photometric="minisblack", planarconfig="separate")
    multi = replace(CONFIG, resolution=0.75, resolutions=(0.5, 0.75, 1.0))
    with pytest.raises(InputError, match=rf"^{source}: multi-scale inference \(resolutions 0\.5, 0\.75, 1\) needs the "
                                         r"whole image in memory .* \(--resolutions 0\.75\)$"):
        predict_stream(predictor, source, tmp_path / "labels.tif", multi)
    assert not list(tmp_path.glob("labels*"))  # nothing written
    with pytest.raises(ConfigError, match="multi-scale inference"):
        predict_rows(predictor, source, replace(multi, resolution=1.0), (0, 18), ["labels"])
