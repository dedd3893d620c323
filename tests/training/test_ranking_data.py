"""Ranker training rows see the protocol's history: every training item strictly before the positive."""

from __future__ import annotations

import numpy as np

from core.settings import load_settings
from training.datasets import prepare
from training.ranking_data import training_histories, training_positives


def test_each_positive_sees_exactly_the_training_items_before_it(feature_home, use_home) -> None:
    use_home(feature_home)
    prepared = prepare(load_settings())
    pos = training_positives(prepared, per_user=5)
    hists = training_histories(prepared, pos)
    train = prepared.split.train
    assert len(pos) == len(hists) and pos.groupby("user_id").size().max() == 5
    for row, hist in zip(pos.itertuples(), hists, strict=True):
        mine = train[train["user_id"] == row.user_id]
        before = mine[(mine["timestamp"] < row.timestamp)
                      | ((mine["timestamp"] == row.timestamp) & (mine["item_id"] < row.item_id))]
        expected = before.sort_values(["timestamp", "item_id"])["item_id"].map(prepared.item_index).to_numpy()
        np.testing.assert_array_equal(hist, expected)
