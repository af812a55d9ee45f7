"""Where `drift --baseline-from DATA` takes its images: split as training split them."""

from types import SimpleNamespace

from tests import layout_fixtures as lf
from unetkit.monitor.measure import baseline_sources


def artifact(val_keys=None):
    return SimpleNamespace(meta=SimpleNamespace(train_config={"data": {"val_keys": val_keys}}))


def test_the_data_sets_own_splits_drive_the_baseline_and_its_test_split_stays_out(tmp_path):
    root = lf.release(tmp_path / "camvid")  # train 0-3, val 4-5, test 6-7
    train, val = baseline_sources(artifact(), root)
    assert [p.stem for p in train] == [f"0001TP_{i:04d}" for i in range(4)]
    assert [p.stem for p in val] == ["0001TP_0004", "0001TP_0005"]
    train, val = baseline_sources(artifact(["0001TP_0000"]), root)  # the run's own choice wins
    assert [p.stem for p in val] == ["0001TP_0000"] and len(train) == 5


def test_a_plain_image_folder_is_all_training_images(tmp_path):
    for i in range(3):
        lf.write_png(tmp_path / f"{i}.png", lf.scene(i)[0])
    train, val = baseline_sources(artifact(), tmp_path)
    assert len(train) == 3 and val == []
