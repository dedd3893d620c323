"""The catalogue in the offline data: upserts join the prepared items; a warm start keeps learned rows by id."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from core.catalogue import CatalogueItem, CatalogueState, upsert_ops
from training.catalogue_data import with_catalogue
from training.data.schema import Dataset
from training.jobs.common import grow_vocabulary


def _ds() -> Dataset:
    items = pd.DataFrame({"item_id": np.array([10, 20], dtype=np.int64), "title": ["A (1990)", "B (1991)"],
                          "year": pd.array([1990, pd.NA], dtype="Int64"), "genres": [["Drama"], ["Comedy"]],
                          "tags": [[], []]})
    return Dataset("t", pd.DataFrame(), items, pd.DataFrame())


def _state(*items: CatalogueItem) -> CatalogueState:
    state = CatalogueState()
    state.apply(upsert_ops(list(items), np.zeros((len(items), 384), dtype=np.float32)))
    return state


def test_upserts_add_new_ids_and_replace_changed_rows_and_nothing_else() -> None:
    ds = _ds()
    same = CatalogueItem(item_id=10, title="A (1990)", genres=["Drama"], year=1990)
    assert with_catalogue(ds, _state(same))[1:] == (0, 0)  # already there as is: nothing rewritten
    out, added, replaced = with_catalogue(ds, _state(
        CatalogueItem(item_id=15, title="New (2024)", genres=["Drama"], year=2024, text="quiet"),
        CatalogueItem(item_id=20, title="B (1991)", genres=["Comedy", "Romance"])))
    assert (added, replaced) == (1, 1)
    assert out.items["item_id"].tolist() == [10, 15, 20]  # sorted: the vocabulary is built from this order
    row = out.items.set_index("item_id")
    assert list(row.loc[15, "tags"]) == ["quiet"] and list(row.loc[20, "genres"]) == ["Comedy", "Romance"]
    assert str(out.items["year"].dtype) == "Int64" and pd.isna(row.loc[20, "year"])


def test_a_merged_data_set_passes_the_check_every_data_load_makes() -> None:
    from training.data.schema import validate
    from training.data.synthetic import generate_synthetic

    ds = generate_synthetic(seed=0)
    first = int(ds.items["item_id"].iloc[0])
    out, added, replaced = with_catalogue(ds, _state(CatalogueItem(item_id=99_999, title="New"),
                                                     CatalogueItem(item_id=first, title="Renamed", year=2001)))
    assert (added, replaced) == (1, 1)
    validate(out)


def test_a_warm_start_moves_learned_rows_to_their_ids_and_starts_new_items_at_zero() -> None:
    old_ids = np.array([-1, 10, 20, 30])
    new_ids = np.array([-1, 10, 15, 30, 40])  # 15 and 40 new, 20 gone
    emb = torch.arange(4 * 2, dtype=torch.float32).reshape(4, 2) + 1
    state = {"items.id_emb.weight": emb, "items.content": emb * 10, "blocks.0.w": torch.ones(4, 2)}
    out = grow_vocabulary(state, old_ids, new_ids)
    got = out["items.id_emb.weight"]
    assert got.shape == (5, 2)
    assert torch.equal(got[1], emb[1]) and torch.equal(got[3], emb[3])  # 10 and 30 keep what they learned
    assert not got[2].any() and not got[4].any()  # 15 and 40 start at zero: placed by content alone
    assert torch.equal(got[0], emb[0])  # padding row stays the padding row
    assert torch.equal(out["blocks.0.w"], state["blocks.0.w"])  # not an item-row weight: untouched
    assert grow_vocabulary(state, old_ids, old_ids) is state
