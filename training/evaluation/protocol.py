"""Full-ranking leave-last-out evaluation shared by every model and baseline.

Protocol (why each rule exists):

* **Full ranking** over all items 1..n_items, no sampled negatives: sampled metrics are known to be
  inconsistent with full-ranking ones (Krichene & Rendle, 2020).
* **History masking**: items the user already interacted with get -inf, so a model is not rewarded or
  punished for re-recommending them; the **target is always un-masked**, even if it occurs in the history
  (repeat consumption), otherwise it could never be hit.
* **Padding** (column 0) is never ranked.
* **Random tie-breaking** with a fixed seed: breaking ties by index (or optimistically) inflates constant or
  coarse scorers; random breaking gives them their expected rank, and the seed keeps runs reproducible.
* **Batching** bounds memory to batch_size x (n_items + 1) scores; results do not depend on batch_size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from training.evaluation.metrics import (
    coverage_at_k,
    hit_rate_from_ranks,
    mean_and_se,
    ndcg_from_ranks,
    reciprocal_rank_from_ranks,
)

__all__ = ["RankingReport", "evaluate_full_ranking", "ranks_from_scores", "top_k_from_scores"]

ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RankingReport:
    """Mean ranking metrics over evaluated users, with standard errors (std(ddof=1)/sqrt(n))."""

    hr: float
    ndcg: float
    mrr: float
    coverage: float
    hr_se: float
    ndcg_se: float
    mrr_se: float
    n_users: int
    k: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat metric dict for logging, e.g. ``{"hr_at_10": .., "ndcg_at_10": ..}`` (MLflow rejects "@")."""
        k = self.k
        return {
            f"{prefix}hr_at_{k}": self.hr,
            f"{prefix}ndcg_at_{k}": self.ndcg,
            f"{prefix}mrr": self.mrr,
            f"{prefix}coverage_at_{k}": self.coverage,
            f"{prefix}hr_at_{k}_se": self.hr_se,
            f"{prefix}ndcg_at_{k}_se": self.ndcg_se,
            f"{prefix}mrr_se": self.mrr_se,
        }


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1-based rank of each row's target column with uniform random tie-breaking.

    rank = 1 + #(score > s_target) + U{0..n_ties}, where n_ties = #(score == s_target) excluding the target,
    i.e. the target lands uniformly at random inside its tie group. Scores must already be masked (-inf).
    Draws exactly one uniform per row, so splitting rows into batches does not change the result.
    """
    s = np.asarray(scores)
    t = np.asarray(targets, dtype=np.int64)
    if s.ndim != 2 or t.shape != (s.shape[0],):
        raise ValueError(f"scores must be (B, n_items + 1) and targets (B,), got {s.shape} and {t.shape}")
    target_scores = s[np.arange(s.shape[0]), t][:, None]
    n_greater = (s > target_scores).sum(axis=1)
    n_ties = (s == target_scores).sum(axis=1) - 1
    offset = np.floor(rng.random(s.shape[0]) * (n_ties + 1)).astype(np.int64)
    return 1 + n_greater + np.minimum(offset, n_ties)


def top_k_from_scores(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Top-k item ids per row, best first, ties broken uniformly at random; -inf slots become padding 0.

    O(n_items) per row: take the k-th largest score as a threshold, keep everything above it and fill the
    remaining slots from the threshold's tie group by a random key, then sort only the k winners.
    """
    s = np.asarray(scores)
    n_cols = s.shape[1]
    k = min(k, n_cols)
    key = rng.random(s.shape)
    kth = np.partition(s, n_cols - k, axis=1)[:, n_cols - k][:, None]
    # Priority: strictly above threshold (2) > in the tie group (1 + random in [0, 1)) > below (0).
    priority = np.where(s > kth, 2.0, np.where(s == kth, 1.0 + key, 0.0))
    chosen = np.argpartition(-priority, k - 1, axis=1)[:, :k]
    chosen_scores = np.take_along_axis(s, chosen, axis=1)
    chosen_keys = np.take_along_axis(key, chosen, axis=1)
    order = np.lexsort((chosen_keys, -chosen_scores), axis=1)
    ids = np.take_along_axis(chosen, order, axis=1)
    ids[np.take_along_axis(chosen_scores, order, axis=1) == -np.inf] = 0
    return ids


