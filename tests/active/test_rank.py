"""Ranking a folder with real artifacts whose uncertainty is known by construction."""

import csv
import io
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.active.conftest import constant_artifact, designed_artifact, disc_image, write_gray
from unetkit.active.diversity import difference_hash, hamming, mark_duplicates
from unetkit.active.rank import Scorer, list_images, rank_folder, ranking_csv, write_ranking_csv
from unetkit.config import RankConfig, TileConfig
from unetkit.errors import InputError
from unetkit.inference.predict import iter_view_probabilities, predict_tiled


def names(ranking) -> list[str]:
    return [im.name for im in ranking.images]


@pytest.mark.parametrize("by", ["entropy", "margin", "combined"])
def test_ambiguous_images_come_first(designed, images, by):
    ranking = rank_folder(Scorer.from_artifact(designed, backend="torch"), images, RankConfig(by=by))
    assert names(ranking) == ["ambiguous.png", "faint.png", "half.png", "clear.png"]
    scores = [ranking.score(im) for im in ranking.images]
    assert scores == sorted(scores, reverse=True)
    assert ranking.images[0].scores["entropy"] > 0.9 > 0.05 > ranking.images[-1].scores["entropy"]


def test_top_aggregate_ranks_a_small_ambiguous_region_with_the_ambiguous_images(designed, images):
    """`half` is half clear, half ambiguous: the mean puts it below the uniformly faint image,
    the mean of the 5% most uncertain pixels next to the ambiguous one."""
    ranking = rank_folder(Scorer.from_artifact(designed, backend="torch"), images, RankConfig(by="entropy", aggregate="top"))
    assert names(ranking)[:2] == ["ambiguous.png", "half.png"] or names(ranking)[:2] == ["half.png", "ambiguous.png"]
    assert names(ranking)[2:] == ["faint.png", "clear.png"]


def test_a_big_confident_image_does_not_outrank_a_small_ambiguous_one(designed, tmp_path):
    folder = tmp_path / "sizes"
    write_gray(folder / "big_clear.png", disc_image(160, 235, 20))
    write_gray(folder / "small_faint.png", disc_image(40, 150, 105))
    write_gray(folder / "big_faint.png", np.tile(disc_image(40, 150, 105), (4, 4)))
    ranking = rank_folder(Scorer.from_artifact(designed, backend="torch"), folder, RankConfig(by="entropy"))
    by_name = {im.name: im for im in ranking.images}
    assert names(ranking)[-1] == "big_clear.png"
    assert by_name["small_faint.png"].scores["entropy"] == pytest.approx(by_name["big_faint.png"].scores["entropy"], abs=0.01)
    assert (by_name["big_faint.png"].height, by_name["big_faint.png"].width) == (160, 160)


def test_tta_disagreement_is_zero_for_a_flip_invariant_model_and_positive_otherwise(tmp_path, rng):
    image = rng.uniform(0, 255, (1, 40, 52)).astype(np.float32)
    config = RankConfig(by="tta")
    constant = Scorer.from_artifact(constant_artifact(tmp_path / "c.unetkit"), backend="torch").uncertainty(image, config)
    pointwise = Scorer.from_artifact(designed_artifact(tmp_path / "p.unetkit"), backend="torch").uncertainty(image, config)
    shifted = Scorer.from_artifact(designed_artifact(tmp_path / "s.unetkit", shift="left"), backend="torch").uncertainty(image, config)
    assert constant.scores["tta"] == 0.0 and constant.scores["tta_flip"] == 0.0
    assert constant.scores["entropy"] > 0.5  # uncertain, but the same in every view
    assert pointwise.scores["tta"] < 1e-9 and pointwise.scores["tta_flip"] == 0.0
    # the shifted model reads the left neighbour; a mirror makes it read the right one instead
    assert shifted.scores["tta"] > 0.3 and shifted.scores["tta_flip"] > 0.5


def test_disagreement_is_over_the_views_asked_for(tmp_path, rng):
    """A model reading the pixel above agrees with its left-right mirror, so over the mirror views it
    never disagrees; upside down or turned, it reads another neighbour."""
    model = designed_artifact(tmp_path / "up.unetkit", shift="up")
    image = rng.uniform(0, 255, (1, 40, 52)).astype(np.float32)
    config = RankConfig(by="tta")

    def disagreement(views: str | None) -> float:
        tile = {"tta_views": views} if views else None
        return Scorer.from_artifact(model, tile, backend="torch").uncertainty(image, config).scores["tta"]

    assert disagreement("mirror") < 1e-9
    assert disagreement("flips") > 0.3 and disagreement(None) > 0.3  # None: the model's own, all 8


def test_the_views_average_to_the_tta_prediction(tmp_path, rng):
    """Blending is linear: the mean of the 8 view maps is what `predict --tta` returns."""
    scorer = Scorer.from_artifact(designed_artifact(tmp_path / "s.unetkit", shift="left"), backend="torch")
    image = rng.uniform(0, 255, (1, 70, 45)).astype(np.float32)
    tile = TileConfig(tile_size=(32, 32))
    views = list(iter_view_probabilities(scorer.predictor, image, tile))
    assert len(views) == 8
    tta = predict_tiled(scorer.predictor, image, TileConfig(tile_size=(32, 32), tta=True))
    np.testing.assert_allclose(np.mean(views, axis=0), tta, atol=1e-5)


