"""Does the method transfer? The whole pipeline, untuned, on data sets it was not developed on, against EASE and a
plain SASRec under the same protocol (opt-in: `make bench-transfer`).

The data sets are derived from the configured MovieLens data and written in the ml-latest layout (`ratings.csv`,
`movies.csv`), so they go through `recsys data --data DIR` as a user's own export would:
- `heavy`: only users with at least 100 ratings (long histories: most of the sequence lies beyond the
  model's 50 most recent items);
- `sparse`: each user keeps a seeded 40 % of their ratings, in time order (a sparser catalogue: fewer
  ratings per item and per user);
- `wide`: the shape of ml-latest-small (~9.7K movies, most rated a few times; sparse movie ids up to ~190K;
  half-star ratings): a seeded 80 % of the ratings, plus a long tail of movies with made-up titles, each rated
  1-20 times (Zipf) by users drawn by their activity, inside each rater's own time span, with one of that
  user's own ratings. The tail is noise in the histories and hard targets, as rarely rated movies are: the full
  softmax then runs over ~6x the items.
The served list is scored as the quality suite scores it (`recsys.bench.served`): through the serving stages.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from core.settings import Settings

DERIVED = {"heavy": {"min_ratings": 100}, "sparse": {"keep": 0.4}, "wide": {"keep": 0.8, "items": 9_700}}
# made-up titles of `wide`'s long tail
_WORDS = ("Silent", "Broken", "Golden", "Last", "Hidden", "Crimson", "Lonely", "Wild", "Distant", "Bright", "Cold",
          "Secret", "Endless", "Little", "Midnight", "Burning", "Paper", "Glass", "Iron", "Quiet", "Lost", "Sudden",
          "Northern", "Velvet", "Savage", "Gentle", "Hollow", "Electric", "Final", "Open")
_NOUNS = ("River", "Garden", "Summer", "Road", "Harbor", "Letter", "Mirror", "Island", "Station", "Winter",
          "Promise", "Stranger", "Kingdom", "Shadow", "Song", "Frontier", "Orchard", "Bridge", "Circus", "Lantern",
          "Machine", "Valley", "Hotel", "Witness", "Journey", "Empire", "Signal", "Canyon", "Dancer", "Country",
          "Storm", "Voyage", "Castle", "Season", "Highway", "Diary", "Monster", "Engine", "Carnival", "Window")
SASREC_BUDGET_S = 200.0  # per dropout of the plain SASRec's grid on each derived set


def derive(source: Path, out: Path, kind: str, seed: int = 0) -> dict[str, int]:
    """Write the derived data set `kind` of the MovieLens directory `source` to `out` (ml-latest layout)."""
    from training.data.movielens import load_movielens

    ds = load_movielens(source)
    inter = ds.interactions.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    rule = DERIVED[kind]
    items = ds.items
    if "min_ratings" in rule:
        counts = inter.groupby("user_id")["item_id"].transform("size")
        inter = inter[counts >= rule["min_ratings"]]
    else:
        rng = np.random.default_rng(seed)
        inter = inter[rng.random(len(inter)) < rule["keep"]]
        if "items" in rule:
            inter, items = _widen(inter, items, rule["items"], rng)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"userId": inter["user_id"].to_numpy(), "movieId": inter["item_id"].to_numpy(),
                  "rating": inter["rating"].to_numpy(),
                  "timestamp": inter["timestamp"].astype("int64").to_numpy() // 10**9}).to_csv(
        out / "ratings.csv", index=False)
    items = items[items["item_id"].isin(set(inter["item_id"].tolist()))]
    with (out / "movies.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["movieId", "title", "genres"])
        for item_id, title, year, genres in zip(items["item_id"], items["title"], items["year"], items["genres"],
                                                strict=True):
            if pd.notna(year) and not str(title).rstrip().endswith(")"):
                title = f"{title} ({int(year)})"
            w.writerow([int(item_id), title, "|".join(genres) or "(no genres listed)"])
    return {"interactions": len(inter), "users": int(inter["user_id"].nunique()), "items": len(items)}


def _widen(inter: pd.DataFrame, items: pd.DataFrame, n_items: int,
           rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`wide`'s long tail, sparse ids and half stars (module docstring)."""
    n_tail = max(0, n_items - len(items))
    years = items["year"].dropna().to_numpy()
    genre_sets = list(items["genres"])
    tail_ids = np.arange(1, n_tail + 1) + int(items["item_id"].max())
    users = inter.groupby("user_id")["timestamp"].agg(["min", "max", "size"])
    share = users["size"].to_numpy(float) / users["size"].sum()
    rated = inter.groupby("user_id")["rating"].agg(list)
    rows = []
    for item in tail_ids:
        k = min(int(rng.zipf(1.8)), 20)
        for u in rng.choice(users.index.to_numpy(), size=min(k, len(users)), replace=False, p=share):
            lo, hi = users.at[u, "min"].value, users.at[u, "max"].value
            rows.append((int(u), int(item), float(rng.choice(rated[u])),
                         pd.Timestamp(int(lo + rng.random() * (hi - lo)), tz="UTC")))
    tail = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    tail["timestamp"] = tail["timestamp"].astype(inter["timestamp"].dtype)
    titles = [f"{'The ' if rng.random() < 0.3 else ''}{rng.choice(_WORDS)} {rng.choice(_NOUNS)}" for _ in tail_ids]
    new = pd.DataFrame({"item_id": tail_ids, "title": titles,
                        "year": rng.choice(years, size=n_tail) if len(years) else np.nan,
                        "genres": [genre_sets[j] for j in rng.integers(len(genre_sets), size=n_tail)]})
    items = pd.concat([items[["item_id", "title", "year", "genres"]], new], ignore_index=True)
    inter = pd.concat([inter[["user_id", "item_id", "rating", "timestamp"]], tail], ignore_index=True)
    sparse = np.sort(rng.choice(np.arange(1, 20 * len(items) + 1), size=len(items), replace=False))
    ids = dict(zip(items["item_id"].to_numpy()[rng.permutation(len(items))].tolist(), sparse.tolist(), strict=True))
    items["item_id"] = items["item_id"].map(ids)
    inter["item_id"] = inter["item_id"].map(ids)
    half = rng.random(len(inter)) < 0.3
    inter["rating"] = np.where(half & (inter["rating"] > 1), inter["rating"] - 0.5, inter["rating"])
    inter = inter.sort_values(["user_id", "timestamp", "item_id"], kind="stable").reset_index(drop=True)
    return inter, items


