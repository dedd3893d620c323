"""The served list under the evaluation protocol: what `/recommend` and `recommend --batch` would answer, scored.

The model rows of the quality table rank the whole catalogue with the protocol's masking; a client gets
something else: recall's candidates after its exclusion rule, the popularity channel, the ranker's blend, the
diversity rule, k items. This scores those lists. Each user's profile is what the online store holds when the
data ends just before the target (recent window, whole-history exclusion set, counters), and the stage objects
are the graph's own (`Recaller`, `RankingStage`; the exported ranker ONNX runs in process, as in batch scoring).
A target the user already had (repeat consumption) cannot be hit by a served list that excludes it: it counts as
a miss, and the share of such targets is reported beside the metrics.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from core.settings import Settings


def served_lists(settings: Settings, stage: str = "test", k: int = 10) -> dict[str, Any]:
    """HR@k / NDCG@k (mean ± SE) and coverage@k of the served top-k over the stage's users."""
    from serving.batch import LocalRanker
    from serving.contracts import UserContext
    from serving.features import FeatureReader
    from serving.ranking import RankingStage
    from serving.recall import Recaller
    from training.datasets import prepare
    from training.evaluation.metrics import coverage_at_k, hit_rate_from_ranks, mean_and_se, ndcg_from_ranks

    prepared = prepare(settings)
    users, hists, targets = prepared.eval_set(stage)  # type: ignore[arg-type]
    raw = prepared.item_ids
    ratings = _history_ratings(prepared, stage)
    reader = FeatureReader(settings)
    recaller = Recaller(settings, reader)
    ranking = RankingStage(settings, reader, client=LocalRanker(settings))
    ranking.timeout_s = 60.0  # offline: only a guard against a hung call

    async def run() -> list[list[int]]:
        out = []
        for uid, hist in zip(users.tolist(), hists, strict=True):
            ids = [int(i) for i in raw[hist]]
            r = ratings.get(uid, [])
            user = UserContext(user_id=uid, known=bool(ids), recent_items=ids[-settings.sequence_length:],
                               n_interactions=len(ids), mean_rating=float(np.mean(r)) if r else 0.0,
                               seen_items=ids)
            ranked = await ranking.rank(user, recaller.candidates(user, n=ranking.pool(uid)), k)
            out.append([it.item_id for it in ranked.items])
        return out

    lists = asyncio.run(run())
    target_ids = raw[targets]
    ranks = np.array([lst.index(t) + 1 if t in lst else k + 1 for lst, t in zip(lists, target_ids, strict=True)])
    hr, hr_se = mean_and_se(hit_rate_from_ranks(ranks, k))
    ndcg, ndcg_se = mean_and_se(ndcg_from_ranks(ranks, k))
    index = prepared.item_index
    top = np.array([[index[i] for i in lst] + [0] * (k - len(lst)) for lst in lists], dtype=np.int64)
    repeats = float(np.mean([t in set(h.tolist()) for t, h in zip(targets, hists, strict=True)]))
    had = sum(len(set(lst) & set(raw[h].tolist())) for lst, h in zip(lists, hists, strict=True))
    return {"hr_at_10": hr, "ndcg_at_10": ndcg, "hr_at_10_se": hr_se, "ndcg_at_10_se": ndcg_se,
            "coverage_at_10": coverage_at_k(top, prepared.n_items, k), "short_lists": int((top == 0).any(1).sum()),
            "already_had_share": had / max(1, sum(len(lst) for lst in lists)),  # slots the user already had
            "repeat_targets": repeats, "n_users": len(users)}


def _history_ratings(prepared, stage: str) -> dict[int, list[float]]:
    """Each user's ratings before the stage's target (train, plus valid for test): the profile's mean rating."""
    import pandas as pd

    frames = [prepared.split.train] + ([prepared.split.valid] if stage == "test" else [])
    df = pd.concat(frames)
    return {int(u): g.tolist() for u, g in df.groupby("user_id")["rating"]}
