"""Leave-last-out split by (timestamp, item_id) and the id <-> index vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.errors import ConfigError, DataFormatError
from training.data.split import PAD, Split, Vocab, leave_last_out
from training.data.synthetic import generate_synthetic


def frame(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """Interactions from (user, item, unix seconds) rows."""
    users, items, secs = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "user_id": np.array(users, dtype=np.int64),
            "item_id": np.array(items, dtype=np.int64),
            "rating": np.ones(len(rows), dtype=np.float32),
            "event_type": ["rate"] * len(rows),
            "timestamp": pd.to_datetime(np.array(secs), unit="s", utc=True).astype("datetime64[ns, UTC]"),
        }
    )


def items_of(part: pd.DataFrame, user: int) -> list[int]:
    return part.loc[part["user_id"] == user, "item_id"].tolist()


def test_last_is_test_second_last_is_valid() -> None:
    # Rows deliberately out of time order.
    df = frame([(1, 50, 500), (1, 10, 100), (1, 40, 400), (1, 20, 200), (1, 30, 300)])
    split = leave_last_out(df, min_interactions=5)
    assert items_of(split.test, 1) == [50]
    assert items_of(split.valid, 1) == [40]
    assert items_of(split.train, 1) == [10, 20, 30]  # train in time order
    assert list(split.train.columns) == list(df.columns)
    assert split.train.dtypes.equals(df.dtypes)


def test_timestamp_ties_broken_by_item_id() -> None:
    # Last two events share a timestamp: the larger item id counts as later.
    df = frame([(1, 9, 900), (1, 7, 900), (1, 1, 100), (1, 2, 200), (1, 3, 300)])
    split = leave_last_out(df, min_interactions=5)
    assert items_of(split.test, 1) == [9]
    assert items_of(split.valid, 1) == [7]
    # Same answer whatever the input row order.
    again = leave_last_out(df.iloc[::-1].reset_index(drop=True), min_interactions=5)
    for part in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(split, part), getattr(again, part))


def test_users_below_minimum_dropped() -> None:
    rows = [(user, i, i) for user, n in ((1, 5), (2, 4), (3, 6)) for i in range(1, n + 1)]
    split = leave_last_out(frame(rows), min_interactions=5)
    for part in (split.train, split.valid, split.test):
        assert 2 not in set(part["user_id"])
    assert sorted(split.test["user_id"]) == [1, 3]
    assert len(split.train) == 3 + 4


def test_split_partitions_synthetic_data() -> None:
    inter = generate_synthetic(n_users=50, seed=4).interactions
    split = leave_last_out(inter, min_interactions=25)
    kept = inter.groupby("user_id").size()
    kept = kept[kept >= 25]
    assert len(split.train) + len(split.valid) + len(split.test) == kept.sum()
    for part in (split.valid, split.test):
        assert part["user_id"].is_unique
        assert set(part["user_id"]) == set(kept.index)
        assert set(part["user_id"]) <= set(split.train["user_id"])
    # Per user: train <= valid <= test in time.
    last_train = split.train.groupby("user_id")["timestamp"].max()
    test_ts = split.test.set_index("user_id")["timestamp"]
    valid_ts = split.valid.set_index("user_id")["timestamp"]
    assert (valid_ts >= last_train.reindex(valid_ts.index)).all()
    assert (test_ts >= valid_ts.reindex(test_ts.index)).all()
    # Nothing duplicated or lost.
    together = pd.concat([split.train, split.valid, split.test])
    assert not together.duplicated(["user_id", "item_id", "timestamp"]).any()


def test_split_is_frozen_and_minimum_checked() -> None:
    split = leave_last_out(frame([(1, i, i) for i in range(1, 4)]), min_interactions=3)
    assert isinstance(split, Split)
    with pytest.raises(AttributeError):
        split.train = split.test  # type: ignore[misc]
    with pytest.raises(ConfigError):
        leave_last_out(frame([(1, 1, 1)]), min_interactions=2)


def test_vocab_round_trip_and_padding() -> None:
    vocab = Vocab.from_ids(np.array([300, 100, 200, 100], dtype=np.int64))
    assert len(vocab) == 4  # three ids + padding
    ids = np.array([[200, 300], [100, 100]], dtype=np.int64)
    encoded = vocab.encode(ids)
    assert encoded.dtype == np.int64
    assert encoded.tolist() == [[2, 3], [1, 1]]
    assert PAD == 0
    assert not (encoded == PAD).any()
    np.testing.assert_array_equal(vocab.decode(encoded), ids)
    every = np.arange(1, len(vocab))
    np.testing.assert_array_equal(vocab.encode(vocab.decode(every)), every)


def test_vocab_json_round_trip_keeps_order() -> None:
    vocab = Vocab.from_list([42, 7, 1000])
    restored = Vocab.from_list(json.loads(json.dumps(vocab.to_list())))
    assert restored.to_list() == [42, 7, 1000]
    probe = np.array([1000, 42, 7])
    np.testing.assert_array_equal(restored.encode(probe), [3, 1, 2])
    np.testing.assert_array_equal(restored.encode(probe), vocab.encode(probe))


def test_vocab_unknown_id_and_bad_index() -> None:
    vocab = Vocab.from_ids([1, 2, 3])
    with pytest.raises(DataFormatError, match="id 99 ") as err:
        vocab.encode(np.array([1, 99, 3]))
    assert isinstance(err.value, KeyError)
    assert str(err.value) == "id 99 is not in the vocabulary"  # no KeyError repr quoting
    with pytest.raises(KeyError):
        vocab.encode(np.array([0]))  # below every id
    with pytest.raises(DataFormatError):
        vocab.encode(np.array([4]))  # above every id
    with pytest.raises(DataFormatError, match="index 0"):
        vocab.decode(np.array([0]))  # padding has no id
    with pytest.raises(DataFormatError, match="index 4"):
        vocab.decode(np.array([4]))
    with pytest.raises(DataFormatError):
        Vocab.from_list([1, 1])
