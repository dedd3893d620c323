"""Retrieval training windows: every next-item pair learned once an epoch, overlapping windows giving each target
the context serving gives it."""

import numpy as np
import pytest

from training.sequences import training_windows


def _users(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    """Sequences of distinct items (1..), so an item names its position in its user's history."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.arange(1, 500))[:n] for n in lengths]


LENGTHS = [1, 2, 3, 10, 11, 12, 49, 50, 51, 52, 137, 333]


def _pairs(inputs: np.ndarray, targets: np.ndarray) -> list[tuple[int, int, int]]:
    """(input item, target item, items in view) for every target the loss sees (target ≠ 0)."""
    out = []
    for row_in, row_t in zip(inputs, targets, strict=True):
        for j in np.flatnonzero(row_t):
            out.append((int(row_in[j]), int(row_t[j]), int((row_in[: j + 1] != 0).sum())))
    return out


@pytest.mark.parametrize(("max_len", "stride"), [(10, 0), (10, 10), (10, 5), (10, 1), (10, 7), (50, 25)])
def test_every_next_item_pair_is_a_target_exactly_once(max_len: int, stride: int) -> None:
    seqs = _users(LENGTHS)
    inputs, targets = training_windows(seqs, max_len, stride)
    learned = sorted((a, b) for a, b, _ in _pairs(inputs, targets))
    expected = sorted((int(s[i]), int(s[i + 1])) for s in seqs for i in range(len(s) - 1))
    assert learned == expected


@pytest.mark.parametrize(("max_len", "stride"), [(10, 5), (10, 1), (10, 7), (50, 25)])
def test_overlapping_windows_show_each_target_at_least_the_overlap_in_context(max_len: int, stride: int) -> None:
    """A target is predicted from max_len − stride + 1 items or more, or from all the user had by then."""
    for s in _users(LENGTHS):
        position = {int(item): i for i, item in enumerate(s)}
        for a, _, seen in _pairs(*training_windows([s], max_len, stride)):
            had = position[a] + 1  # the user's items up to this input
            assert min(had, max_len - stride + 1) <= seen <= min(had, max_len)


def test_side_by_side_windows_are_the_default_and_learn_every_position() -> None:
    seqs = _users(LENGTHS)
    a0, t0 = training_windows(seqs, 10)
    a1, t1 = training_windows(seqs, 10, 10)
    assert np.array_equal(a0, a1) and np.array_equal(t0, t1)
    assert np.array_equal(t0 != 0, a0 != 0)  # no input is context only
    a2, t2 = training_windows(seqs, 10, 5)
    assert len(a2) > len(a0) and ((t2 == 0) & (a2 != 0)).any()


def test_the_overlap_setting_is_a_share_of_the_window() -> None:
    from core.errors import ConfigError
    from training.steps import window_stride

    assert window_stride(50, 0.5) == 25 and window_stride(50, 0.0) == 50 and window_stride(200, 0.5) == 100
    assert window_stride(3, 0.9) == 1  # never a window that adds no target
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="retrieval_window_overlap"):
            window_stride(50, bad)
