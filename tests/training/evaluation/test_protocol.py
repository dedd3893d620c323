"""Full-ranking protocol: masking, target un-masking, padding, tie-breaking and batching."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.protocol import (
    RankingReport,
    evaluate_full_ranking,
    ranks_from_scores,
    top_k_from_scores,
)

N_ITEMS = 20


def _table_score_fn(table: np.ndarray):
    """score_fn that looks rows up in a fixed (n_users, n_items + 1) table."""
    return lambda users: table[users]


def test_history_items_are_excluded() -> None:
    # Oracle-ish model: history items score highest, target next -> target must still be rank 1.
    histories = [np.array([1, 2, 3, 4, 5]), np.array([10, 11])]
    targets = np.array([6, 12])
    table = np.zeros((2, N_ITEMS + 1))
    for u, (h, t) in enumerate(zip(histories, targets, strict=True)):
        table[u, h] = 100.0
        table[u, t] = 50.0
    report = evaluate_full_ranking(_table_score_fn(table), np.arange(2), histories, targets, N_ITEMS, k=1)
    assert report.hr == 1.0
    assert report.ndcg == 1.0
    assert report.mrr == 1.0


def test_target_is_never_masked_even_if_in_history() -> None:
    histories = [np.array([1, 2, 3])]  # repeat consumption: target 2 was also seen before
    targets = np.array([2])
    table = np.zeros((1, N_ITEMS + 1))
    table[0, 2] = 10.0
    report = evaluate_full_ranking(_table_score_fn(table), np.arange(1), histories, targets, N_ITEMS, k=1)
    assert report.hr == 1.0 and report.mrr == 1.0


def test_padding_is_never_ranked() -> None:
    table = np.zeros((1, N_ITEMS + 1))
    table[0, 0] = 1e9  # a model that loves padding must not push the target down
    table[0, 7] = 1.0
    report = evaluate_full_ranking(
        _table_score_fn(table), np.arange(1), [np.array([], dtype=np.int64)], np.array([7]), N_ITEMS, k=1
    )
    assert report.mrr == 1.0
    assert report.coverage == pytest.approx(1 / N_ITEMS)  # top-1 = {7}, not padding


def test_score_fn_output_is_not_mutated() -> None:
    table = np.ones((1, N_ITEMS + 1))
    evaluate_full_ranking(_table_score_fn(table), np.arange(1), [np.array([1, 2])], np.array([3]), N_ITEMS)
    assert np.all(table == 1.0)


def test_ranks_from_scores_exact_without_ties() -> None:
    scores = np.array([[-np.inf, 0.1, 0.9, 0.5], [-np.inf, 0.3, 0.2, 0.1]])
    ranks = ranks_from_scores(scores, np.array([3, 3]), np.random.default_rng(0))
    np.testing.assert_array_equal(ranks, [2, 3])


def test_ranks_from_scores_ties_are_uniform_and_seeded() -> None:
    n_users, n_cand = 4000, 40
    scores = np.zeros((n_users, n_cand + 1))
    scores[:, 0] = -np.inf
    targets = np.full(n_users, 5)
    ranks = ranks_from_scores(scores, targets, np.random.default_rng(1))
    assert ranks.min() >= 1 and ranks.max() <= n_cand
    assert ranks.mean() == pytest.approx((n_cand + 1) / 2, abs=0.8)  # SE ~ 0.18
    np.testing.assert_array_equal(ranks, ranks_from_scores(scores, targets, np.random.default_rng(1)))


def test_all_equal_scores_give_expected_mean_rank() -> None:
    rng = np.random.default_rng(0)
    n_items, n_users, hist_len = 50, 3000, 10
    histories, targets = [], []
    for _ in range(n_users):
        items = rng.choice(np.arange(1, n_items + 1), size=hist_len + 1, replace=False)
        histories.append(items[:-1])
        targets.append(items[-1])
    targets_arr = np.array(targets)

    def constant(users: np.ndarray) -> np.ndarray:
        return np.zeros((len(users), n_items + 1))

    report = evaluate_full_ranking(constant, np.arange(n_users), histories, targets_arr, n_items, k=10)
    n_cand = n_items - hist_len
    # Uniform rank over the n_cand unmasked items: HR@10 = 10 / n_cand, E[1/rank] = H(n_cand) / n_cand.
    assert report.hr == pytest.approx(10 / n_cand, abs=4 * report.hr_se)
    harmonic = np.sum(1.0 / np.arange(1, n_cand + 1))
    assert report.mrr == pytest.approx(harmonic / n_cand, abs=4 * report.mrr_se)
    assert report.coverage == 1.0  # random tie-breaking spreads top-k over the whole catalogue
    again = evaluate_full_ranking(constant, np.arange(n_users), histories, targets_arr, n_items, k=10)
    assert again == report
    other = evaluate_full_ranking(constant, np.arange(n_users), histories, targets_arr, n_items, k=10, seed=1)
    assert other != report


def test_batching_matches_single_batch() -> None:
    rng = np.random.default_rng(3)
    n_users = 57
    table = rng.integers(0, 4, size=(n_users, N_ITEMS + 1)).astype(np.float64)  # many ties
    histories = [
        rng.choice(np.arange(1, N_ITEMS + 1), size=rng.integers(0, 6), replace=False) for _ in range(n_users)
    ]
    targets = rng.integers(1, N_ITEMS + 1, size=n_users)
    seen_batches: list[int] = []

    def score_fn(users: np.ndarray) -> np.ndarray:
        seen_batches.append(len(users))
        return table[users]

    users = np.arange(n_users)
    full = evaluate_full_ranking(score_fn, users, histories, targets, N_ITEMS, k=5, batch_size=1000)
    for bs in (1, 8, 20):
        seen_batches.clear()
        assert evaluate_full_ranking(score_fn, users, histories, targets, N_ITEMS, k=5, batch_size=bs) == full
        assert max(seen_batches) <= bs


def test_top_k_from_scores() -> None:
    scores = np.array([[-np.inf, 0.2, 0.9, 0.5, -np.inf], [-np.inf, -np.inf, -np.inf, 0.3, -np.inf]])
    top = top_k_from_scores(scores, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(top[0], [2, 3, 1])
    np.testing.assert_array_equal(top[1], [3, 0, 0])  # too few candidates -> padding fill
    # Ties at the cut-off are broken randomly: every tied item gets picked sometimes.
    tied = np.zeros((2000, 6))
    tied[:, 0] = -np.inf
    tied[:, 1] = 1.0
    picks = top_k_from_scores(tied, 2, np.random.default_rng(0))
    assert np.all(picks[:, 0] == 1)
    counts = np.bincount(picks[:, 1], minlength=6)[2:]
    assert counts.min() > 400  # ~500 each of items 2..5


def test_report_as_dict_and_validation() -> None:
    report = RankingReport(0.5, 0.3, 0.2, 0.1, 0.01, 0.02, 0.03, n_users=10, k=10)
    d = report.as_dict(prefix="val_")
    assert d["val_hr_at_10"] == 0.5 and d["val_ndcg_at_10"] == 0.3 and d["val_mrr"] == 0.2
    assert d["val_coverage_at_10"] == 0.1 and d["val_hr_at_10_se"] == 0.01 and d["val_mrr_se"] == 0.03
    table = np.zeros((1, N_ITEMS + 1))
    with pytest.raises(ValueError, match="targets"):
        evaluate_full_ranking(_table_score_fn(table), np.arange(1), [np.array([1])], np.array([0]), N_ITEMS)
    table[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_full_ranking(_table_score_fn(table), np.arange(1), [np.array([1])], np.array([2]), N_ITEMS)
