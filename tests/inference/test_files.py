"""Which tiling a model runs with: the model's own, and only what the caller set in its place."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from tests.evaluation_fixtures import tiny_artifact
from tests.test_cli import engine_tilings, run_cli

from unetkit.artifact import load_artifact
from unetkit.config import TileConfig
from unetkit.data.io import write_png
from unetkit.errors import ConfigError
from unetkit.inference.files import tile_config_for, tile_settings


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    return tiny_artifact(tmp_path / "model.unetkit", seed=3)  # 32x32 patches


def test_an_artifact_tiles_at_its_patch_size_with_the_settings_given(artifact):
    art = load_artifact(artifact)
    own = TileConfig(tile_size=(32, 32))
    assert tile_config_for(art) == tile_config_for(art, {}) == own
    assert tile_config_for(art, {"overlap": 0.5, "tta": True}) == TileConfig(tile_size=(32, 32), overlap=0.5, tta=True)
    assert tile_config_for(art, {"tile_size": [48, 48]}) == TileConfig(tile_size=(48, 48))
    assert tile_config_for(art, {"tile_size": ()}) == own  # an empty size leaves it to the model
    # a complete TileConfig sets every field (the model's predictor decides the activation)
    complete = TileConfig(overlap=0.1, batch_size=2, activation="none")
    assert tile_config_for(art, complete) == TileConfig(tile_size=(32, 32), overlap=0.1, batch_size=2)
    assert tile_settings(None) == {} and "activation" not in tile_settings(complete)
    with pytest.raises(ConfigError, match="TileConfig: unknown key 'overlapp'"):
        tile_config_for(art, {"overlapp": 0.5})
    with pytest.raises(ConfigError, match="overlap: expected a number"):
        tile_config_for(art, {"overlap": "half"})


def test_predict_an_artifact_with_explicit_tiling(artifact, tmp_path, rng, monkeypatch):
    """An explicit value is used as given, also where it equals what the artifact implies or
    TileConfig's default; one that differs (a 48-pixel tile over the 32-pixel patch) changes the output."""
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "im.png", rng.integers(0, 255, (80, 75, 3), dtype=np.uint8))

    def predict(out: str, *flags: str) -> tuple[list[TileConfig], np.ndarray]:
        used = engine_tilings(monkeypatch, "predict", str(artifact), str(images), "--out", str(tmp_path / out),
                              "--probabilities", "--backend", "torch", *flags)
        return used, tifffile.imread(tmp_path / out / "im_prob.tif")

    own, p_own = predict("own")
    assert own == [TileConfig(tile_size=(32, 32))]
    same, p_same = predict("same", "--tile", "32", "--overlap", "0.25", "--no-tta")
    assert same == own and np.array_equal(p_same, p_own)
    bigger, p_bigger = predict("bigger", "--tile", "48", "--overlap", "0.5")
    assert bigger == [TileConfig(tile_size=(48, 48), overlap=0.5)]
    assert np.abs(p_bigger - p_own).max() > 1e-4


# ---------------------------------------------------------------- gigapixel inputs: streamed or refused


def _tiled_tiff(path: Path, image: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, image, tile=(32, 32), photometric="rgb", **kwargs)
    return path