def _masked_scores(
    raw: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray, n_items: int
) -> np.ndarray:
    """Copy of the batch scores with padding and history at -inf but every target's own score restored."""
    scores = np.array(raw, dtype=np.float64)  # always a copy: never mutate the model's output
    if scores.shape != (len(targets), n_items + 1):
        raise ValueError(f"score_fn must return shape {(len(targets), n_items + 1)}, got {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("score_fn returned NaN scores; a NaN would silently rank the target first")
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets].copy()
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    if lengths.sum():
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
        scores[np.repeat(rows, lengths), cols] = -np.inf
    scores[:, 0] = -np.inf
    scores[rows, targets] = target_scores
    return scores


def evaluate_full_ranking(
    score_fn: ScoreFn,
    users: np.ndarray,
    histories: Sequence[np.ndarray],
    targets: np.ndarray,
    n_items: int,
    k: int = 10,
    seed: int = 0,
    batch_size: int = 256,
) -> RankingReport:
    """Leave-last-out full-ranking HR@k, NDCG@k, MRR and coverage@k over ``users``.

    ``histories[i]`` (items seen before the target) and ``targets[i]`` belong to ``users[i]``;
    ``score_fn(users[batch])`` must return float scores of shape (B, n_items + 1), column 0 = padding.
    Deterministic for a given seed and independent of ``batch_size``.
    """
    users = np.asarray(users)
    targets = np.asarray(targets, dtype=np.int64)
    n = len(users)
    if n == 0:
        raise ValueError("no users to evaluate")
    if len(histories) != n or targets.shape != (n,):
        raise ValueError(f"users ({n}), histories ({len(histories)}) and targets {targets.shape} must align")
    if targets.min() < 1 or targets.max() > n_items:
        raise ValueError(f"targets must be item indices in 1..{n_items}")
    if k < 1 or batch_size < 1:
        raise ValueError("k and batch_size must be >= 1")

    ranks, top_k = full_ranks(score_fn, users, histories, targets, n_items, k, seed, batch_size)
    hr, hr_se = mean_and_se(hit_rate_from_ranks(ranks, k))
    ndcg, ndcg_se = mean_and_se(ndcg_from_ranks(ranks, k))
    mrr, mrr_se = mean_and_se(reciprocal_rank_from_ranks(ranks))
    return RankingReport(
        hr=hr,
        ndcg=ndcg,
        mrr=mrr,
        coverage=coverage_at_k(top_k, n_items, k),
        hr_se=hr_se,
        ndcg_se=ndcg_se,
        mrr_se=mrr_se,
        n_users=n,
        k=k,
    )


def full_ranks(score_fn: ScoreFn, users: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray,
               n_items: int, k: int = 10, seed: int = 0, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Each user's target rank (1 = first) and top-k item indices under the protocol (`evaluate_full_ranking`'s
    arguments, already checked): per-user values, for paired comparisons of two scorers on the same users."""
    users = np.asarray(users)
    targets = np.asarray(targets, dtype=np.int64)
    n = len(users)
    # Independent streams so the rank draws do not depend on how many top-k keys were drawn before.
    rank_rng = np.random.default_rng(seed)
    topk_rng = np.random.default_rng([seed, 1])
    ranks = np.empty(n, dtype=np.int64)
    top_k = np.empty((n, min(k, n_items + 1)), dtype=np.int64)
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        scores = _masked_scores(score_fn(users[sl]), histories[sl], targets[sl], n_items)
        ranks[sl] = ranks_from_scores(scores, targets[sl], rank_rng)
        top_k[sl] = top_k_from_scores(scores, k, topk_rng)
    return ranks, top_k
