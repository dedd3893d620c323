"""Hand-worked checks for the pure metric functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluation import metrics as m

RANKED = np.array([[5, 7, 3, 9, 1], [2, 4, 6, 8, 10]])


def test_perfect_ranking_scores_one() -> None:
    ranked = np.array([[3, 1, 2], [1, 2, 3]])
    targets = np.array([3, 1])
    assert m.hit_rate_at_k(ranked, targets, k=1) == 1.0
    assert m.ndcg_at_k(ranked, targets, k=1) == 1.0
    assert m.mrr(ranked, targets) == 1.0


def test_no_hit_scores_zero() -> None:
    targets = np.array([42, 43])
    assert m.hit_rate_at_k(RANKED, targets, k=5) == 0.0
    assert m.ndcg_at_k(RANKED, targets, k=5) == 0.0
    assert m.mrr(RANKED, targets) == 0.0


def test_target_at_rank_three() -> None:
    targets = np.array([3])
    ranked = RANKED[:1]
    assert m.hit_rate_at_k(ranked, targets, k=10) == 1.0
    assert m.ndcg_at_k(ranked, targets, k=10) == pytest.approx(1 / math.log2(4))  # = 0.5
    assert m.ndcg_at_k(ranked, targets, k=10) == pytest.approx(0.5)
    assert m.mrr(ranked, targets) == pytest.approx(1 / 3)
    # Cut-off below the rank: HR/NDCG miss, MRR (no cut-off) still counts it.
    assert m.hit_rate_at_k(ranked, targets, k=2) == 0.0
    assert m.ndcg_at_k(ranked, targets, k=2) == 0.0


def test_mean_over_users_and_per_user_variants() -> None:
    targets = np.array([7, 10])  # ranks 2 and 5
    np.testing.assert_allclose(m.hit_rate_at_k_per_user(RANKED, targets, k=3), [1.0, 0.0])
    np.testing.assert_allclose(
        m.ndcg_at_k_per_user(RANKED, targets, k=5), [1 / math.log2(3), 1 / math.log2(6)]
    )
    np.testing.assert_allclose(m.mrr_per_user(RANKED, targets), [1 / 2, 1 / 5])
    assert m.hit_rate_at_k(RANKED, targets, k=3) == pytest.approx(0.5)
    assert m.mrr(RANKED, targets) == pytest.approx((1 / 2 + 1 / 5) / 2)


def test_rank_based_functions_agree_with_id_based() -> None:
    ranks = np.array([1, 3, 11, np.inf])
    np.testing.assert_allclose(m.hit_rate_from_ranks(ranks, k=10), [1, 1, 0, 0])
    np.testing.assert_allclose(m.ndcg_from_ranks(ranks, k=10), [1, 0.5, 0, 0])
    np.testing.assert_allclose(m.reciprocal_rank_from_ranks(ranks), [1, 1 / 3, 1 / 11, 0])
    np.testing.assert_array_equal(m.ranks_from_ranked_ids(RANKED, np.array([9, 99])), [4, np.inf])


def test_coverage() -> None:
    ranked = np.array([[1, 2, 9], [2, 3, 9], [0, 1, 9]])  # 0 = padding, never counted
    assert m.coverage_at_k(ranked, n_items=10, k=2) == pytest.approx(3 / 10)  # {1, 2, 3}
    assert m.coverage_at_k(ranked, n_items=10, k=3) == pytest.approx(4 / 10)  # {1, 2, 3, 9}


def test_mean_and_se() -> None:
    mean, se = m.mean_and_se(np.array([1.0, 0.0, 1.0, 0.0]))
    assert mean == 0.5
    # std(ddof=1) = sqrt(1/3); se = sqrt(1/3) / 2
    assert se == pytest.approx(math.sqrt(1 / 3) / 2)
    assert m.mean_and_se(np.array([0.7])) == (0.7, 0.0)
    with pytest.raises(ValueError):
        m.mean_and_se(np.array([]))


def test_auc_hand_example_with_tie() -> None:
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    # pairs (pos, neg): (0.9,0.5)=1, (0.9,0.1)=1, (0.5,0.5)=0.5, (0.5,0.1)=1 -> 3.5 / 4
    assert m.auc(labels, scores) == pytest.approx(0.875)
    assert m.auc(labels, -scores) == pytest.approx(0.125)
    assert m.auc(np.array([1, 0]), np.array([0.3, 0.3])) == pytest.approx(0.5)


def test_auc_single_class_raises() -> None:
    with pytest.raises(ValueError, match="one class"):
        m.auc(np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3]))


def test_logloss() -> None:
    labels = np.array([1, 0])
    probs = np.array([0.8, 0.4])
    assert m.logloss(labels, probs) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    # Clipping keeps a confident mistake finite: -log(1e-7) ~ 16.1.
    assert m.logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_rmse_and_mae() -> None:
    y = np.array([1.0, 2.0, 3.0])
    yhat = np.array([1.0, 4.0, 2.0])  # errors 0, -2, 1
    assert m.rmse(y, yhat) == pytest.approx(math.sqrt(5 / 3))
    assert m.mae(y, yhat) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        m.rmse(y, yhat[:2])
