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
