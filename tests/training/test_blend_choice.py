"""The ranker's candidate count is chosen on validation by the one-standard-error rule over the users' paired
differences: a larger pool is kept only when it beats a smaller one by more than noise."""

from __future__ import annotations

import numpy as np

from training.jobs.ranking import _within_one_se


def test_a_count_within_noise_of_the_best_is_accepted_and_a_worse_one_is_not() -> None:
    rng = np.random.default_rng(0)
    best = rng.random(1000)
    assert _within_one_se(best, best)  # the same lists: no difference
    noisy = best + rng.normal(0, 0.1, 1000) - 0.001  # a tiny loss, far below its standard error
    assert _within_one_se(noisy, best)
    worse = best - 0.02 + rng.normal(0, 0.01, 1000)  # consistently lower: ~60 standard errors below
    assert not _within_one_se(worse, best)
    # the error is paired: a difference small against the users' spread but steady across them is still a loss
    assert not _within_one_se(best - 0.005, best + 0.0)


def test_the_ranker_reorders_recall_only_where_validation_shows_more_than_noise() -> None:
    """Per count, the largest recall weight within one standard error of the best weight: recall's own order
    (weight 1000) unless a smaller weight beats it steadily."""
    from training.jobs.ranking import choose_blend

    rng = np.random.default_rng(1)
    recall_order = rng.random(943)
    noisy_gain = recall_order + rng.normal(0.002, 0.15, 943)  # +0.002 against a paired SE of ~0.005
    grid = {(25, 0.5): noisy_gain, (25, 1000.0): recall_order}
    choice = choose_blend(grid)
    assert float(noisy_gain.mean()) > float(recall_order.mean())  # the best mean, yet noise: not chosen
    assert (choice.candidates, choice.weight) == (25, 1000.0)
    steady_gain = recall_order + 0.01 + rng.normal(0, 0.01, 943)  # ~30 standard errors above
    choice = choose_blend({(25, 0.5): steady_gain, (25, 1000.0): recall_order})
    assert choice.weight == 0.5 and choice.ndcg[25] == round(float(steady_gain.mean()), 5)
    # the count rule still prefers the smaller pool within noise, each count judged at its best weight
    grid = {(25, 0.5): steady_gain, (25, 1000.0): recall_order,
            (50, 0.5): steady_gain + rng.normal(0.001, 0.05, 943), (50, 1000.0): recall_order}
    assert choose_blend(grid).candidates == 25


def test_a_pool_chosen_for_a_weight_the_rule_set_aside_is_cut_at_the_served_weight() -> None:
    """At 100 candidates the ranker's weight 4 beats 25 candidates steadily, so the count rule keeps 100; but at 100
    weight 4 is within noise of recall's own order, so recall's order is served. At that order 25 candidates answer
    the same within noise: serving 100 would only make the ranker score four times the rows."""
    from training.jobs.ranking import choose_blend

    rng = np.random.default_rng(2)
    recall_order = rng.random(943)
    noise = rng.normal(0.0, 0.3, 943)
    near_ties = recall_order + noise - noise.mean()  # the ranker breaking near-ties among 100: noise, no gain
    grid = {(25, 4.0): recall_order - 0.01, (25, 1000.0): recall_order,
            (100, 4.0): recall_order + 0.004 + rng.normal(0, 0.001, 943), (100, 1000.0): near_ties}
    choice = choose_blend(grid)
    assert max(grid, key=lambda cw: float(grid[cw].mean()))[0] == 100  # the count rule's pick, before the last step
    assert (choice.candidates, choice.weight) == (25, 1000.0)
    # a weight that is served keeps the pool it was chosen with
    grid[100, 1000.0] = recall_order - 0.01 + rng.normal(0, 0.001, 943)
    choice = choose_blend(grid)
    assert (choice.candidates, choice.weight) == (100, 4.0)