def transfer_one(s: Settings, kind: str, console: Console) -> dict[str, Any]:
    """Derive, run the offline pipeline on it with the defaults, score served list, models and baselines."""
    from ops.pipeline import run_offline
    from recsys.bench.served import served_lists
    from training.datasets import prepare
    from training.evaluate import evaluation_table
    from training.evaluation.sasrec import plain_sasrec

    home = s.home / "transfer" / kind
    source = s.data or s.shared_data
    counts = derive(source, home / "raw", kind, s.seed)
    t = s.model_copy(update={"home": home, "data": home / "raw"})
    before = os.environ.get("RECSYS_HOME")
    os.environ["RECSYS_HOME"] = str(home)  # processes started from here (Ray workers) read it
    try:
        run = run_offline(t, copy=False, force=True)
        rows = evaluation_table(t, "champion", baselines=True)
        served = served_lists(t, "test")
        sasrec = plain_sasrec(prepare(t), seed=t.seed, budget_s=SASREC_BUDGET_S)
    finally:
        if before is None:
            os.environ.pop("RECSYS_HOME", None)
        else:
            os.environ["RECSYS_HOME"] = before
    by_name = {r["model"]: r for r in rows}
    out = {"derived": counts, "rule": DERIVED[kind], "pipeline_s": round(sum(run.seconds.values()), 1),
           "served": served, "retrieval": rows[0], "ranker": rows[1],
           "ease": by_name["ease"], "mostpop": by_name["mostpop"],
           "plain_sasrec": {**sasrec.test.as_dict(), "dropout": sasrec.dropout,
                            "stopped_by_dropout": {str(k): v for k, v in sasrec.stopped.items()}}}
    console.print(f"transfer {kind}: served HR@10 {served['hr_at_10']:.4f} / NDCG@10 {served['ndcg_at_10']:.4f}; "
                  f"EASE {out['ease']['hr_at_10']:.4f}; plain SASRec {out['plain_sasrec']['hr_at_10']:.4f}")
    return out


def transfer_suite(s: Settings, console: Console) -> dict[str, Any]:
    return {kind: transfer_one(s, kind, console) for kind in DERIVED}
