import numpy as np
import pytest
import torch

from unetkit.config import TileConfig, replace
from unetkit.errors import ConfigError, InputError
from unetkit.inference.predict import (
    _shift_rows_up,
    dihedral,
    dihedral_inverse,
    iter_probability_rows,
    predict_tiled,
    sharpen,
    softmax_,
)
from unetkit.inference.tiling import gaussian_weights, tile_starts


def whole(predictor, image):
    return softmax_(predictor(image[None].copy()))[0]


def boundary_mask(shape, tile, overlap, radius):
    """Pixels within `radius` of an inner tile edge (where a tile's zero padding is felt)."""
    mask = np.zeros(shape, bool)
    for axis, size in enumerate(shape):
        for s in tile_starts(size, tile, overlap):
            for edge in (s, s + tile):
                if 0 < edge < size:
                    sl = [slice(None), slice(None)]
                    sl[axis] = slice(max(0, edge - radius), edge + radius)
                    mask[tuple(sl)] = True
    return mask


def test_tiled_matches_whole_image_without_seams(predictor, image):
    reference = whole(predictor, image)
    config = TileConfig(tile_size=(24, 24), overlap=0.5, batch_size=3)
    tiled = predict_tiled(predictor, image, config)
    assert tiled.shape == (3, 70, 61) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)
    err = np.abs(tiled - reference).max(0)
    edges = boundary_mask(image.shape[1:], 24, 0.5, radius=3)
    boundary, interior = err[edges].mean(), err[~edges].mean()
    assert err.max() < 0.02
    assert boundary <= interior + 2e-3, (boundary, interior)
    # the same test catches seams: with constant blending tile borders stand out
    flat = predict_tiled(predictor, image, TileConfig(tile_size=(24, 24), overlap=0.5, blend="constant"))
    flat_err = np.abs(flat - reference).max(0)
    assert flat_err[edges].mean() > 5 * (boundary + 1e-4)


def test_one_tile_image_is_predicted_whole(predictor):
    image = np.random.default_rng(1).uniform(0, 1, (2, 24, 24)).astype(np.float32)
    out = predict_tiled(predictor, image, TileConfig(tile_size=(24, 24)))
    assert predictor.calls == [(1, 2, 24, 24)]
    np.testing.assert_allclose(out, whole(predictor, image), atol=1e-6)


@pytest.mark.parametrize("padding,np_mode", [("reflect", "reflect"), ("constant", "constant"), ("replicate", "edge")])
def test_image_smaller_than_tile_is_padded_and_cropped(predictor, padding, np_mode):
    image = np.random.default_rng(2).uniform(0, 1, (2, 9, 14)).astype(np.float32)
    out = predict_tiled(predictor, image, TileConfig(tile_size=(16, 16), padding=padding))
    padded = np.pad(image, ((0, 0), (0, 7), (0, 2)), mode=np_mode)
    assert out.shape == (3, 9, 14)
    np.testing.assert_allclose(out, whole(predictor, padded)[:, :9, :14], atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (17, 5), (37, 53), (16, 49)])
def test_odd_sizes(predictor, shape):
    image = np.random.default_rng(3).uniform(0, 1, (2, *shape)).astype(np.float32)
    out = predict_tiled(predictor, image, TileConfig(tile_size=(16, 16), overlap=0.25, batch_size=2))
    assert out.shape == (3, *shape)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    assert max(n for n, *_ in predictor.calls) <= 2


def test_tta_is_the_mean_of_explicitly_transformed_predictions(predictor):
    image = np.random.default_rng(4).uniform(0, 1, (2, 20, 20)).astype(np.float32)
    config = TileConfig(tile_size=(20, 20))
    expected = np.zeros((3, 20, 20), np.float32)
    for k in range(4):
        for flip in (False, True):
            rotated = np.ascontiguousarray(dihedral(image[None], k, flip)[0])
            expected += dihedral_inverse(predict_tiled(predictor, rotated, config)[None], k, flip)[0] / 8
    got = predict_tiled(predictor, image, TileConfig(tile_size=(20, 20), tta=True))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(got - predict_tiled(predictor, image, config)).max() > 1e-4  # TTA changed something


