"""A model trained from a MovieLens-format directory other than ML-100K serves batch recommendations.

The directory is in the ml-latest layout (ratings.csv, movies.csv with quoted titles holding commas), written
here from the project's synthetic generator with another seed, so nothing is downloaded or redistributed. The
whole CLI path runs: `recsys data --data DIR` → features → train → promote → export → `recsys recommend --batch`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


HEAVY = (5, 17)  # users who rated 170 of the 200 items: far more than the model's window (50)


def write_ml_latest(out: Path, seed: int) -> tuple[dict[int, set[int]], set[int]]:
    """ratings.csv + movies.csv; returns each user's rated items and the catalogue's ids. The HEAVY users also
    rated most of the catalogue long before their synthetic history, so only a whole-history exclusion keeps
    those items out of their lists."""
    import dataclasses

    import pandas as pd

    from training.data.synthetic import generate_synthetic

    ds = generate_synthetic(n_users=250, n_items=200, seed=seed)
    extra = []
    for u in HEAVY:
        have = set(ds.interactions.loc[ds.interactions.user_id == u, "item_id"])
        old = [i for i in ds.items["item_id"] if i not in have][: 170 - len(have)]
        extra.append(pd.DataFrame({"user_id": u, "item_id": old, "rating": 4.0, "event_type": "rate",
                                   "timestamp": pd.Timestamp("1990-01-01", tz="UTC")
                                   + pd.to_timedelta(range(len(old)), unit="min")}))
    ds = dataclasses.replace(ds, interactions=pd.concat([ds.interactions, *extra], ignore_index=True))
    out.mkdir(parents=True)
    with (out / "movies.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for it in ds.items.itertuples():
            w.writerow([it.item_id, f"Picture {it.item_id}, The ({it.year})", "|".join(it.genres)])
    rated: dict[int, set[int]] = {}
    with (out / "ratings.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["userId", "movieId", "rating", "timestamp"])
        for r in ds.interactions.itertuples():
            w.writerow([r.user_id, r.item_id, r.rating, int(r.timestamp.timestamp())])
            rated.setdefault(int(r.user_id), set()).add(int(r.item_id))
    return rated, set(ds.items["item_id"].astype(int))


def test_batch_recommendations_from_a_model_trained_on_an_ml_latest_directory(tmp_path: Path) -> None:
    rated, catalogue = write_ml_latest(tmp_path / "my-movielens", seed=11)
    home = tmp_path / "home"
    steps = (("data", "--data", str(tmp_path / "my-movielens")), ("features",), ("train", "retrieval", "--epochs", "2"),
             ("train", "ranking", "--epochs", "1"), ("promote", "all", "--force"), ("export",))
    for args in steps:
        res = run_cli(home, *args, timeout=900)
        assert res.returncode == 0, f"{args}: {res.stderr[-3000:]}"
    manifest = json.loads((home / "data" / "manifest.json").read_text())
    assert manifest["counts"]["interactions"] == sum(len(v) for v in rated.values())
    assert manifest["counts"]["items"] == len(catalogue)

    users = [5, 17, 250, 999_999]
    (tmp_path / "users.txt").write_text("\n".join(map(str, users)) + "\n")
    out = tmp_path / "recs.jsonl"
    res = run_cli(home, "recommend", "--batch", str(tmp_path / "users.txt"), "-k", "10", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["user_id"] for x in lines] == users
    assert all(len(rated[u]) == 170 for u in HEAVY)
    for x in lines[:3]:  # known users: ranked unseen items of this catalogue, from the promoted versions
        assert len(x["items"]) == 10 == len(set(x["items"])) and set(x["items"]) <= catalogue
        assert not set(x["items"]) & rated[x["user_id"]], "recommended an item the user already rated"
        assert x["model_versions"] == {"retrieval": "1", "ranker": "1"} and not x["cold_start"]
    assert lines[3]["cold_start"] and set(lines[3]["items"]) <= catalogue  # unknown user: popular items
