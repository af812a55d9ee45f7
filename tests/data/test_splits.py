import pytest

from unetkit.config import DataConfig
from unetkit.data.pairing import Sample
from unetkit.data.splits import split, spread
from unetkit.errors import DataError


def _samples(n: int) -> list[Sample]:
    return [Sample(f"{i:02d}", None, None) for i in range(n)]  # paths are not used by split


def test_fraction_split_is_deterministic_and_order_independent() -> None:
    train, val = split(_samples(20), DataConfig(val_fraction=0.25, seed=3))
    assert len(val) == 5 and len(train) == 15
    again = split(list(reversed(_samples(20))), DataConfig(val_fraction=0.25, seed=3))
    assert [s.key for s in again[1]] == [s.key for s in val]
    other = split(_samples(20), DataConfig(val_fraction=0.25, seed=4))[1]
    assert [s.key for s in other] != [s.key for s in val]


def test_explicit_val_keys_win_and_unknown_keys_are_named() -> None:
    train, val = split(_samples(5), DataConfig(val_keys=("01", "03")))
    assert [s.key for s in val] == ["01", "03"] and len(train) == 3
    with pytest.raises(DataError, match=r"data\.val_keys: unknown keys \['99'\]"):
        split(_samples(5), DataConfig(val_keys=("99",)))


def test_edge_cases() -> None:
    assert split(_samples(3), DataConfig(val_fraction=0.0)) == (_samples(3), [])
    assert len(split(_samples(2), DataConfig(val_fraction=0.9))[0]) == 1  # always keeps training data
    with pytest.raises(DataError, match=r"1 sample\(s\) cannot be split"):
        split(_samples(1), DataConfig(val_fraction=0.2))


def test_spread_keeps_the_ends_and_spaces_the_rest_evenly() -> None:
    assert spread(range(3), 5) == [0, 1, 2]
    assert spread(range(10), 4) == [0, 3, 6, 9]
    assert spread(list("abcde"), 1) == ["a"] and spread([], 3) == []


def test_the_data_sets_own_splits_come_first_and_test_never_trains() -> None:
    given = {"train": ("00", "01", "02"), "val": ("03",), "test": ("04", "05")}
    train, val = split(_samples(6), DataConfig(), given)
    assert [s.key for s in train] == ["00", "01", "02"] and [s.key for s in val] == ["03"]
    train, val = split(_samples(6), DataConfig(val_keys=("00",)), given)  # --val-keys: a manual choice
    assert [s.key for s in val] == ["00"] and [s.key for s in train] == ["01", "02", "03"]
    only_test = {"test": ("04", "05")}  # no val split: a fraction of the rest
    train, val = split(_samples(6), DataConfig(val_fraction=0.25), only_test)
    assert len(val) == 1 and {s.key for s in train + val} == {"00", "01", "02", "03"}
    with pytest.raises(DataError, match=r"data\.val_keys: keys of the test split \['04'\]"):
        split(_samples(6), DataConfig(val_keys=("04",)), given)