def test_mirror_tta_averages_only_the_views_an_upright_model_was_trained_on(predictor):
    image = np.random.default_rng(5).uniform(0, 1, (2, 20, 20)).astype(np.float32)
    config = TileConfig(tile_size=(20, 20))
    mirrored = np.ascontiguousarray(image[..., ::-1])
    expected = (predict_tiled(predictor, image, config) + predict_tiled(predictor, mirrored, config)[..., ::-1]) / 2
    got = predict_tiled(predictor, image, TileConfig(tile_size=(20, 20), tta=True, tta_views="mirror"))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    dihedral_mean = predict_tiled(predictor, image, TileConfig(tile_size=(20, 20), tta=True))
    assert np.abs(got - dihedral_mean).max() > 1e-4  # upside-down and rotated views left out


def test_flips_tta_averages_the_four_flips_and_keeps_non_square_tiles(predictor):
    image = np.random.default_rng(6).uniform(0, 1, (2, 20, 28)).astype(np.float32)
    config = TileConfig(tile_size=(16, 24))  # non-square: a half turn keeps its shape, a quarter turn would not
    flips = [(), (-1,), (-2,), (-2, -1)]  # as is, left-right, upside-down, both: each its own inverse
    expected = sum(np.flip(predict_tiled(predictor, np.ascontiguousarray(np.flip(image, axes)), config), axes)
                   for axes in flips) / 4
    got = predict_tiled(predictor, image, TileConfig(tile_size=(16, 24), tta=True, tta_views="flips"))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(got - predict_tiled(predictor, image, replace(config, tta=True, tta_views="mirror"))).max() > 1e-4


def test_an_artifact_trained_upright_gets_mirror_tta():
    from unetkit.inference.files import trained_views

    assert trained_views({"augment": {"flip_vertical": False}}) == "mirror"
    assert trained_views({"augment": {"flip_vertical": True}}) == "dihedral"
    assert trained_views({}) == trained_views(None) == "dihedral"  # older artifacts: as before


def test_tta_on_tiles_with_non_square_tiles(predictor, image):
    out = predict_tiled(predictor, image, TileConfig(tile_size=(16, 24), tta=True, batch_size=8))
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)


def test_activation_none_blends_returned_probabilities(net, image):
    def probabilities(batch):
        with torch.inference_mode():
            return torch.softmax(net(torch.from_numpy(batch)), 1).numpy()

    a = predict_tiled(probabilities, image, TileConfig(tile_size=(24, 24), activation="none"))
    b = predict_tiled(lambda x: net(torch.from_numpy(x)).detach().numpy(), image, TileConfig(tile_size=(24, 24)))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_integer_images_are_converted(predictor):
    image = np.random.default_rng(5).integers(0, 255, (2, 12, 12), dtype=np.uint8)
    out = predict_tiled(predictor, image, TileConfig(tile_size=(8, 8)))
    np.testing.assert_allclose(out, predict_tiled(predictor, image.astype(np.float32), TileConfig(tile_size=(8, 8))))


@pytest.mark.parametrize("image,match", [
    (np.zeros((2, 0, 5), np.float32), "empty"),
    (np.zeros((5, 5), np.float32), "expected 3 dimensions"),
    (np.zeros((1, 2, 5, 5), np.float32), "expected 3 dimensions"),
    (np.zeros((3, 8, 8), np.float32), "3 channel.*model takes 2"),
    (np.array([[[0, np.nan], [0, 0]]] * 2, np.float32), "2 NaN/inf"),
    (np.array([[[0, np.inf], [0, 0]]] * 2, np.float32), "NaN/inf"),
    (np.zeros((2, 2, 2), complex), "dtype complex"),
    ([[[0.0]]], "numpy array"),
])
def test_input_errors(predictor, image, match):
    with pytest.raises(InputError, match=match):
        predict_tiled(predictor, image, TileConfig(tile_size=(8, 8)))


