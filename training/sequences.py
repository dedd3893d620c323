"""Per-user item sequences in index space: the retrieval model's input and the evaluation histories."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd


def histories(df: pd.DataFrame, item_index: dict[int, int]) -> dict[int, np.ndarray]:
    """user_id → item indices ordered by (timestamp, item_id), the protocol's order."""
    df = df.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    idx = df["item_id"].map(item_index).to_numpy(dtype=np.int64)
    out: dict[int, np.ndarray] = {}
    users = df["user_id"].to_numpy()
    if len(users) == 0:
        return out
    bounds = np.flatnonzero(np.diff(users)) + 1
    for chunk_users, chunk in zip(np.split(users, bounds), np.split(idx, bounds), strict=True):
        out[int(chunk_users[0])] = chunk
    return out


def left_pad(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """(N, max_len) int64, each row the last max_len items right-aligned, 0 = padding."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-max_len:]
        if len(s):
            out[i, -len(s) :] = s
    return out


def training_windows(seqs: list[np.ndarray], max_len: int, stride: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Next-item windows: inputs s[a:b-1], targets s[a+1:b], cut from the end every `stride` items.

    Each target is learned once an epoch, so no interaction is dropped or counted twice. `stride` 0 (or max_len):
    windows side by side, so a target early in a window is predicted from few items. A shorter stride overlaps
    them: a window's first max_len − stride items are context only (their targets 0, padding to the loss) and
    every target but a user's first ones is predicted from at least that many items, as serving's full-length
    profile is.
    """
    stride = max_len if stride <= 0 else min(stride, max_len)
    inputs, targets = [], []
    for s in seqs:
        for start, end in _windows(len(s), max_len, stride):
            inputs.append(s[start : end - 1])
            t = s[start + 1 : end].copy()
            if start > 0:
                t[: len(t) - stride] = 0  # context only: learned in the window before, with more items in view
            targets.append(t)
    return left_pad(inputs, max_len), left_pad(targets, max_len)


def _windows(n: int, max_len: int, stride: int) -> Iterator[tuple[int, int]]:
    """(start, end) of a history of n items' windows, cut from the end every `stride` items (`training_windows`)."""
    end = n
    while end >= 2:
        start = max(0, end - max_len - 1)
        yield start, end
        end = end - stride if start > 0 else 0


def window_priors(seqs: list[np.ndarray], max_len: int, stride: int, cap: int) -> np.ndarray:
    """(W, ≤ cap) for `training_windows`' windows, in their order: each window's user's items before its first input
    (the most recent `cap`, left-padded; the cap bounds the array, windows × cap), the part of the history the
    seen-item mask (`RetrievalConfig.mask_seen`) cannot read from the window itself."""
    stride = max_len if stride <= 0 else min(stride, max_len)
    priors = [s[max(0, start - cap) : start] for s in seqs for start, _ in _windows(len(s), max_len, stride)]
    return left_pad(priors, max(1, min(cap, max((len(p) for p in priors), default=1))))
