"""The score an answer carries is the one its order was made from (the diversity rule picks the set, the blend
orders it), with its parts beside it; a degraded ranking is recall's scores in recall's order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from core.artifacts import Route
from core.settings import Settings
from serving.breaker import Breaker
from serving.contracts import Candidates, UserContext
from serving.features import ItemRows
from serving.id_lookup import IdLookup
from serving.ranking import RankerVersion, RankingStage

GENRES = [["Drama"], ["Drama"], ["Drama"], ["Comedy"], ["Action"], ["Drama"]]


class _Rows:
    def fresh(self, ids: list[int]) -> ItemRows:
        n = len(ids)
        return ItemRows(item_ids=np.asarray(ids), found=np.ones(n, bool), title=[f"t{i}" for i in ids],
                        genres=[GENRES[i - 1] for i in ids], year=np.full(n, 2000), popularity=np.ones(n, np.int64),
                        item_mean_rating=np.full(n, 3.5, np.float32), content=np.zeros((n, 4), np.float32))

    def derived(self, key: object, rows: ItemRows, compute) -> np.ndarray:
        return compute(rows)


class _Triton:
    def __init__(self, p: np.ndarray | None) -> None:
        self.p = p

    async def score(self, inputs: dict, version: str, timeout_s: float) -> np.ndarray:
        if self.p is None:
            raise ConnectionError("down")
        return self.p


def _stage(tmp_path: Path, p: np.ndarray | None) -> RankingStage:
    stage = object.__new__(RankingStage)  # the stage's rules without Feast, Triton or an export
    stage.settings = Settings(home=tmp_path, max_per_genre_share=0.25, explore_share=0.0)
    stage.items, stage.client, stage.index_of, stage.positions = _Rows(), _Triton(p), {}, IdLookup()
    stage._active = (Route("1"), {"1": RankerVersion("1", ["Drama", "Comedy", "Action"], 5, 0.0)})
    stage.timeout_s, stage.retired = 1.0, frozenset()
    stage.breaker = Breaker("ranking", 5, 2.0)
    return stage


def _cands() -> Candidates:
    return Candidates(item_ids=[1, 2, 3, 4, 5, 6], scores=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], channels=["ann"] * 6,
                      model_version="1")


def test_the_score_is_the_order_after_the_diversity_rule_and_names_its_parts(tmp_path: Path) -> None:
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.6])  # the ranker prefers the dramas
    out = asyncio.run(_stage(tmp_path, p).rank(UserContext(user_id=1, known=True), _cands(), k=4))
    ids = [it.item_id for it in out.items]
    # the rule: one item per first genre while others remain, then the best deferred drama fills the fourth slot
    assert ids.count(1) and sum(GENRES[i - 1] == ["Drama"] for i in ids) == 2
    scores = [it.score for it in out.items]
    assert scores == sorted(scores, reverse=True)  # the column is the order
    assert all(set(it.score_parts) == {"p_click", "recall"} for it in out.items)
    assert [it.score_parts["p_click"] for it in out.items if it.item_id in (1, 2)] == [0.9, 0.8]
    assert not out.degraded


def test_a_degraded_ranking_answers_recall_scores_in_their_order(tmp_path: Path) -> None:
    out = asyncio.run(_stage(tmp_path, None).rank(UserContext(user_id=1, known=True), _cands(), k=3))
    assert out.degraded is not None and out.model_version == ""
    assert [it.score for it in out.items] == sorted((it.score for it in out.items), reverse=True)
    assert all(it.score == it.score_parts["recall"] and "p_click" not in it.score_parts for it in out.items)
