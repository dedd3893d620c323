"""Raw item id → row number for a whole candidate list at once (recall's index positions, the ranker's
vocabulary, the item cache's slots): one numpy gather per request instead of a dict lookup per candidate, which
was a fifth of the ranking stage's own CPU.

Ids below `DENSE_LIMIT` (MovieLens-like catalogues number their items densely) live in a table; larger ones
(the catalogue API admits ids up to 2^62) in a dict beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

DENSE_LIMIT = 1 << 21  # table entries (16 MiB of int64 at most); ids at or above go to the dict


class IdLookup:
    """Rows are published by `set`, which a reader on another thread may race: it writes the dict entry or the
    table cell last, so a reader sees a row only once it is complete."""

    def __init__(self, mapping: Mapping[int, int] | None = None) -> None:
        self.table = np.full(0, -1, dtype=np.int64)
        self.extra: dict[int, int] = {}
        if mapping:
            self.set(list(mapping), list(mapping.values()))

    def set(self, ids: Iterable[int], rows: Iterable[int]) -> None:
        ids = np.fromiter(ids, dtype=np.int64)
        rows = np.fromiter(rows, dtype=np.int64, count=len(ids))
        small = (ids >= 0) & (ids < DENSE_LIMIT)
        if small.any():
            top = int(ids[small].max()) + 1
            if top > len(self.table):  # grow (doubling) by copying; the new table is published by one assignment
                grown = np.full(min(DENSE_LIMIT, max(top, 2 * len(self.table), 1024)), -1, dtype=np.int64)
                grown[: len(self.table)] = self.table
                grown[ids[small]] = rows[small]
                self.table = grown
            else:
                self.table[ids[small]] = rows[small]
        for i, r in zip(ids[~small].tolist(), rows[~small].tolist(), strict=True):
            self.extra[i] = r

    def rows(self, ids: Iterable[int] | np.ndarray, missing: int = -1) -> np.ndarray:
        """Row of each id, `missing` where the id has none."""
        ids = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        table = self.table
        inside = (ids >= 0) & (ids < len(table))
        out = np.full(len(ids), -1, dtype=np.int64)
        out[inside] = table[ids[inside]]
        if self.extra and not inside.all():
            for j in np.flatnonzero(~inside).tolist():
                out[j] = self.extra.get(int(ids[j]), -1)
        if missing != -1:
            out[out < 0] = missing
        return out

    def __contains__(self, item_id: int) -> bool:
        if 0 <= item_id < len(self.table):
            return bool(self.table[item_id] >= 0)
        return item_id in self.extra
