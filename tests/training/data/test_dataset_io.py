"""Canonical-table validation, the parquet round trip and the manifest digest."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.errors import DataFormatError, MissingStepError, RecsysError
from training.data.schema import Dataset, interactions_digest, load_dataset, save_dataset, validate
from training.data.synthetic import generate_synthetic


@pytest.fixture
def ds() -> Dataset:
    base = generate_synthetic(n_users=30, n_items=40, n_genres=4, interactions_per_user=(5, 10), seed=2)
    users = base.users.copy()
    users.loc[users["user_id"] == 3, ["age", "gender", "occupation"]] = [pd.NA, None, None]
    items = base.items.copy()
    items.loc[items["item_id"] == 5, "year"] = pd.NA
    items["tags"] = [["b", "a"] if i == 7 else [] for i in items["item_id"]]
    return replace(base, users=users, items=items)


def test_round_trip_preserves_values_and_dtypes(ds: Dataset, tmp_path: Path) -> None:
    save_dataset(ds, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "interactions.parquet", "items.parquet", "manifest.json", "users.parquet",
    ]
    back = load_dataset(tmp_path)
    assert back.name == "synthetic"
    pd.testing.assert_frame_equal(back.interactions, ds.interactions)
    pd.testing.assert_frame_equal(back.items, ds.items)
    pd.testing.assert_frame_equal(back.users, ds.users)
    assert str(back.interactions["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert type(back.items["genres"].iloc[0]) is list
    assert back.items.set_index("item_id").loc[7, "tags"] == ["b", "a"]
    assert pd.isna(back.items.set_index("item_id").loc[5, "year"])
    user3 = back.users.set_index("user_id").loc[3]
    assert pd.isna(user3["age"])
    assert user3["gender"] is None


def test_round_trip_of_all_null_columns_keeps_types(ds: Dataset, tmp_path: Path) -> None:
    # ml-latest shape: no demographics at all, no tags anywhere.
    users = ds.users.assign(
        age=pd.array([pd.NA] * len(ds.users), dtype="Int64"), gender=None, occupation=None
    )
    items = ds.items.assign(tags=[[] for _ in range(len(ds.items))])
    save_dataset(replace(ds, users=users, items=items), tmp_path)
    back = load_dataset(tmp_path)
    pd.testing.assert_frame_equal(back.users, users)
    pd.testing.assert_frame_equal(back.items, items)
    assert pq.read_schema(tmp_path / "users.parquet").field("gender").type == pa.string()
    assert pq.read_schema(tmp_path / "items.parquet").field("tags").type == pa.list_(pa.string())


def test_manifest_contents_and_stable_digest(ds: Dataset, tmp_path: Path) -> None:
    first = save_dataset(ds, tmp_path / "a")
    second = save_dataset(ds, tmp_path / "b")
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == first
    assert first["name"] == "synthetic"
    assert first["counts"] == {"interactions": len(ds.interactions), "items": 40, "users": 30}
    assert len(first["interactions_sha256"]) == 64
    assert first["interactions_sha256"] == second["interactions_sha256"]
    assert "created_at" in first
    # Row order is not content.
    shuffled = ds.interactions.sample(frac=1.0, random_state=0).reset_index(drop=True)
    assert interactions_digest(shuffled) == first["interactions_sha256"]


def test_digest_changes_with_one_rating(ds: Dataset, tmp_path: Path) -> None:
    inter = ds.interactions.copy()
    inter.loc[0, "rating"] = np.float32(5.0 if inter.loc[0, "rating"] != 5.0 else 1.0)
    changed = save_dataset(replace(ds, interactions=inter), tmp_path / "c")
    assert changed["interactions_sha256"] != interactions_digest(ds.interactions)


def test_load_without_prepared_data_names_the_step(tmp_path: Path) -> None:
    with pytest.raises(MissingStepError) as err:
        load_dataset(tmp_path)
    assert "run `recsys data` first" in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_validate_rejects_wrong_dtype_columns_and_references(ds: Dataset) -> None:
    validate(ds)
    bad_rating = ds.interactions.astype({"rating": "float64"})
    with pytest.raises(DataFormatError, match=r"interactions\.rating .*float32"):
        validate(replace(ds, interactions=bad_rating))
    naive = ds.interactions.assign(timestamp=ds.interactions["timestamp"].dt.tz_localize(None))
    with pytest.raises(DataFormatError, match="timestamp"):
        validate(replace(ds, interactions=naive))
    with pytest.raises(DataFormatError, match="unexpected"):
        validate(replace(ds, items=ds.items.assign(extra=1)))
    with pytest.raises(DataFormatError, match="genres"):
        validate(replace(ds, items=ds.items.assign(genres="Drama")))
    with pytest.raises(DataFormatError, match="not unique"):
        validate(replace(ds, users=pd.concat([ds.users, ds.users.iloc[:1]], ignore_index=True)))
    orphan = ds.interactions.copy()
    orphan.loc[0, "item_id"] = 10_000
    with pytest.raises(DataFormatError, match="item_id 10000"):
        validate(replace(ds, interactions=orphan))


def test_errors_render_as_one_line() -> None:
    err = DataFormatError("first\nsecond")
    assert isinstance(err, RecsysError)
    assert str(err) == "first second"
