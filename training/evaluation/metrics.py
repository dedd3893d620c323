"""Offline metrics as pure numpy functions.

Ranking metrics follow the leave-last-out protocol: each user has exactly one held-out target item and a
ranked list of item ids (best first). Everything is in index space: item 0 is padding and is never a
valid recommendation or target.

Two ways in, one source of truth:

* ``*_from_ranks`` take the 1-based rank of each user's target (``np.inf`` = not ranked). The
  full-ranking protocol computes ranks directly (with random tie-breaking), so it uses these.
* ``*_per_user`` / ``*_at_k`` take ranked id lists ``(U, L)`` and targets ``(U,)``; they locate the target
  and delegate to the rank functions.

Ranker metrics (``auc``, ``logloss``, ``rmse``, ``mae``) are for pointwise second-stage models.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "auc",
    "coverage_at_k",
    "hit_rate_at_k",
    "hit_rate_at_k_per_user",
    "hit_rate_from_ranks",
    "logloss",
    "mae",
    "mean_and_se",
    "mrr",
    "mrr_per_user",
    "ndcg_at_k",
    "ndcg_at_k_per_user",
    "ndcg_from_ranks",
    "ranks_from_ranked_ids",
    "reciprocal_rank_from_ranks",
    "rmse",
]


# --------------------------------------------------------------------------------------------------- helpers
def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def _check_ranking_inputs(ranked_ids: np.ndarray, target_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ranked = np.asarray(ranked_ids)
    targets = np.asarray(target_ids)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_ids must be 2-D (users, list_len), got shape {ranked.shape}")
    if targets.ndim != 1 or targets.shape[0] != ranked.shape[0]:
        raise ValueError(f"target_ids must be 1-D with {ranked.shape[0]} entries, got shape {targets.shape}")
    return ranked, targets


def _check_pair(a: np.ndarray, b: np.ndarray, names: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{names} must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if x.size == 0:
        raise ValueError(f"{names} must be non-empty")
    return x, y


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error over users, so reports can say whether a difference is noise.

    SE = std(values, ddof=1) / sqrt(n); 0.0 when n < 2 (no spread estimate). Raises on empty input
    rather than returning NaN silently.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean_and_se needs at least one value")
    mean = float(v.mean())
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size >= 2 else 0.0
    return mean, se


# ------------------------------------------------------------------------------------------------ from ranks
def hit_rate_from_ranks(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user HR@k = 1[rank <= k]; values in {0, 1}. ``ranks`` are 1-based, ``np.inf`` = absent."""
    _check_k(k)
    return (np.asarray(ranks, dtype=np.float64) <= k).astype(np.float64)


