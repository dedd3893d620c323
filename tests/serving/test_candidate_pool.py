"""The ranker re-orders as many of recall's candidates as its version chose on validation: the Ingress asks recall
for that many, a filtered request asks for the whole pool and the ranker still scores only its count, other
channels (popular, new) are kept, and a version without a choice re-orders the whole pool as before."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from core.artifacts import Route
from core.settings import Settings
from serving.breaker import Breaker
from serving.contracts import Candidates, RequestContext, UserContext
from serving.features import ItemRows
from serving.id_lookup import IdLookup
from serving.ranking import RankerVersion, RankingStage


class _Rows:
    def fresh(self, ids: list[int]) -> ItemRows:
        n = len(ids)
        return ItemRows(item_ids=np.asarray(ids), found=np.ones(n, bool), title=[f"t{i}" for i in ids],
                        genres=[["Drama"] if i % 2 else ["Comedy"] for i in ids], year=np.full(n, 2000),
                        popularity=np.ones(n, np.int64), item_mean_rating=np.full(n, 3.5, np.float32),
                        content=np.zeros((n, 4), np.float32))

    def derived(self, key: object, rows: ItemRows, compute) -> np.ndarray:
        return compute(rows)


class _Triton:
    """Scores every row it is sent (the first best) and remembers which items it was sent."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    async def score(self, inputs: dict, version: str, timeout_s: float) -> np.ndarray:
        n = len(inputs["item"])
        self.sent = inputs["item"][:, 0].tolist()
        return np.linspace(0.9, 0.1, n)


def _stage(tmp_path: Path, candidates: int) -> RankingStage:
    stage = object.__new__(RankingStage)
    stage.settings = Settings(home=tmp_path, recall_candidates=200, max_per_genre_share=1.0, explore_share=0.0)
    stage.items, stage.client, stage.index_of = _Rows(), _Triton(), {i: i for i in range(1, 400)}
    stage.positions = IdLookup(stage.index_of)
    stage._active = (Route("1"), {"1": RankerVersion("1", ["Drama", "Comedy"], 5, 1.0, candidates=candidates)})
    stage.timeout_s, stage.retired = 1.0, frozenset()
    stage.breaker = Breaker("ranking", 5, 2.0)
    return stage


def _cands(model: int, popular: int) -> Candidates:
    ids = list(range(1, model + popular + 1))
    return Candidates(item_ids=ids, scores=[1.0 - j / len(ids) for j in range(len(ids))],
                      channels=["exact"] * model + ["popular"] * popular, model_version="1")


def test_the_pool_is_the_versions_count_unless_a_filter_needs_the_whole_pool(tmp_path: Path) -> None:
    stage = _stage(tmp_path, candidates=50)
    assert stage.pool(7) == 50
    assert stage.pool(7, RequestContext(page="home")) == 50  # no attribute filter: nothing will be dropped
    assert stage.pool(7, RequestContext(include_genres=["Drama"])) == 200
    assert stage.pool(7, RequestContext(min_year=1990)) == 200
    assert _stage(tmp_path, candidates=0).pool(7) == 200  # a version exported before the choice: the old pool
    assert _stage(tmp_path, candidates=500).pool(7) == 200  # never more than recall is configured to give


def test_the_ranker_scores_only_its_count_of_the_model_channel_and_keeps_the_others(tmp_path: Path) -> None:
    stage = _stage(tmp_path, candidates=50)
    out = asyncio.run(stage.rank(UserContext(user_id=7, known=True), _cands(120, 10), k=10))
    sent = stage.client.sent
    assert sent == list(range(1, 51)) + list(range(121, 131))  # recall's first 50, then the popular channel
    assert len(out.items) == 10 and not out.degraded


def test_a_filtered_request_ranks_its_count_of_the_items_that_pass(tmp_path: Path) -> None:
    stage = _stage(tmp_path, candidates=50)
    ctx = RequestContext(include_genres=["Drama"])  # odd ids
    out = asyncio.run(stage.rank(UserContext(user_id=7, known=True), _cands(200, 0), k=10, context=ctx))
    sent = stage.client.sent
    assert sent == list(range(1, 101, 2))  # the first 50 dramas of the 200-item pool, in recall order
    assert all(it.item_id % 2 for it in out.items) and len(out.items) == 10


def test_a_version_without_a_choice_ranks_the_whole_pool(tmp_path: Path) -> None:
    stage = _stage(tmp_path, candidates=0)
    asyncio.run(stage.rank(UserContext(user_id=7, known=True), _cands(200, 50), k=10))
    assert len(stage.client.sent) == 250
