"""Batches across the retrieval job's data-parallel ranks: one worker's global batches, halves of equal cost."""

from __future__ import annotations

import numpy as np
import pytest

from training.jobs.retrieval import _batches, _epoch_rows


def _epoch(weights: np.ndarray, world: int, batch: int = 32, seed: int = 3) -> list[list[np.ndarray]]:
    """Each rank's batches of one epoch: [rank][step]."""
    return [list(_batches(weights, seed, rank, world, batch // world)) for rank in range(world)]


@pytest.mark.parametrize("n_rows", [2412, 2400, 33, 31])
def test_two_ranks_split_exactly_the_global_batches_one_worker_takes(n_rows: int) -> None:
    weights = np.random.default_rng(0).integers(1, 51, n_rows)
    (one,) = _epoch(weights, 1)
    a, b = _epoch(weights, 2)
    assert len(a) == len(b)  # the ranks must take the same number of steps
    assert all(len(x) == len(y) > 0 for x, y in zip(a, b, strict=True))
    for x, y, z in zip(a, b, one, strict=False):  # one worker may take a last batch of 1 row that 2 cannot split
        assert not set(x) & set(y)
        assert set(x) | set(y) <= set(z)
        assert len(z) - len(x) - len(y) < 2  # only an odd row of the last short batch is left out
    assert sum(map(len, a)) + sum(map(len, b)) == _epoch_rows(n_rows, 16, 2)
    assert sum(map(len, one)) == n_rows == _epoch_rows(n_rows, 32, 1)


def test_each_steps_halves_carry_near_equal_work() -> None:
    """Contiguous shards of the permutation (the split before) differ by ~8 % a step on ML-100K-like windows;
    a rank waits for the heavier half at every all-reduce."""
    rng = np.random.default_rng(1)
    weights = np.where(rng.random(2412) < 0.6, 50, rng.integers(1, 50, 2412))  # full windows and short histories
    a, b = _epoch(weights, 2)
    gaps = [abs(int(weights[x].sum()) - int(weights[y].sum())) / weights.mean() for x, y in zip(a, b, strict=True)]
    assert np.median(gaps) < 0.1 and max(gaps) <= weights.max() / weights.mean()  # at most one heavy row apart
    unbalanced = np.random.default_rng(3).permutation(2412)
    before = [abs(int(weights[unbalanced[i:i + 16]].sum()) - int(weights[unbalanced[1206 + i:1206 + i + 16]].sum()))
              / weights.mean() for i in range(0, 1200, 16)]
    assert np.mean(gaps) < np.mean(before) / 5


def test_epochs_draw_different_batches_and_a_seed_repeats_them() -> None:
    weights = np.ones(100, dtype=np.int64)
    first = [b.tolist() for b in _batches(weights, 1, 0, 2, 8)]
    assert first == [b.tolist() for b in _batches(weights, 1, 0, 2, 8)]
    assert first != [b.tolist() for b in _batches(weights, 2, 0, 2, 8)]