def ndcg_from_ranks(ranks: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user NDCG@k for a single relevant item: 1 / log2(rank + 1) if rank <= k else 0; range [0, 1].

    With one target the ideal DCG is 1 (target at rank 1), so no normalisation term is needed.
    """
    _check_k(k)
    r = np.asarray(ranks, dtype=np.float64)
    out = np.zeros(r.shape, dtype=np.float64)
    hit = r <= k
    out[hit] = 1.0 / np.log2(r[hit] + 1.0)
    return out


def reciprocal_rank_from_ranks(ranks: np.ndarray) -> np.ndarray:
    """Per-user reciprocal rank 1 / rank over the full ranking (no cutoff); 0 for ``np.inf``; range [0, 1]."""
    r = np.asarray(ranks, dtype=np.float64)
    if np.any(r < 1):
        raise ValueError("ranks are 1-based; got a rank < 1")
    return 1.0 / r


def ranks_from_ranked_ids(ranked_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """1-based position of each user's target in its ranked list (first occurrence), ``np.inf`` if absent."""
    ranked, targets = _check_ranking_inputs(ranked_ids, target_ids)
    match = ranked == targets[:, None]
    found = match.any(axis=1)
    ranks = np.full(ranked.shape[0], np.inf)
    ranks[found] = match[found].argmax(axis=1) + 1.0
    return ranks


# -------------------------------------------------------------------------------------------- from id lists
def hit_rate_at_k_per_user(ranked_ids: np.ndarray, target_ids: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user HR@k: 1 if the target is among the first k ids, else 0."""
    _check_k(k)
    ranked, targets = _check_ranking_inputs(ranked_ids, target_ids)
    return hit_rate_from_ranks(ranks_from_ranked_ids(ranked[:, :k], targets), k)


def ndcg_at_k_per_user(ranked_ids: np.ndarray, target_ids: np.ndarray, k: int = 10) -> np.ndarray:
    """Per-user NDCG@k = 1 / log2(rank + 1) if the target's rank <= k else 0 (single target)."""
    _check_k(k)
    ranked, targets = _check_ranking_inputs(ranked_ids, target_ids)
    return ndcg_from_ranks(ranks_from_ranked_ids(ranked[:, :k], targets), k)


def mrr_per_user(ranked_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """Per-user reciprocal rank over the whole list ``ranked_ids``; 0 when the target is absent."""
    return reciprocal_rank_from_ranks(ranks_from_ranked_ids(ranked_ids, target_ids))


def hit_rate_at_k(ranked_ids: np.ndarray, target_ids: np.ndarray, k: int = 10) -> float:
    """HR@k = mean over users of 1[target in top-k]; range [0, 1]. Leave-last-out, one target per user."""
    return mean_and_se(hit_rate_at_k_per_user(ranked_ids, target_ids, k))[0]


def ndcg_at_k(ranked_ids: np.ndarray, target_ids: np.ndarray, k: int = 10) -> float:
    """NDCG@k = mean over users of 1 / log2(rank + 1) if rank <= k else 0; range [0, 1]; one target/user."""
    return mean_and_se(ndcg_at_k_per_user(ranked_ids, target_ids, k))[0]


def mrr(ranked_ids: np.ndarray, target_ids: np.ndarray) -> float:
    """MRR = mean over users of 1 / rank (full list, no cutoff; 0 if absent); range [0, 1]."""
    return mean_and_se(mrr_per_user(ranked_ids, target_ids))[0]


def coverage_at_k(ranked_ids: np.ndarray, n_items: int, k: int = 10) -> float:
    """Catalogue coverage@k = |union of all users' top-k| / n_items; range [0, 1].

    Detects popularity collapse that accuracy metrics hide. Only valid ids 1..n_items count, so padding
    (0) used to fill short lists is ignored.
    """
    _check_k(k)
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    ranked = np.asarray(ranked_ids)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_ids must be 2-D (users, list_len), got shape {ranked.shape}")
    top = ranked[:, :k].ravel()
    top = top[(top >= 1) & (top <= n_items)]
    return float(np.unique(top).size / n_items)


# ----------------------------------------------------------------------------------------------- ranker
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties counted 1/2; range [0, 1].

    Computed via the Mann-Whitney U statistic with mid-ranks (O(n log n)):
    AUC = (sum of positive mid-ranks - n_pos (n_pos + 1) / 2) / (n_pos * n_neg).
    Raises ValueError when labels contain a single class (AUC undefined).
    """
    y, s = _check_pair(labels, scores, "labels and scores")
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auc is undefined when labels contain only one class")
    # Mid-ranks: every member of a tie group gets the average of the 1-based ranks the group spans.
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    group_end = np.cumsum(counts)  # 1-based rank of each group's last member
    mid_rank = group_end - (counts - 1) / 2.0
    rank_sum_pos = mid_rank[inverse][pos].sum()
    return float((rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Binary cross-entropy = -mean(y log p + (1 - y) log(1 - p)), p clipped to [eps, 1 - eps]; range [0, ∞).

    Clipping keeps one confidently wrong prediction from making the mean infinite.
    """
    y, p = _check_pair(labels, probs, "labels and probs")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def rmse(y: np.ndarray, yhat: np.ndarray) -> float:
    """Root mean squared error = sqrt(mean((y - yhat)^2)); range [0, inf), penalises large errors."""
    a, b = _check_pair(y, yhat, "y and yhat")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def mae(y: np.ndarray, yhat: np.ndarray) -> float:
    """Mean absolute error = mean(|y - yhat|); range [0, inf), robust to outliers."""
    a, b = _check_pair(y, yhat, "y and yhat")
    return float(np.mean(np.abs(a - b)))