def test_the_views_mean_is_recalibrated_with_the_models_tta_temperature_as_predict_computes_it(tmp_path, rng):
    """Entropy, margin and the labels handed to annotators are those of `predict --tta` (the views' mean
    recalibrated with `tta_temperature`); the views' disagreement is theirs, unrecalibrated."""
    from unetkit.artifact import update_artifact

    path = designed_artifact(tmp_path / "s.unetkit", shift="left")
    image = rng.uniform(0, 255, (1, 40, 52)).astype(np.float32)
    config = RankConfig(by="tta")
    raw = Scorer.from_artifact(path, backend="torch").uncertainty(image, config)
    update_artifact(path, tta_temperature=0.5)
    scorer = Scorer.from_artifact(path, backend="torch")
    sharp = scorer.uncertainty(image, config)
    offline = predict_tiled(scorer.predictor, image, replace(scorer.tile, tta=True))
    np.testing.assert_allclose(sharp.probabilities, offline, atol=1e-5)
    assert sharp.scores["entropy"] < raw.scores["entropy"] - 0.01  # sharper: less uncertain
    assert sharp.scores["tta"] == pytest.approx(raw.scores["tta"]) and sharp.scores["tta_flip"] == raw.scores["tta_flip"]
    np.testing.assert_array_equal(sharp.probabilities.argmax(0), raw.probabilities.argmax(0))


def test_no_tta_ranks_without_the_tta_columns(designed, images):
    ranking = rank_folder(Scorer.from_artifact(designed, backend="torch"), images, RankConfig(by="entropy", tta=False))
    assert names(ranking)[0] == "ambiguous.png"
    assert all(math.isnan(im.scores["tta"]) for im in ranking.images)
    rows = list(csv.DictReader(io.StringIO(ranking_csv(ranking))))
    assert rows[0]["tta"] == "" and rows[0]["entropy"] != ""


def test_csv_reads_back(designed, images, tmp_path):
    ranking = rank_folder(Scorer.from_artifact(designed, backend="torch"), images, RankConfig())
    path = write_ranking_csv(ranking, tmp_path / "out" / "ranking.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["file"] for r in rows] == names(ranking)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert list(rows[0]) == ["rank", "file", "score", "entropy", "margin", "tta", "tta_flip", "combined", "height",
                             "width", "fraction_background", "fraction_object", "duplicate_of", "seconds"]
    for row, im in zip(rows, ranking.images, strict=True):
        assert float(row["score"]) == pytest.approx(im.scores["combined"], abs=1e-6)
        assert float(row["entropy"]) == pytest.approx(im.scores["entropy"], abs=1e-6)
        assert (int(row["height"]), int(row["width"])) == (48, 48)
        assert float(row["fraction_background"]) + float(row["fraction_object"]) == pytest.approx(1.0, abs=1e-5)
    clear = next(r for r in rows if r["file"] == "clear.png")
    disc = np.pi * (48 / 3) ** 2 / 48**2  # the disc is the bright class
    assert float(clear["fraction_object"]) == pytest.approx(disc, abs=0.02)
    assert not list(tmp_path.joinpath("out").glob(".*tmp"))  # atomic: no temporary left behind


def test_unreadable_and_unsuitable_files_are_skipped_by_name(designed, images):
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    from PIL import Image

    Image.new("RGB", (20, 20)).save(images / "colour.png")  # 3 channels; the model takes 1
    (images / "notes.txt").write_text("not an image")
    ranking = rank_folder(Scorer.from_artifact(designed, backend="torch"), images, RankConfig(tta=False))
    assert len(ranking.images) == 4
    assert len(ranking.failed) == 2
    broken, colour = sorted(ranking.failed)
    assert "broken.png" in broken and "unreadable or corrupt image" in broken
    assert "colour.png" in colour and "3 channel(s) but the model takes 1" in colour


def test_every_file_failing_is_an_error(designed, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"none of the 1 images could be ranked: .*a.png"):
        rank_folder(Scorer.from_artifact(designed, backend="torch"), tmp_path / "bad", RankConfig(tta=False))


