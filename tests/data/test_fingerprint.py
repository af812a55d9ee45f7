import json
from pathlib import Path

import numpy as np

from unetkit.data.dataset import LoadedSample
from unetkit.data.fingerprint import channel_stats, content_hash, fingerprint, summarize
from unetkit.data.io import write_png
from unetkit.data.pairing import pair_samples
from unetkit.data.spec import detect_spec


def test_channel_stats_match_numpy(rng) -> None:
    images = [
        rng.normal(5, 2, (3, 10, 12)).astype(np.float32),
        rng.normal(1, 1, (3, 7, 9)).astype(np.float32),
    ]
    mean, std = channel_stats(images)
    pixels = np.concatenate([im.reshape(3, -1) for im in images], axis=1).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(1), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(1), rtol=1e-5)


def test_fingerprint_is_json_ready_and_hash_tracks_content(shapes: Path) -> None:
    spec = detect_spec(shapes)
    samples = pair_samples(spec)
    fp = fingerprint(spec, samples)
    json.dumps(fp)
    assert fp["n_samples"] == 6 and fp["channels"] == 3 and fp["size"]["max"] == [48, 64]
    assert abs(sum(c["pixel_fraction"] for c in fp["classes"]) - 1) < 1e-9
    assert fp["classes"][3]["pixel_fraction"] < 0.03  # the rare thin lines
    assert content_hash(samples) == fp["content_sha256"]
    assert content_hash(list(reversed(samples))) == fp["content_sha256"]
    write_png(shapes / "masks" / "img_000.png", np.zeros((48, 64), np.uint8))
    assert content_hash(samples) != fp["content_sha256"]


def test_object_statistics_separate_thin_from_compact_shapes() -> None:
    labels = np.zeros((40, 40), np.uint8)
    labels[5:15, 5:15] = 1  # one 10x10 square
    labels[25:35, 25:35] = 1  # a second one
    labels[20, 2:38] = 2  # a one-pixel line
    summary = summarize(
        [LoadedSample("a", np.zeros((1, 40, 40), np.float32), labels)], ["bg", "square", "line"]
    )
    square, line = summary["classes"][1], summary["classes"][2]
    assert square["objects_per_image"] == 2 and square["object_size_p10_p50_p90"][1] == 100
    assert line["objects_per_image"] == 1 and line["erosion_survival"] == 0.0
    assert square["erosion_survival"] == 64 / 100
    assert line["mean_border_distance"] == 1.0 < square["mean_border_distance"]


def test_object_extent_is_pixel_weighted_so_fragments_do_not_hide_a_large_object() -> None:
    labels = np.zeros((40, 60), np.uint8)
    labels[2:6, 0:50] = 1  # one bar 50 px long (200 pixels) ...
    for col in range(0, 60, 4):
        labels[38, col] = 1  # ... and 15 one-pixel fragments: most objects, few pixels
    summary = summarize([LoadedSample("a", np.zeros((1, 40, 60), np.float32), labels)], ["bg", "bar"])
    bar = summary["classes"][1]
    assert bar["object_size_p10_p50_p90"][1] == 1  # counted by objects, the bar is an outlier
    assert bar["object_extent_p50"] == 50  # weighted by pixels, it is the typical object


def test_mean_row_col_places_each_class_in_the_frame() -> None:
    labels = np.full((40, 60), 2, np.uint8)  # "road" everywhere ...
    labels[:10] = 1  # ... under a "sky" in the top quarter
    summary = summarize([LoadedSample("a", np.zeros((1, 40, 60), np.float32), labels)], ["none", "sky", "road"])
    sky, road = summary["classes"][1]["mean_row_col"], summary["classes"][2]["mean_row_col"]
    np.testing.assert_allclose(sky, [0.125, 0.5])
    np.testing.assert_allclose(road, [25 / 40, 0.5])
    assert summary["classes"][0]["mean_row_col"] == [0.5, 0.5]  # absent: the centre
