"""Baselines on tiny planted data sets, scored through the real protocol."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.evaluation.baselines import (
    BPRMF,
    EASE,
    BaselineResult,
    ItemKNN,
    MostPopular,
    interaction_matrix,
    make_baseline,
    run_baselines,
)
from training.evaluation.protocol import evaluate_full_ranking

N_PAIRS = 8
PAIR_ITEMS = 2 * N_PAIRS


def _pair_data() -> tuple[list[np.ndarray], np.ndarray]:
    """Items come in pairs (2q-1, 2q) always consumed together.

    One user per ordered (p, q), p != q: consumes the full pair p, then the lead item 2q-1; the held-out
    target is its partner 2q. Lead items are twice as popular as partners, so MostPopular never puts the
    partner first while co-occurrence models should.
    """
    histories, targets = [], []
    for p, q in itertools.permutations(range(1, N_PAIRS + 1), 2):
        histories.append(np.array([2 * p - 1, 2 * p, 2 * q - 1]))
        targets.append(2 * q)
    return histories, np.array(targets)


def _evaluate(model, histories: list[np.ndarray], targets: np.ndarray, n_items: int, k: int):
    model.fit(histories, n_items)
    return evaluate_full_ranking(model.score, np.arange(len(targets)), histories, targets, n_items, k=k)


def test_interaction_matrix_is_binary_and_skips_padding() -> None:
    x = interaction_matrix([np.array([0, 1, 1, 3]), np.array([], dtype=np.int64)], n_items=3)
    assert x.shape == (2, 4)
    np.testing.assert_array_equal(x.toarray(), [[0, 1, 0, 1], [0, 0, 0, 0]])


def test_most_popular_ranks_by_count() -> None:
    histories = [np.array([3, 3, 1]), np.array([3, 1, 2])]  # counts: 3 -> 3, 1 -> 2, 2 -> 1, 4 -> 0
    scores = MostPopular().fit(histories, n_items=4).score(np.array([0, 1]))
    assert scores.shape == (2, 5)
    assert scores[0, 0] == -np.inf
    np.testing.assert_array_equal(np.argsort(-scores[0, 1:]) + 1, [3, 1, 2, 4])
    np.testing.assert_array_equal(scores[0], scores[1])


@pytest.mark.parametrize("model", [ItemKNN(), ItemKNN(k_neighbors=3, shrink=0.0), EASE(), EASE(l2=10.0)])
def test_cooccurrence_models_rank_partner_first(model) -> None:
    histories, targets = _pair_data()
    report = _evaluate(model, histories, targets, PAIR_ITEMS, k=1)
    assert report.hr == 1.0
    pop = _evaluate(MostPopular(), histories, targets, PAIR_ITEMS, k=1)
    assert pop.hr == 0.0 and report.mrr > pop.mrr


def test_itemknn_prunes_neighbours_and_ease_has_zero_diagonal() -> None:
    histories, _ = _pair_data()
    knn = ItemKNN(k_neighbors=2).fit(histories, PAIR_ITEMS)
    assert knn.sim is not None
    assert np.diff(knn.sim.indptr).max() <= 2
    assert np.all(knn.sim.diagonal() == 0)
    ease = EASE().fit(histories, PAIR_ITEMS)
    assert ease.weights is not None
    assert np.all(np.diag(ease.weights) == 0)


def _two_cluster_data(seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Users of cluster c consume only cluster-c items; the target is an unseen item of the same cluster."""
    rng = np.random.default_rng(seed)
    cluster_size, n_users, hist_len = 20, 120, 8
    histories, targets = [], []
    for u in range(n_users):
        items = 1 + (u % 2) * cluster_size + rng.choice(cluster_size, size=hist_len + 1, replace=False)
        histories.append(items[:-1])
        targets.append(items[-1])
    return histories, np.array(targets), 2 * cluster_size


def test_bpr_beats_random_on_two_clusters() -> None:
    histories, targets, n_items = _two_cluster_data()
    users = np.arange(len(targets))
    bpr = _evaluate(BPRMF(factors=8, epochs=30, lr=0.05, seed=0), histories, targets, n_items, k=10)

    def random_scores(batch: np.ndarray) -> np.ndarray:
        return np.random.default_rng(len(batch)).random((len(batch), n_items + 1))

    rand = evaluate_full_ranking(random_scores, users, histories, targets, n_items, k=10)
    # Random: 10 of 32 candidates -> HR@10 ~ 0.31; a perfect cluster model: 12 in-cluster candidates -> ~0.83.
    assert bpr.hr > 0.6
    assert bpr.hr > rand.hr + 3 * (bpr.hr_se + rand.hr_se)


def test_bpr_is_seeded() -> None:
    histories, _, n_items = _two_cluster_data()
    a = BPRMF(factors=4, epochs=2, seed=1).fit(histories, n_items).score(np.arange(3))
    b = BPRMF(factors=4, epochs=2, seed=1).fit(histories, n_items).score(np.arange(3))
    np.testing.assert_array_equal(a, b)


def test_run_baselines_reports_every_name() -> None:
    histories, targets = _pair_data()
    results = run_baselines(
        histories, histories, targets, PAIR_ITEMS, k=1, params={"bpr": {"factors": 4, "epochs": 2}}
    )
    assert list(results) == ["mostpop", "itemknn", "ease", "bpr"]
    assert all(isinstance(r, BaselineResult) and r.fit_seconds >= 0 for r in results.values())
    assert results["itemknn"].report.hr == 1.0 and results["ease"].report.hr == 1.0
    assert results["itemknn"].report.hr > results["mostpop"].report.hr


def test_registry_and_fit_guard() -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("nope")
    bpr = make_baseline("bpr", seed=3)
    assert isinstance(bpr, BPRMF) and bpr.seed == 3
    with pytest.raises(RuntimeError, match="fit"):
        ItemKNN().score(np.arange(1))
