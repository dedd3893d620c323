"""The transfer suite's derived data sets: written in the ml-latest layout, read back by the platform's own loader
as the same interactions (a subset chosen by the rule), titles keeping their year."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recsys.bench.transfer import derive
from training.data.movielens import load_movielens


def _ml100k(directory: Path, per_user: dict[int, int], n_items: int = 250) -> Path:
    """An ML-100K layout with `per_user[u]` ratings for user u (distinct items, increasing timestamps)."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True)
    (directory / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (directory / "u.item").write_text("".join(
        f"{i}|Film {i} ({1950 + i % 50})|01-Jan-{1950 + i % 50}||http://x/{i}|0|{i % 2}|{(i + 1) % 2}\n"
        for i in range(1, n_items + 1)))
    (directory / "u.user").write_text("".join(f"{u}|30|M|other|00000\n" for u in per_user))
    rows = [f"{u}\t{item}\t{rng.integers(1, 6)}\t{880000000 + 60 * k}\n" for u, n in per_user.items()
            for k, item in enumerate(rng.choice(np.arange(1, n_items + 1), size=n, replace=False))]
    (directory / "u.data").write_text("".join(rows))
    return directory


def _rows(ds) -> set[tuple[int, int, float, int]]:
    i = ds.interactions
    return set(zip(i["user_id"], i["item_id"], i["rating"].astype(float), i["timestamp"].astype("int64"), strict=True))


def test_heavy_keeps_exactly_the_users_with_long_histories(tmp_path: Path) -> None:
    src = load_movielens(_ml100k(tmp_path / "ml-100k", {1: 200, 2: 20, 3: 150}))
    counts = derive(tmp_path / "ml-100k", tmp_path / "heavy", "heavy")
    back = load_movielens(tmp_path / "heavy")
    assert counts == {"interactions": 350, "users": 2, "items": back.items.shape[0]}
    assert _rows(back) == {r for r in _rows(src) if r[0] in (1, 3)}  # nothing altered, user 2 gone
    titles = dict(zip(back.items["item_id"], back.items["title"], strict=True))
    years = dict(zip(back.items["item_id"], back.items["year"], strict=True))
    some = int(back.items["item_id"].iloc[0])
    assert titles[some].startswith(f"Film {some}") and years[some] == 1950 + some % 50
    genres = dict(zip(back.items["item_id"], back.items["genres"], strict=True))
    assert list(genres[some]) == (["Action"] if some % 2 else ["Comedy"])


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_keeps_a_seeded_share_of_every_users_ratings(tmp_path: Path, seed: int) -> None:
    src = load_movielens(_ml100k(tmp_path / "ml-100k", {1: 200, 2: 100}))
    derive(tmp_path / "ml-100k", tmp_path / "sparse", "sparse", seed)
    back = load_movielens(tmp_path / "sparse")
    kept = _rows(back)
    assert kept < _rows(src)
    assert 0.3 < len(kept) / 300 < 0.5  # 40 % kept, give or take sampling
    derive(tmp_path / "ml-100k", tmp_path / "again", "sparse", seed)
    assert _rows(load_movielens(tmp_path / "again")) == kept  # seeded


def test_the_report_says_whether_the_served_list_beat_both_baselines() -> None:
    from recsys.bench.report import transfer_report

    def q(ndcg: float) -> dict[str, float]:
        return {"hr_at_10": 2 * ndcg, "hr_at_10_se": 0.01, "ndcg_at_10": ndcg, "ndcg_at_10_se": 0.005}

    def one(served: float) -> dict:
        return {"derived": {"users": 300, "items": 1600, "interactions": 60000}, "pipeline_s": 200.0,
                "served": {**q(served), "already_had_share": 0.0}, "retrieval": q(0.05), "ranker": q(0.05),
                "ease": q(0.04), "mostpop": q(0.02),
                "plain_sasrec": {**q(0.045), "dropout": 0.2, "stopped_by_dropout": {"0.2": "patience"}}}

    result = {"heavy": one(0.05), "sparse": one(0.042)}
    text = "\n".join(transfer_report(result))
    assert "heavy ({'min_ratings': 100}): served list above EASE and the plain SASRec" in text
    assert "sparse ({'keep': 0.4}): served list NOT above" in text  # above EASE, below the plain SASRec
    assert text.count("| served list |") == 2

    from recsys.bench.report import readme_block

    block = readme_block({"started": "2026-12-02T12:00:00", "transfer": result,
                          "machine": {"commit": "abc", "cpu": "x", "cores": 2}}, Path("r.json"))
    assert "derived `sparse` set (opt-in transfer suite): served list / plain SASRec / EASE | 0.042 / 0.045 / 0.040" \
        in block


def test_wide_adds_a_rated_long_tail_with_sparse_ids_and_half_stars(tmp_path: Path) -> None:
    from recsys.bench.transfer import _widen

    src = load_movielens(_ml100k(tmp_path / "ml-100k", {u: 60 for u in range(1, 21)}))
    inter, items = _widen(src.interactions, src.items, 600, np.random.default_rng(0))
    assert len(items) == 600 and items["item_id"].is_unique
    assert set(inter["item_id"]) == set(items["item_id"])  # every made-up movie was rated at least once
    assert items["item_id"].max() > 2 * len(items)  # sparse ids, as ml-latest's
    assert (inter["rating"] % 1 == 0.5).any() and inter["rating"].between(0.5, 5).all()
    real = dict(zip(src.items["item_id"], src.items["title"], strict=True))
    title = dict(zip(items["item_id"], items["title"], strict=True))
    inter = inter.assign(title=inter["item_id"].map(title))
    is_real = inter["title"].isin(set(real.values()))
    assert is_real.sum() == len(src.interactions) and (~is_real).sum() > 0
    source = {(int(u), real[i], int(t.value)): float(r) for u, i, r, t in
              zip(src.interactions["user_id"], src.interactions["item_id"], src.interactions["rating"],
                  src.interactions["timestamp"], strict=True)}
    for u, name, r, t in inter.loc[is_real, ["user_id", "title", "rating", "timestamp"]].itertuples(index=False):
        assert source[(int(u), name, int(t.value))] - float(r) in (0.0, 0.5)  # the same rating, or half a star less
    span = src.interactions.groupby("user_id")["timestamp"].agg(["min", "max"])
    tail = inter[~is_real]
    assert ((tail["timestamp"].to_numpy() >= span.loc[tail["user_id"], "min"].to_numpy())
            & (tail["timestamp"].to_numpy() <= span.loc[tail["user_id"], "max"].to_numpy())).all()
    per_movie = tail.groupby("item_id").size()
    assert (per_movie == 1).mean() > 0.3 and per_movie.max() <= 20  # mostly rated once: a long tail


def test_wide_is_written_in_the_ml_latest_layout_and_seeded(tmp_path: Path, monkeypatch) -> None:
    from recsys.bench import transfer

    monkeypatch.setitem(transfer.DERIVED, "wide", {"keep": 0.8, "items": 500})
    _ml100k(tmp_path / "ml-100k", {u: 40 for u in range(1, 11)})
    counts = derive(tmp_path / "ml-100k", tmp_path / "wide", "wide", 3)
    back = load_movielens(tmp_path / "wide")
    assert counts == {"interactions": len(back.interactions), "users": 10, "items": len(back.items)}
    assert 250 < len(back.items) <= 500  # the kept real movies and the whole tail
    derive(tmp_path / "ml-100k", tmp_path / "again", "wide", 3)
    assert _rows(load_movielens(tmp_path / "again")) == _rows(back)