def test_pixel_limit(predictor):
    with pytest.raises(InputError, match="exceeds the limit of 100 pixels.*predict_stream"):
        predict_tiled(predictor, np.zeros((2, 11, 10), np.float32), TileConfig(tile_size=(8, 8)), max_pixels=100)


def test_config_errors(predictor):
    image = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ConfigError, match="tile_size is empty"):
        predict_tiled(predictor, image, TileConfig())
    with pytest.raises(ConfigError, match="batch_size"):
        predict_tiled(predictor, image, TileConfig(tile_size=(8, 8), batch_size=0))
    predictor.tile_size = (8, 8)  # an artifact's patch size is used when the config has none
    assert predict_tiled(predictor, image, TileConfig()).shape == (3, 8, 8)


def test_predictor_returning_the_wrong_shape_is_reported(image):
    with pytest.raises(ValueError, match="predictor returned"):
        predict_tiled(lambda x: x[:, :, :4], image, TileConfig(tile_size=(16, 16)))


@pytest.mark.parametrize("n", [1, 3, 5, 7, 8, 10])
def test_shift_rows_up_moves_the_unfinished_rows_to_the_top_and_zeroes_the_rest(n):
    a = np.arange(10 * 4, dtype=np.float32).reshape(10, 4) + 1
    expected = np.concatenate([a[n:], np.zeros((min(n, 10), 4), np.float32)])
    _shift_rows_up(a, n)
    np.testing.assert_array_equal(a, expected)


def test_row_blocks_share_one_buffer_and_high_overlap_still_matches(predictor, image):
    config = TileConfig(tile_size=(16, 16), overlap=0.8, batch_size=2)  # step 3: rows shift in many pieces
    blocks = [block for _, block in iter_probability_rows(predictor, lambda a, b: image[:, a:b], image.shape, config, (16, 16))]
    assert all(np.shares_memory(blocks[0], b) for b in blocks[1:])
    out = predict_tiled(predictor, image, config)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
    reference = np.zeros((3, *image.shape[1:]), np.float64)
    weight = np.zeros(image.shape[1:], np.float64)
    w = gaussian_weights((16, 16), config.sigma_scale)
    for y in tile_starts(image.shape[1], 16, 0.8):
        for x in tile_starts(image.shape[2], 16, 0.8):
            reference[:, y : y + 16, x : x + 16] += w * whole(predictor, image[:, y : y + 16, x : x + 16].copy())
            weight[y : y + 16, x : x + 16] += w
    np.testing.assert_allclose(out, reference / weight, atol=1e-5)


def test_a_model_trained_at_half_resolution_sees_the_image_halved_and_answers_at_native_size(predictor, image):
    from unetkit.data.resample import resample_image, resize_scores

    seen: list[tuple[int, ...]] = []

    def recording(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.shape)
        return predictor(batch)

    config = TileConfig(tile_size=(24, 24), overlap=0.5, batch_size=4, resolution=0.5)
    got = predict_tiled(recording, image, config)
    assert got.shape == (3, 70, 61)
    np.testing.assert_allclose(got.sum(0), 1.0, atol=1e-5)
    small = resample_image(image, 0.5)
    assert small.shape == (2, 35, 30)
    expected = resize_scores(predict_tiled(predictor, small, TileConfig(tile_size=(24, 24), overlap=0.5, batch_size=4)),
                             (70, 61))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # tiles of the halved image: 2 x 2 of 24 px cover 35 x 30, where the native image needs 4 x 4
    assert sum(s[0] for s in seen) == len(tile_starts(35, 24, 0.5)) * len(tile_starts(30, 24, 0.5)) == 4
    native = predict_tiled(predictor, image, TileConfig(tile_size=(24, 24), overlap=0.5, batch_size=4))
    assert np.abs(native - got).max() > 1e-3  # a different computation, not the native one relabelled


