"""Leave-last-out split and the id <-> index vocabulary models train on.

The split is by time per user (not random) so evaluation asks the question serving faces: given a
user's history, what comes next.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import ConfigError, DataFormatError
from training.data.schema import ITEM_ID, TIMESTAMP, USER_ID

PAD = 0  # index reserved for padding in every Vocab


@dataclass(frozen=True)
class Split:
    """train/valid/test interactions, same columns as the input table."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


def leave_last_out(interactions: pd.DataFrame, min_interactions: int = 5) -> Split:
    """Per user ordered by (timestamp, item_id): last -> test, second-last -> valid, the rest -> train.

    item_id breaks timestamp ties so the split is deterministic whatever the input row order. Users with
    fewer than `min_interactions` are dropped, which keeps every valid/test user present in train.
    """
    if min_interactions < 3:
        raise ConfigError(f"min_interactions must be at least 3 (train, valid, test), got {min_interactions}")
    counts = interactions.groupby(USER_ID)[USER_ID].transform("size")
    kept = interactions[counts >= min_interactions]
    ordered = kept.sort_values([USER_ID, TIMESTAMP, ITEM_ID], kind="stable", ignore_index=True)
    from_end = ordered.groupby(USER_ID).cumcount(ascending=False).to_numpy()
    return Split(
        train=ordered[from_end >= 2].reset_index(drop=True),
        valid=ordered[from_end == 1].reset_index(drop=True),
        test=ordered[from_end == 0].reset_index(drop=True),
    )


class UnknownIdError(DataFormatError, KeyError):
    """An id (or index) the vocabulary does not know; a KeyError so mapping-style callers can catch it."""


class Vocab:
    """Raw int64 ids <-> contiguous indices 1..n, with 0 reserved for padding."""

    def __init__(self, ids: np.ndarray) -> None:
        self._ids = np.asarray(ids, dtype=np.int64)  # position p holds the id of index p + 1
        if len(np.unique(self._ids)) != len(self._ids):
            raise DataFormatError("vocabulary ids must be unique")
        self._sorter = np.argsort(self._ids, kind="stable")
        self._sorted = self._ids[self._sorter]

    @classmethod
    def from_ids(cls, ids: Iterable[int] | np.ndarray) -> Vocab:
        """Vocabulary of the distinct ids, indexed in ascending id order whatever the input order."""
        values = np.asarray(ids if hasattr(ids, "__len__") else list(ids), dtype=np.int64)
        return cls(np.unique(values))

    @classmethod
    def from_list(cls, ids: list[int]) -> Vocab:
        """Inverse of to_list (e.g. after a JSON round trip)."""
        return cls(np.asarray(ids, dtype=np.int64))

    def to_list(self) -> list[int]:
        """The ids in index order (index i + 1 at position i), JSON-serialisable."""
        return self._ids.tolist()

    def __len__(self) -> int:
        """Number of ids plus one for padding: the size of an embedding table."""
        return len(self._ids) + 1

    def encode(self, ids: np.ndarray) -> np.ndarray:
        """Indices (int64, 1..n) of raw ids; UnknownIdError names the first unknown id."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(self._sorted) == 0:
            found, pos = np.zeros(ids.shape, dtype=bool), np.zeros(ids.shape, dtype=np.int64)
        else:
            pos = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
            found = self._sorted[pos] == ids
        if not np.all(found):
            raise UnknownIdError(f"id {int(ids[~found].flat[0])} is not in the vocabulary")
        return self._sorter[pos].astype(np.int64) + 1

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Raw ids of indices 1..n; padding (0) and out-of-range indices raise UnknownIdError."""
        indices = np.asarray(indices, dtype=np.int64)
        bad = (indices < 1) | (indices > len(self._ids))
        if np.any(bad):
            raise UnknownIdError(f"index {int(indices[bad].flat[0])} is not in 1..{len(self._ids)}")
        return self._ids[indices - 1]