def test_an_input_over_the_memory_limit_is_streamed_to_a_tiled_bigtiff_with_its_geotiff_tags(artifact, tmp_path, rng):
    """Over --max-memory a tiled TIFF is streamed: `<stem>_mask.tif` holds the arg-max of exactly the
    probabilities the in-memory path computes, `_prob.tif` them as (H, W, K) float16, both tiled
    BigTIFFs with the source's GeoTIFF tags; under the limit the same file is predicted in memory."""
    from unetkit.inference.files import in_memory_bytes, predict_files, route

    image = rng.integers(0, 255, (1200, 200, 3), dtype=np.uint8)  # tall: streaming needs less the taller it is
    geo = [(33550, "d", 3, (2.0, 2.0, 0.0), True), (33922, "d", 6, (0.0, 0.0, 0.0, 500.0, 900.0, 0.0), True)]
    source = _tiled_tiff(tmp_path / "scene.ome.tif", image, extratags=geo)
    need = in_memory_bytes(1200, 200, 3, 2)
    assert route(source, 2) == route(source, 2, need) == "memory" and route(source, 2, need - 1) == "stream"
    assert route(source, 2, need, multiscale=True) == "stream"  # multi-scale holds two more maps of the frame
    assert in_memory_bytes(1200, 200, 3, 2, multiscale=True) - need == 1200 * 200 * 8 * 2
    predict_files(artifact, [source], tmp_path / "mem", probabilities=True, backend="torch", progress=False)
    notes: list[str] = []
    written = predict_files(artifact, [source], tmp_path / "big", probabilities=True, overlays=True, backend="torch",
                            progress=False, max_memory=need - 1, on_note=notes.append)
    assert [p.name for p in written] == ["scene_mask.tif", "scene_prob.tif"]  # `.ome` is not part of the name
    probs = tifffile.imread(tmp_path / "mem" / "scene_prob.tif")
    labels = probs.argmax(axis=0)
    np.testing.assert_array_equal(tifffile.imread(written[0]), labels)
    np.testing.assert_array_equal(tifffile.imread(written[1]), probs.transpose(1, 2, 0).astype(np.float16))
    for path in written:
        with tifffile.TiffFile(path) as tif:
            assert tif.is_bigtiff and tif.pages.first.is_tiled
            assert tif.pages.first.tags[33922].value[3:5] == (500.0, 900.0)
    assert any("streamed 1 large input" in n for n in notes) and any("overlays" in n for n in notes)


