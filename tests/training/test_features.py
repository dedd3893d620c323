"""Feast, for real: offline sources, apply, materialize, point-in-time joins (no leakage), online reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.settings import load_settings
from training.data.schema import Dataset
from training.datasets import prepare
from training.features import (
    ENTITY_OFFSET,
    feature_store,
    item_features,
    training_entities,
    user_features_at,
    user_history_table,
    user_profile_table,
)


def _tiny() -> Dataset:
    ts = pd.to_datetime([0, 10, 10, 20], unit="s", utc=True)
    inter = pd.DataFrame({"user_id": np.array([1, 1, 1, 1], np.int64), "item_id": np.array([5, 7, 6, 9], np.int64),
                          "rating": np.array([4, 5, 3, 1], np.float32), "event_type": "rate", "timestamp": ts})
    items = pd.DataFrame({"item_id": np.array([5, 6, 7, 9], np.int64), "title": list("abcd"),
                          "year": pd.array([2000, None, 1990, 1980], dtype="Int64"),
                          "genres": [["A"], ["B"], ["A", "B"], ["C"]], "tags": [[], [], [], []]})
    users = pd.DataFrame({"user_id": np.array([1], np.int64), "age": pd.array([30], dtype="Int64"),
                          "gender": ["F"], "occupation": ["writer"]})
    return Dataset("tiny", inter, items, users)


def test_profile_snapshot_per_timestamp_holds_state_after_that_moment():
    prof = user_profile_table(_tiny(), sequence_length=2)
    assert len(prof) == 3  # two events share t=10: one snapshot for that second
    assert prof["recent_items"].tolist() == [[5], [6, 7], [7, 9]]  # ties ordered by item_id, truncated to 2
    assert prof["n_interactions"].tolist() == [1, 3, 4]
    assert np.allclose(prof["mean_rating"], [4.0, 4.0, 13 / 4])
    assert prof["favourite_genres"].iloc[1][0] == "A"
    assert prof["age"].tolist() == [30, 30, 30] and prof["occupation"].iloc[0] == "writer"


def test_history_row_holds_every_non_repeatable_item_however_long_the_history():
    ds = _tiny()
    ds.interactions.loc[1, "event_type"] = "view"  # item 7
    rows = user_history_table(ds, repeatable=["view"], max_seen=10)
    assert rows["seen_items"].tolist() == [[5, 6, 9]]  # the viewed 7 may repeat; time order, ties by item id
    assert rows["event_timestamp"].tolist() == [pd.Timestamp(20, unit="s", tz="UTC")]
    assert user_history_table(ds, max_seen=2)["seen_items"].tolist() == [[7, 9]]  # the most recent kept
    n = 400
    long = pd.DataFrame({"user_id": np.full(n, 3, np.int64), "item_id": np.arange(1, n + 1, dtype=np.int64),
                         "rating": np.full(n, 4, np.float32), "event_type": "rate",
                         "timestamp": pd.to_datetime(np.arange(n), unit="s", utc=True)})
    heavy = Dataset("heavy", long, ds.items, ds.users)
    assert user_history_table(heavy)["seen_items"].iloc[0] == list(range(1, n + 1))
    assert user_profile_table(heavy, sequence_length=50)["recent_items"].iloc[-1] == list(range(351, n + 1))


def test_historical_features_never_leak_the_event_or_later_ones(feature_home, use_home):
    use_home(feature_home)
    s = load_settings()
    p = prepare(s)
    inter = p.ds.interactions.sort_values(["user_id", "timestamp", "item_id"])
    rows = inter.groupby("user_id").nth([5, 12]).reset_index(drop=True)  # mid-history examples
    got = user_features_at(s, training_entities(rows))
    assert len(got) == len(rows)
    for (_, ex), seq, n in zip(rows.iterrows(), got["recent_items"], got["n_interactions"], strict=True):
        past = inter[(inter.user_id == ex.user_id) & (inter.timestamp < ex.timestamp)]
        # features as of (t - 1s): exactly the interactions strictly before t (timestamps are whole seconds)
        past = past[past.timestamp <= ex.timestamp - ENTITY_OFFSET]
        assert n == len(past)
        assert list(seq) == past["item_id"].tolist()[-s.sequence_length :]
        future = inter[(inter.user_id == ex.user_id) & (inter.timestamp >= ex.timestamp)]
        assert not set(seq) & (set(future["item_id"]) - set(past["item_id"]))


def test_online_store_serves_the_latest_sequence(feature_home, use_home):
    use_home(feature_home)
    s = load_settings()
    store = feature_store(s)
    inter = prepare(s).ds.interactions.sort_values(["user_id", "timestamp", "item_id"])
    uid = int(inter["user_id"].iloc[0])
    online = store.get_online_features(features=store.get_feature_service("retrieval_v1"),
                                       entity_rows=[{"user_id": uid}]).to_dict()
    expected = inter[inter.user_id == uid]["item_id"].tolist()[-s.sequence_length :]
    assert online["recent_items"][0] == expected
    assert online["n_interactions"][0] == len(inter[inter.user_id == uid])
    seen = store.get_online_features(features=["user_history:seen_items"], entity_rows=[{"user_id": uid}]).to_dict()
    assert seen["seen_items"][0] == inter[inter.user_id == uid]["item_id"].tolist()  # the whole history


def test_item_features_have_content_embeddings_and_train_only_popularity(feature_home, use_home):
    use_home(feature_home)
    s = load_settings()
    p = prepare(s)
    frame = item_features(s, p.item_ids[1:])
    emb = np.stack(frame["content_embedding"].to_numpy())
    assert emb.shape == (p.n_items, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)
    counts = p.split.train["item_id"].value_counts()
    expected = counts.reindex(frame["item_id"]).fillna(0).astype(int).to_numpy()
    assert (frame["popularity"].to_numpy() == expected).all()  # valid/test interactions are not counted


def test_historical_subset_equals_the_full_query_and_refuses_names_outside_the_service(feature_home, use_home):
    use_home(feature_home)
    s = load_settings()
    p = prepare(s)
    inter = p.ds.interactions.sort_values(["user_id", "timestamp", "item_id"])
    rows = training_entities(inter.groupby("user_id").nth([3, 9]).reset_index(drop=True))
    full = user_features_at(s, rows)
    some = user_features_at(s, rows, names=["mean_rating", "n_interactions"])
    assert list(some.columns) == ["user_id", "event_timestamp", "n_interactions", "mean_rating"]
    assert some["n_interactions"].tolist() == full["n_interactions"].tolist()
    assert np.allclose(some["mean_rating"], full["mean_rating"])
    with pytest.raises(ValueError, match="no user_profile features \\['title'\\]"):
        user_features_at(s, rows, names=["title"])