def test_row_by_row_prediction_refuses_a_reduced_resolution_naming_it(predictor, image):
    config = TileConfig(tile_size=(24, 24), resolution=0.5)
    with pytest.raises(ConfigError, match=r"trained at resolution 0\.5 .*in memory .* streamed"):
        next(iter_probability_rows(predictor, lambda a, b: image[:, a:b], image.shape, config, (24, 24)))
    with pytest.raises(ConfigError, match=r"TileConfig\.resolution: expected a fraction"):
        predict_tiled(predictor, image, TileConfig(tile_size=(24, 24), resolution=2.0))


def test_multi_scale_inference_is_the_mean_of_the_predictions_at_each_resolution(predictor, image):
    base = TileConfig(tile_size=(24, 24), overlap=0.5, batch_size=4)
    singles = [predict_tiled(predictor, image, replace(base, resolution=r)) for r in (0.5, 0.75, 1.0)]
    got = predict_tiled(predictor, image, replace(base, resolution=0.75, resolutions=(0.5, 0.75, 1.0)))
    assert got.shape == (3, 70, 61)
    np.testing.assert_allclose(got, sum(singles) / 3, atol=1e-6)
    assert min(np.abs(got - s).max() for s in singles) > 1e-3  # each scale changes the answer
    sharp = predict_tiled(predictor, image, replace(base, resolutions=(0.5, 0.75, 1.0), resolutions_temperature=0.5))
    np.testing.assert_allclose(sharp, sharpen(got.copy(), 0.5), atol=1e-6)  # the mean, recalibrated
    assert (sharp.argmax(0) == got.argmax(0)).all() and sharp.max(0).mean() > got.max(0).mean()
    with pytest.raises(ConfigError, match=r"TileConfig\.resolutions: expected a fraction .* got 1\.5"):
        predict_tiled(predictor, image, replace(base, resolutions=(0.5, 1.5)))
    with pytest.raises(ConfigError, match=r"multi-scale inference \(resolutions 0\.5, 1\) needs the whole image"):
        next(iter_probability_rows(predictor, lambda a, b: image[:, a:b], image.shape, replace(base, resolutions=(0.5, 1.0)),
                                   (24, 24)))


def test_the_views_mean_is_recalibrated_with_the_tta_temperature_on_every_path(predictor, image):
    """`tta_temperature` sharpens the blended views' mean, in memory and row by row alike (streaming and
    stripes run the rows); without TTA it plays no part; a temperature that is not positive is refused
    before a tile is predicted."""
    base = TileConfig(tile_size=(24, 24), overlap=0.5, batch_size=4, tta=True)
    mean = predict_tiled(predictor, image, base)
    sharp = predict_tiled(predictor, image, replace(base, tta_temperature=0.6))
    np.testing.assert_allclose(sharp, sharpen(mean.copy(), 0.6), atol=1e-6)
    assert (sharp.argmax(0) == mean.argmax(0)).all() and sharp.max(0).mean() > mean.max(0).mean()
    rows = np.concatenate([block.copy() for _, block in iter_probability_rows(
        predictor, lambda a, b: image[:, a:b], image.shape, replace(base, tta_temperature=0.6), (24, 24))], axis=1)
    np.testing.assert_array_equal(rows, sharp)
    plain = replace(base, tta=False)
    np.testing.assert_array_equal(predict_tiled(predictor, image, replace(plain, tta_temperature=0.6)),
                                  predict_tiled(predictor, image, plain))
    calls = []
    with pytest.raises(ConfigError, match=r"TileConfig\.tta_temperature 0\.0: expected a positive number"):
        predict_tiled(lambda b: calls.append(b) or predictor(b), image, replace(base, tta_temperature=0.0))
    assert not calls