def test_listing(tmp_path):
    with pytest.raises(InputError, match="nowhere: no such folder"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: the folder holds no images \(.png .tif .tiff .gif .jpg .jpeg .bmp\)$"):
        list_images(tmp_path / "empty")
    write_gray(tmp_path / "f" / "sub" / "a.png", np.zeros((4, 4)))
    (tmp_path / "f" / ".hidden.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"holds no images .* \(add --recursive to look into its subfolders\)"):
        list_images(tmp_path / "f")
    assert [p.name for p in list_images(tmp_path / "f", recursive=True)] == ["a.png"]
    with pytest.raises(InputError, match="holds no images"):  # the export folder inside is not ranked
        list_images(tmp_path / "f", recursive=True, exclude=tmp_path / "f" / "sub")
    with pytest.raises(InputError, match="is a file"):
        list_images(tmp_path / "f" / "sub" / "a.png")


def test_recursive_names_are_relative_paths(designed, images):
    write_gray(images / "more" / "clear.png", disc_image(48, 235, 20, seed=9))
    ranking = rank_folder(Scorer.from_artifact(designed, backend="torch"), images, RankConfig(recursive=True, tta=False))
    assert set(names(ranking)) == {"ambiguous.png", "faint.png", "half.png", "clear.png", "more/clear.png"}


# ---------------------------------------------------------------- near-duplicates


def textured(seed: int, size: int = 256) -> np.ndarray:
    """A smooth random texture 0..255 (flat noisy images have no stable gradients to hash)."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(np.random.default_rng(seed).normal(size=(size, size)), 10)
    return ((field - field.min()) / np.ptp(field) * 255)[None]


def test_difference_hash_finds_copies_not_different_images(rng):
    """Thresholds as measured on the 20 DRIVE test images (docs/active-learning.md): copies
    (brighter, noisier, shifted, JPEG, half size) at most 12 bits apart, distinct images 26+."""
    base = textured(1)
    copies = {
        "brighter": np.clip(base * 1.1 + 8, 0, 255),
        "noisier": np.clip(base + rng.normal(0, 5, base.shape), 0, 255),
        "shifted": np.roll(base, 2, axis=2),
        "twice the size": np.kron(base, np.ones((1, 2, 2))),
    }
    h = difference_hash(base)
    assert h.shape == (32,) and h.dtype == np.uint8
    for name, copy in copies.items():
        assert hamming(h, difference_hash(copy)) <= 16, name
    for seed in (2, 3, 4):
        assert hamming(h, difference_hash(textured(seed))) > 60


def test_mark_duplicates_keeps_the_first_of_a_group():
    a, b = np.zeros(32, np.uint8), np.full(32, 255, np.uint8)
    a2 = a.copy()
    a2[0] = 0b00000111  # 3 bits away from a
    assert mark_duplicates([a, b, a2, None], max_bits=4) == [None, None, 0, None]
    assert mark_duplicates([a, b, a2], max_bits=2) == [None, None, None]


def test_dedup_marks_the_lower_ranked_copy_and_top_k_skips_it(designed, images):
    data = (images / "ambiguous.png").read_bytes()
    (images / "ambiguous_copy.png").write_bytes(data)
    scorer = Scorer.from_artifact(designed, backend="torch")
    ranking = rank_folder(scorer, images, RankConfig(by="entropy", tta=False))  # on by default
    assert names(ranking)[:2] == ["ambiguous.png", "ambiguous_copy.png"]  # equal scores: by name
    assert ranking.images[1].duplicate_of == "ambiguous.png"
    assert [im.name for im in ranking.top(2)] == ["ambiguous.png", "faint.png"]
    off = rank_folder(scorer, images, RankConfig(by="entropy", tta=False, dedup_bits=0))
    assert all(im.duplicate_of is None for im in off.images)


def test_skip_message_names_the_file_even_when_the_error_does_not(tmp_path: Path, designed):
    folder = tmp_path / "x"
    from PIL import Image

    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "rgb.png")
    write_gray(folder / "ok.png", np.zeros((8, 8)))
    ranking = rank_folder(Scorer.from_artifact(designed, backend="torch"), folder, RankConfig(tta=False))
    assert ranking.failed[0].startswith(str(folder / "rgb.png") + ": ")


def test_scorer_tiles_at_the_patch_size_with_the_settings_given(designed):
    patch = Scorer.from_artifact(designed, backend="torch").tile.tile_size
    assert Scorer.from_artifact(designed, backend="torch").tile == TileConfig(tile_size=patch)
    assert Scorer.from_artifact(designed, {"overlap": 0.5, "tile_size": (48, 48)}, backend="torch").tile == TileConfig(
        tile_size=(48, 48), overlap=0.5)


def test_an_exported_model_ranks_as_its_artifact(designed, images):
    """`rank model.onnx`: the exported graph (calibration inside) on ONNX Runtime, tiled as its plan
    says, gives the artifact's order and scores."""
    from unetkit.export.onnx import export_artifact

    exported = export_artifact(designed).model_path
    scorer = Scorer.from_artifact(exported, backend="onnx")
    assert scorer.tile.tile_size == (32, 32) and scorer.tile.activation == "none"
    assert scorer.model_version.startswith("designed ") and scorer.model_version.split()[1] in exported.with_suffix(
        ".onnx.json").read_text()
    want = rank_folder(Scorer.from_artifact(designed, backend="torch"), images, RankConfig(by="combined"))
    got = rank_folder(scorer, images, RankConfig(by="combined"))
    assert names(got) == names(want) == ["ambiguous.png", "faint.png", "half.png", "clear.png"]
    for a, b in zip(got.images, want.images, strict=True):
        assert a.scores["entropy"] == pytest.approx(b.scores["entropy"], abs=1e-4)
        assert a.scores["tta"] == pytest.approx(b.scores["tta"], abs=1e-4)