def test_zarr_inputs_and_outputs_and_the_pixel_limit(artifact, tmp_path, rng, monkeypatch):
    """A zarr store (given, or found in a folder) is always streamed; --stream-format zarr writes zarr
    stores; a chunked TIFF over the decoding pixel limit is streamed without any --max-memory."""
    import zarr

    import unetkit.inference.files as files

    image = rng.integers(0, 255, (3, 90, 70)).astype(np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    zarr.create_array(store=str(folder / "a.zarr"), data=image, chunks=(3, 32, 32))
    _tiled_tiff(folder / "b.tif", image.transpose(1, 2, 0))
    assert [(p.name, str(s)) for p, s in files.collect_inputs([folder])] == [("a.zarr", "a"), ("b.tif", "b")]
    monkeypatch.setattr(files, "DEFAULT_MAX_PIXELS", 90 * 70 - 1)
    written = files.predict_files(artifact, [folder], tmp_path / "out", stream_format="zarr", backend="torch", progress=False)
    assert [p.name for p in written] == ["a_mask.zarr", "b_mask.zarr"]
    np.testing.assert_array_equal(zarr.open_array(str(written[0]), mode="r")[:], zarr.open_array(str(written[1]), mode="r")[:])


def test_an_input_too_large_that_cannot_be_streamed_is_refused_with_how_to_convert_it(artifact, tmp_path, rng):
    from unetkit.inference.files import predict_files

    write_png(tmp_path / "huge.png", rng.integers(0, 255, (120, 100, 3), dtype=np.uint8))
    tifffile.imwrite(tmp_path / "strip.tif", rng.integers(0, 255, (120, 100, 3), dtype=np.uint8), rowsperstrip=120)
    with pytest.raises(Exception, match=r"^\S*huge.png: 100x120 PNG needs about .* over --max-memory .* cannot be streamed; "
                                        r"convert it to a tiled BigTIFF first, e.g. `vips tiffsave .*huge.png .*huge.tif") as e:
        predict_files(artifact, [tmp_path / "huge.png"], tmp_path / "out", backend="torch", progress=False, max_memory=1000)
    assert "gdal_translate -co TILED=YES" in str(e.value)
    with pytest.raises(Exception, match=r"strip.tif: 100x120 one-strip TIFF needs"):
        predict_files(artifact, [tmp_path / "strip.tif"], tmp_path / "out", backend="torch", progress=False, max_memory=1000)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_predict_is_traced_input_by_input_under_the_callers_trace(artifact, tmp_path, rng, monkeypatch):
    """OpenTelemetry spans of a predict run (the SDK's in-memory exporter): the root is a child of the
    TRACEPARENT variable's trace; each input is read -> forward -> postprocess -> write; a bad input's
    span and the root say it failed."""
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra (pip install 'unetkit[otel]')")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from unetkit.errors import InputError
    from unetkit.inference.files import predict_files
    from unetkit.tracing import Tracing

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a", "b"):
        write_png(folder / f"{name}.png", rng.integers(0, 255, (40, 36, 3), dtype=np.uint8))
    (folder / "c.png").write_bytes(b"not a png")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setenv("TRACEPARENT", f"00-{TRACE}-{PARENT}-01")
    with pytest.raises(InputError, match=r"1 of 3 inputs failed .*c\.png"):
        predict_files(artifact, [folder], tmp_path / "out", progress=False, backend="torch",
                      tracing=Tracing(provider, "unetkit.predict"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_mask.png", "b_mask.png"]

    spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {TRACE}
    [root] = [s for s in spans if s.name == "predict"]
    assert format(root.parent.span_id, "016x") == PARENT and root.status.status_code == StatusCode.ERROR
    assert root.attributes["unetkit.inputs"] == 3 and root.attributes["unetkit.failed"] == 1
    assert root.attributes["unetkit.predicted"] == 2 and root.status.description == "1 of 3 inputs failed"
    children = lambda span: [s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id]  # noqa: E731
    assert [s.name for s in children(root)] == ["load model", "predict input", "predict input", "predict input"]
    assert children(root)[0].attributes["unetkit.backend"] == "torch"
    inputs = {Path(s.attributes["unetkit.input"]).name: s for s in children(root)[1:]}
    for name in ("a.png", "b.png"):
        assert [s.name for s in children(inputs[name])] == ["read", "forward", "postprocess", "write"]
        assert inputs[name].attributes["unetkit.pixels"] == 40 * 36 and inputs[name].status.is_ok
        write = children(inputs[name])[-1]
        assert write.attributes["unetkit.files"] == (str(tmp_path / "out" / name.replace(".png", "_mask.png")),)
    assert inputs["c.png"].status.status_code == StatusCode.ERROR and "c.png" in inputs["c.png"].status.description
    assert all(s.start_time <= s.end_time for s in spans)


def test_unetkit_predict_sends_its_spans_to_a_real_otlp_receiver(artifact, tmp_path, rng, monkeypatch):
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra (pip install 'unetkit[otel]')")
    from tests.serve.otlp_receiver import OtlpReceiver
    from tests.test_cli import run_cli

    write_png(tmp_path / "a.png", rng.integers(0, 255, (40, 36, 3), dtype=np.uint8))
    receiver = OtlpReceiver()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("TRACEPARENT", f"00-{TRACE}-{PARENT}-01")
        proc = run_cli("predict", str(artifact), str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--backend", "torch")
        assert proc.returncode == 0, proc.stderr
    finally:
        receiver.close()
    assert (tmp_path / "out" / "a_mask.png").is_file()
    assert {s["name"] for s in receiver.spans} == {"predict", "load model", "predict input", "read", "forward",
                                                   "postprocess", "write"}
    [root] = [s for s in receiver.spans if s["name"] == "predict"]
    assert root["service"] == "unetkit-predict" and root["trace_id"] == TRACE and root["parent_span_id"] == PARENT
    assert all(s["trace_id"] == TRACE for s in receiver.spans)


def test_tta_views_a_caller_names_must_be_among_the_models_own(artifact, tmp_path):
    art = load_artifact(artifact)  # trained with every flip and turn: its own views are the dihedral set
    assert tile_config_for(art, {"tta": True, "tta_views": "flips"}) == TileConfig(tile_size=(32, 32), tta=True,
                                                                                   tta_views="flips")
    upright = load_artifact(tiny_artifact(tmp_path / "upright.unetkit", train_config={"augment": {"flip_vertical": False}}))
    assert tile_config_for(upright).tta_views == tile_config_for(upright, {"tta_views": "mirror"}).tta_views == "mirror"
    for asked in ("flips", "dihedral"):
        with pytest.raises(ConfigError, match=f"TTA views '{asked}' include views this model was not trained on "
                                              r"\(its own: 'mirror'\); choose mirror$"):
            tile_config_for(upright, {"tta_views": asked})
    assert tile_config_for(upright, TileConfig(tta=True)).tta_views == "dihedral"  # a complete config, as given
    with pytest.raises(ConfigError, match="tta_views 'all': expected one of mirror, flips, dihedral"):
        tile_config_for(art, {"tta_views": "all"})


def test_unetkit_predict_tta_views_turns_tta_on_with_those_views_and_refuses_unseen_ones(artifact, tmp_path, rng,
                                                                                          monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "im.png", rng.integers(0, 255, (40, 52, 3), dtype=np.uint8))

    def predict(model: Path, out: str, *flags: str) -> tuple[list[TileConfig], np.ndarray]:
        used = engine_tilings(monkeypatch, "predict", str(model), str(images), "--out", str(tmp_path / out),
                              "--probabilities", "--backend", "torch", *flags)
        return used, tifffile.imread(tmp_path / out / "im_prob.tif")

    flips, p_flips = predict(artifact, "flips", "--tta-views", "flips")
    assert flips == [TileConfig(tile_size=(32, 32), tta=True, tta_views="flips")]
    off, p_off = predict(artifact, "off", "--tta-views", "flips", "--no-tta")
    assert off == [TileConfig(tile_size=(32, 32), tta_views="flips")]
    _, p_all = predict(artifact, "all", "--tta")
    assert np.abs(p_flips - p_off).max() > 1e-4 and np.abs(p_flips - p_all).max() > 1e-4
    upright = tiny_artifact(tmp_path / "upright.unetkit", train_config={"augment": {"flip_vertical": False}})
    result = run_cli("predict", str(upright), str(images), "--out", str(tmp_path / "no"), "--tta-views", "flips")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {upright}: TTA views 'flips' include views this model was not trained on (its own: 'mirror'); "
        "choose mirror"]
    assert not (tmp_path / "no").exists()


def test_unetkit_predict_resolutions_averages_those_scales_and_refuses_bad_ones_in_one_line(artifact, tmp_path, rng,
                                                                                            monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "im.png", rng.integers(0, 255, (40, 52, 3), dtype=np.uint8))
    used = engine_tilings(monkeypatch, "predict", str(artifact), str(images), "--out", str(tmp_path / "multi"),
                          "--backend", "torch", "--resolutions", "0.5,1")
    assert used[0] == TileConfig(tile_size=(32, 32), resolutions=(0.5, 1.0))  # then one prediction per scale
    # 0.5 (which predicts its halved image at 1.0 inside), then native
    assert [c.resolution for c in used[1:]] == [0.5, 1.0, 1.0] and not any(c.resolutions for c in used[1:])
    used = engine_tilings(monkeypatch, "predict", str(artifact), str(images), "--out", str(tmp_path / "one"),
                          "--backend", "torch", "--resolutions", "0.5")
    assert used[0] == TileConfig(tile_size=(32, 32), resolution=0.5)  # one value: that resolution alone
    for value, why in (("0.5,x", "--resolutions '0.5,x': expected comma-separated fractions of the native side, "
                                 "e.g. 0.5,0.75,1"),
                       ("0.5,1.5", "--resolutions: expected a fraction of the native resolution in (0, 1] (0.5: half "
                                   "the side), got 1.5")):
        result = run_cli("predict", str(artifact), str(images), "--out", str(tmp_path / "no"), "--resolutions", value)
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"error: {why}"], result.stderr
    assert not (tmp_path / "no").exists()
